"""Install Stagewright into the sandbox cluster and run its operator as a real process.

The CRD comes from ``crds/`` and the RBAC from ``manifests/base/rbac.yaml``, exactly as a
user installs them; the operator runs as ``stagewright run`` with the ServiceAccount's
identity, so RBAC is enforced on every call it makes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import yaml
from kubernetes import config, dynamic
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from sandbox.controlplane import OPERATOR_NAMESPACE, REPO_ROOT, ControlPlane
from sandbox.processes import free_port, stop_group

CRD_FILE = REPO_ROOT / "crds" / "imagebuilds.stagewright.dev.yaml"
RBAC_FILE = REPO_ROOT / "manifests" / "base" / "rbac.yaml"
LEADER_ELECTION_RBAC_FILE = REPO_ROOT / "manifests" / "base" / "leader-election.yaml"
SERVICE_ACCOUNT_FILE = REPO_ROOT / "manifests" / "base" / "serviceaccount.yaml"


class Cluster:
    """A dynamic client on the sandbox control plane, with the small verbs tests need."""

    def __init__(self, kubeconfig: Path) -> None:
        self.api_client = config.new_client_from_config(str(kubeconfig))
        self.dynamic = dynamic.DynamicClient(self.api_client)

    def resource(self, api_version: str, kind: str) -> Any:
        """The dynamic resource for a kind (discovery is cached by the client)."""
        return self.dynamic.resources.get(api_version=api_version, kind=kind)

    def apply(self, objects: Iterable[dict[str, Any]]) -> None:
        """Create each object, or replace its spec/data when it exists (tests re-apply)."""
        for obj in objects:
            resource = self.resource(obj["apiVersion"], obj["kind"])
            namespace = obj["metadata"].get("namespace")
            try:
                resource.create(body=obj, namespace=namespace)
            except ConflictError:
                resource.patch(body=obj, namespace=namespace, name=obj["metadata"]["name"],
                               content_type="application/merge-patch+json")

    def get(self, api_version: str, kind: str, name: str,
            namespace: str | None = None) -> dict[str, Any] | None:
        """An object as a dict, or None when it does not exist."""
        try:
            found = self.resource(api_version, kind).get(name=name, namespace=namespace)
        except NotFoundError:
            return None
        result: dict[str, Any] = found.to_dict()
        return result

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> list[dict[str, Any]]:
        """Objects of a kind as dicts."""
        found = self.resource(api_version, kind).get(namespace=namespace,
                                                     label_selector=label_selector)
        return [item.to_dict() for item in found.items]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete an object if it exists."""
        with contextlib.suppress(NotFoundError):
            self.resource(api_version, kind).delete(name=name, namespace=namespace)

    def wait_gone(self, api_version: str, kind: str, name: str, namespace: str | None = None,
                  timeout: float = 120) -> None:
        """Poll until an object no longer exists: a deleted Namespace stays Terminating while
        its contents go, and refuses new content meanwhile (so a test re-creating it would
        be refused)."""
        deadline = time.monotonic() + timeout
        while self.get(api_version, kind, name, namespace) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {name}: still there {timeout}s after its deletion")
            time.sleep(0.5)

    def wait_for_service_account(self, namespace: str, name: str = "default",
                                 timeout: float = 30) -> None:
        """Wait until a ServiceAccount exists with its token: pods naming it are refused
        before that (1.20's ServiceAccount admission: "No API token found ... retry")."""
        self.wait_for("v1", "ServiceAccount", name, namespace,
                      lambda account: bool(account.get("secrets")), timeout,
                      "created with its token")

    def wait_for(self, api_version: str, kind: str, name: str, namespace: str | None,
                 predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        """Poll until ``predicate(obj)`` holds; fail with the object's last state."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.get(api_version, kind, name, namespace)
            if last is not None and predicate(last):
                return last
            time.sleep(0.2)
        raise TimeoutError(f"{kind} {name}: not {what} after {timeout}s; last seen:\n"
                           + yaml.safe_dump(last))


def install_stagewright(cluster: Cluster, *, crd: bool = True) -> None:
    """Apply the operator's namespace, ServiceAccount and RBAC (its Lease's too), and the CRD
    unless told not to.

    The ServiceAccount object matters once ServiceAccount admission is on: a pod naming it
    (the chart's operator pod, even as a dry run) is refused until it exists.
    """
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": OPERATOR_NAMESPACE}}])
    cluster.apply([yaml.safe_load(SERVICE_ACCOUNT_FILE.read_text())])
    rbac = [doc for path in (RBAC_FILE, LEADER_ELECTION_RBAC_FILE)
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    cluster.apply(rbac)
    if crd:
        install_crd(cluster)


def install_crd(cluster: Cluster) -> None:
    """Apply the generated CRD and wait until the API server serves ImageBuilds."""
    cluster.apply([yaml.safe_load(CRD_FILE.read_text())])
    cluster.wait_for(
        "apiextensions.k8s.io/v1", "CustomResourceDefinition", "imagebuilds.stagewright.dev",
        None, lambda crd: any(c["type"] == "Established" and c["status"] == "True"
                              for c in crd.get("status", {}).get("conditions") or []),
        timeout=30, what="established",
    )
    cluster.dynamic.resources.invalidate_cache()


class OperatorProcess:
    """``stagewright run`` as a child process with the operator's own identity."""

    def __init__(self, control_plane: ControlPlane, log_file: Path,
                 env: dict[str, str] | None = None,
                 launcher: tuple[str, ...] = ("-m", "stagewright.cli")) -> None:
        self.control_plane = control_plane
        self.log_file = log_file
        self.env = env or {}
        #: What the interpreter runs with ``run`` appended (a profiler may wrap the module).
        self.launcher = launcher
        self._process: subprocess.Popen[bytes] | None = None
        #: The trigger webhook endpoint, on 127.0.0.1 (one port for the process's restarts).
        self.webhook_port = free_port()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Start the operator and return once its liveness endpoint answers.

        kopf serves /healthz after its start-up handlers ran, so from then on every
        ImageBuild event reaches a configured reconciler.
        """
        health = f"http://127.0.0.1:{free_port()}/healthz"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.control_plane.operator.kubeconfig),
            "STAGEWRIGHT_RESYNC_SECONDS": "2",
            "STAGEWRIGHT_LIVENESS_ENDPOINT": health,
            # Triggers may poll every second here (tests, `make sandbox`); a cluster's 1m
            # minimum keeps tenants from hammering a git host or registry.
            "STAGEWRIGHT_TRIGGER_MIN_POLL_INTERVAL": "1s",
            "STAGEWRIGHT_WEBHOOK_PORT": str(self.webhook_port),
            **self.env,
        }
        log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, *self.launcher, "run"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"the operator exited:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the operator was not live after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, kill: bool = False) -> None:
        """Stop by PID: SIGTERM (kopf shuts down cleanly), or SIGKILL to simulate a crash."""
        process, self._process = self._process, None
        if process is not None:
            stop_group(process, kill=kill, timeout=15)

    @property
    def pid(self) -> int | None:
        """The operator's process id while it runs (benchmarks read its memory)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive (a crash loop would show here)."""
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """Everything the operator logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

