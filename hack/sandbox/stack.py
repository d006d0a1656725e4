"""The whole local sandbox in one context manager: what ``make demo`` and the cluster tier run.

Control plane (etcd + kube-apiserver, RBAC on) -> Stagewright's CRD and RBAC -> a registry
-> a busybox base image in it -> the sandbox kubelet (buildah in place of Kaniko) -> the
operator as a real ``stagewright run`` process. Everything stops, by PID, on exit.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sandbox.base_image import build_base_image
from sandbox.cluster import Cluster, OperatorProcess, install_stagewright
from sandbox.controlplane import ControlPlane
from sandbox.kubelet import SandboxKubelet
from sandbox.registry import LocalRegistry

IMAGEBUILD_API = "stagewright.dev/v1alpha1"
SETTLED = ("Succeeded", "Failed")


class Sandbox:
    """A running sandbox; ``admin`` is a cluster client with full rights for the caller."""

    def __init__(self, work_dir: Path, operator_env: dict[str, str] | None = None) -> None:
        self.work_dir = work_dir
        self._stack = contextlib.ExitStack()
        self.control_plane = ControlPlane(work_dir / "control-plane")
        self.registry = LocalRegistry()
        self.operator = OperatorProcess(self.control_plane, work_dir / "operator.log",
                                        env=operator_env)
        self.admin: Cluster
        self.kubelet: SandboxKubelet
        self.base_image = ""
        self.timings: dict[str, float] = {}

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stack.close()

    def _timed(self, what: str, started: float) -> None:
        self.timings[what] = time.monotonic() - started

    def _start(self) -> None:
        started = time.monotonic()
        (self.work_dir / "control-plane").mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(self.control_plane)
        self._timed("control plane", started)
        self.admin = Cluster(self.control_plane.admin.kubeconfig)
        install_stagewright(self.admin)
        started = time.monotonic()
        self._stack.enter_context(self.registry)
        self.base_image = build_base_image(self.registry.host, work_dir=self.work_dir)
        self._timed("registry and base image", started)
        kubelet_cluster = Cluster(self.control_plane.kubelet.kubeconfig)
        self.kubelet = SandboxKubelet(kubelet_cluster.api_client, self.work_dir / "kubelet")
        self._stack.enter_context(self.kubelet)
        self._stack.enter_context(self.operator)

    def imagebuild(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        """The ImageBuild as stored, or None."""
        return self.admin.get(IMAGEBUILD_API, "ImageBuild", name, namespace)

    def rebuild(self, name: str, namespace: str = "default", *, request: str,
                timeout: float = 180) -> dict[str, Any]:
        """Ask for a rebuild (annotation ``stagewright.dev/rebuild``) and wait until it ended."""
        self.admin.resource(IMAGEBUILD_API, "ImageBuild").patch(
            name=name, namespace=namespace, content_type="application/merge-patch+json",
            body={"metadata": {"annotations": {"stagewright.dev/rebuild": request}}})

        def rebuilt(obj: dict[str, Any]) -> bool:
            status = obj.get("status") or {}
            return status.get("rebuild") == request and status.get("phase") in SETTLED

        return self.admin.wait_for(IMAGEBUILD_API, "ImageBuild", name, namespace, rebuilt,
                                   timeout, "rebuilt")

    def wait_settled(self, name: str, namespace: str = "default", *, generation: int | None = None,
                     timeout: float = 180) -> dict[str, Any]:
        """Wait until the build of the ImageBuild's current (or given) generation has ended."""

        def settled(obj: dict[str, Any]) -> bool:
            status = obj.get("status") or {}
            wanted = generation or obj["metadata"]["generation"]
            return bool(status.get("phase") in SETTLED
                        and status.get("observedGeneration") == wanted)

        try:
            return self.admin.wait_for(IMAGEBUILD_API, "ImageBuild", name, namespace, settled,
                                       timeout, "finished")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- operator log (tail)\n"
                               + self.operator.log()[-4000:]) from None
