"""What the install tests share: the operator image, helm and kubectl on the sandbox cluster."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.tooling import tool

from sandbox.cluster import install_stagewright
from sandbox.controlplane import REPO_ROOT
from sandbox.processes import stop_group
from sandbox.stack import Sandbox

OPERATOR_IMAGE_SCRIPT = REPO_ROOT / "hack" / "build-operator-image.sh"


@dataclass(frozen=True)
class OperatorImage:
    """The operator image in the sandbox registry, as hack/build-operator-image.sh reported it."""

    #: ``REGISTRY/REPOSITORY@sha256:...``: what a chart or an overlay pins.
    reference: str
    #: The kept OCI archive in the cache, named by the sources' content key.
    archive: Path
    uncompressed: int
    compressed: int
    #: The script's progress output (the run-time checks, when it built rather than reused).
    log: str

    @property
    def repository(self) -> str:
        return self.reference.split("@", 1)[0]

    @property
    def digest(self) -> str:
        return self.reference.split("@", 1)[1]


def build_operator_image(push_to: str) -> OperatorImage:
    """Run hack/build-operator-image.sh --push ``push_to``; fail the test with its log."""
    result = subprocess.run([str(OPERATOR_IMAGE_SCRIPT), "--push", push_to],
                            capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    found = dict(re.findall(r"^([\w-]+)=(\S+)$", result.stdout, flags=re.MULTILINE))
    return OperatorImage(
        reference=found["image-reference"], archive=Path(found["image-archive"]),
        uncompressed=int(found["image-size-uncompressed"]),
        compressed=int(found["image-size-compressed"]), log=result.stderr)


def cli(sandbox: Sandbox, name: str, *args: str, timeout: float = 180) -> str:
    """``helm`` or ``kubectl`` as the sandbox's admin; stdout, or fail with stderr."""
    argv = [str(tool(name)), "--kubeconfig", str(sandbox.control_plane.admin.kubeconfig), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} {' '.join(args)} did not finish in {timeout:.0f}s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stderr}",
                    pytrace=False)
    return done.stdout


def wait_ready_operator(sandbox: Sandbox, namespace: str, deployment: str,
                        timeout: float = 180) -> dict[str, Any]:
    """Wait until every replica of the Deployment is Ready (its probes pass: the leader and
    the standbys) and one holds the Lease; return the leader's pod."""
    found = sandbox.admin.wait_for(
        "apps/v1", "Deployment", deployment, namespace,
        lambda d: (d.get("status") or {}).get("readyReplicas") == d["spec"]["replicas"]
        and (d.get("status") or {}).get("replicas") == d["spec"]["replicas"], timeout, "ready")
    ready = {pod["metadata"]["name"]: pod for pod in sandbox.admin.list("v1", "Pod", namespace)
             if any(c["type"] == "Ready" and c["status"] == "True"
                    for c in (pod.get("status") or {}).get("conditions") or [])}
    assert len(ready) == found["spec"]["replicas"], list(ready)
    return ready[leader_pod_name(sandbox, namespace, timeout)]


def leader_pod_name(sandbox: Sandbox, namespace: str, timeout: float = 60,
                    other_than: str | None = None) -> str:
    """The pod whose replica holds the namespace's leader Lease (identity ``POD_NAME_xxxx``),
    once one (other than ``other_than``) does."""
    deadline = time.monotonic() + timeout
    holder = ""
    while time.monotonic() < deadline:
        leases = sandbox.admin.list("coordination.k8s.io/v1", "Lease", namespace)
        holders = [(lease.get("spec") or {}).get("holderIdentity") or "" for lease in leases]
        holder = next((h for h in holders if h), "")
        pod = holder.rsplit("_", 1)[0]
        if pod and pod != other_than:
            return pod
        time.sleep(0.5)
    raise TimeoutError(f"no replica other than {other_than} leads in {namespace} ({holder})")


def restore_sandbox_install(sandbox: Sandbox) -> None:
    """Put back what the sandbox installs (namespace, RBAC, CRD) and restart its operator."""
    install_stagewright(sandbox.admin)
    sandbox.operator.start()


@contextlib.contextmanager
def following_log(sandbox: Sandbox, namespace: str, pod: str, log_file: Path) -> Iterator[Path]:
    """``kubectl logs -f`` of a pod into ``log_file`` until the pod's container exits.

    Started before an uninstall, it keeps every line the operator writes on its way out
    (the pod and its log are gone afterwards); stopped by PID on exit.
    """
    with log_file.open("wb") as sink:
        follower = subprocess.Popen(
            [str(tool("kubectl")), "--kubeconfig", str(sandbox.control_plane.admin.kubeconfig),
             "-n", namespace, "logs", "-f", pod],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log_file
        with contextlib.suppress(subprocess.TimeoutExpired):
            follower.wait(timeout=30)
    finally:
        stop_group(follower, timeout=5)


def assert_clean_shutdown(log: str) -> None:
    """The whole log, to kopf's own shutdown line, and nothing refused on the way out."""
    assert "Operator is stopping" in log, log[-3000:]
    # A word of its own: digests in the log may contain the digits 403, and so may a log
    # line's milliseconds ("11:43:07,403").
    refused = re.findall(r".*(?:(?<![,.:])\b403\b|Forbidden).*", log)
    # One exception, documented (docs/install.md, "Uninstalling"): `helm uninstall` deletes
    # the leader-election Role in the same pass as the Deployment, so the leader's last renew
    # or its release of the Lease on SIGTERM may be refused. Harmless: it stops acting at its
    # renew deadline anyway, and the Lease goes with the namespace or is taken over.
    refused = [line for line in refused if 'resource "leases"' not in line]
    assert not refused, "\n".join(refused[:10])
