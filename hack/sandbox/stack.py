"""The whole local sandbox in one context manager: what ``make demo`` and the cluster tier run.

Control plane (etcd + kube-apiserver, Node and RBAC authorisation, ServiceAccount and
PodSecurityPolicy admission) -> Stagewright's CRD and RBAC, the pod security policies -> the
node's host side (lock, bridge) -> a registry on the bridge's gateway -> the sandbox's images in
it (busybox base, pause, real Kaniko, Buildah) -> the node (containerd, scheduler,
controller-manager, kubelet) -> the ``kubernetes`` Service's relay (pods reach the apiserver at
10.96.0.1:443, as an operator installed in the cluster does) -> the operator as a real
``stagewright run`` process whose build pods run the Kaniko image. Everything stops, by PID, on
exit; host changes are undone.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml
from kubernetes import client

from sandbox.cluster import Cluster, OperatorProcess, install_stagewright
from sandbox.controlplane import OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, ControlPlane
from sandbox.host_lock import HostLock
from sandbox.images import SandboxImages, build_images
from sandbox.node import BRIDGE, GATEWAY, Node, NodeHost
from sandbox.registry import LocalRegistry
from sandbox.service_relay import ServiceRelay

IMAGEBUILD_API = "stagewright.dev/v1alpha1"
SETTLED = ("Succeeded", "Failed")
#: PodSecurityPolicies equal to the baseline and restricted levels, and their use grants.
POD_SECURITY = Path(__file__).with_name("pod-security.yaml")


class Sandbox:
    """A running sandbox; ``admin`` is a cluster client with full rights for the caller."""

    def __init__(self, work_dir: Path, operator_env: dict[str, str] | None = None, *,
                 lock: HostLock | None = None, registry_port: int = 0) -> None:
        self.work_dir = work_dir
        self._stack = contextlib.ExitStack()
        self.control_plane = ControlPlane(work_dir / "control-plane", pod_security_policy=True,
                                          service_accounts=True)
        #: ``lock`` says who holds the machine's one node (``make test``, ``make sandbox``).
        self.node_host = NodeHost(lock)
        #: On the bridge's gateway: containerd pulls from it and Kaniko pushes to it.
        self.registry = LocalRegistry(address=GATEWAY, port=registry_port)
        self.operator_env = operator_env or {}
        self.admin: Cluster
        self.node: Node
        self.operator: OperatorProcess
        self.images: SandboxImages
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
        # The node's host lock first: a sandbox that must wait (or is refused: a kept one
        # holds the node) says so before it starts anything. Waiting is not start-up.
        self._stack.enter_context(self.node_host)
        self.timings["waiting for another sandbox's node"] = self.node_host.lock_wait_seconds
        started = time.monotonic()
        (self.work_dir / "control-plane").mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(self.control_plane)
        self._timed("control plane", started)
        self.admin = Cluster(self.control_plane.admin.kubeconfig)
        install_stagewright(self.admin)
        self.admin.apply(doc for doc in yaml.safe_load_all(POD_SECURITY.read_text()) if doc)
        started = time.monotonic()
        self._stack.enter_context(self.registry)
        self.images = build_images(self.registry.host, work_dir=self.work_dir)
        self.base_image = self.images.base
        self._timed("registry and images", started)
        started = time.monotonic()
        self.node = Node(self.control_plane, self.work_dir / "node",
                         pause_image=self.images.pause,
                         insecure_registries=(self.registry.host,))
        self._stack.enter_context(self.node)
        self._stack.enter_context(ServiceRelay(BRIDGE, self.control_plane.port,
                                               self.work_dir / "service-relay.log"))
        # Pods are refused until their namespace's ServiceAccount exists (the admission
        # plugin): the controller-manager makes it within a second or two of start.
        self.admin.wait_for_service_account("default")
        self._timed("node ready", started)
        self.operator = OperatorProcess(
            self.control_plane, self.work_dir / "operator.log",
            env={"STAGEWRIGHT_KANIKO_IMAGE": self.images.kaniko,
                 "STAGEWRIGHT_BUILDAH_IMAGE": self.images.buildah, **self.operator_env})
        self._stack.enter_context(self.operator)

    def allow_buildah(self, namespace: str) -> None:
        """Let the operator's Buildah pods into ``namespace`` (the stagewright-3-buildah
        policy), as an admin labels a Buildah namespace privileged; others stay baseline."""
        self.admin.apply([{
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "stagewright-psp-buildah", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "stagewright-psp-buildah"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SERVICE_ACCOUNT,
                          "namespace": OPERATOR_NAMESPACE}],
        }])

    def allow_baseline_builds(self, service_account: str, namespace: str) -> None:
        """Let another operator install (a Helm release's ServiceAccount) create baseline
        build pods, as the sandbox's own operator may."""
        self.admin.apply([{
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": f"stagewright-psp-baseline-{namespace}-{service_account}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "stagewright-psp-baseline"},
            "subjects": [{"kind": "ServiceAccount", "name": service_account,
                          "namespace": namespace}],
        }])

    def pod_log(self, name: str, namespace: str = "default") -> str:
        """A pod's log as the kubelet serves it (``kubectl logs``), through the apiserver."""
        text: str = client.CoreV1Api(self.admin.api_client).read_namespaced_pod_log(
            name, namespace)
        return text

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
