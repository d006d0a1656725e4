"""Stagewright installed as the README tells users to, on the real node, running its own image.

The operator image (operator/Dockerfile, pushed to the sandbox registry) is installed with the
Helm chart and, separately, with ``kubectl apply -k`` on the kustomize base. Each time the
operator pod must become Ready (its probes pass), reach the apiserver through the
``kubernetes`` Service (10.96.0.1:443, the sandbox's relay), run a build end to end, and
uninstall as docs/install.md says:

- Helm, with a registry that has a private CA (TLS, not insecure): the chart's ``caBundle``
  makes both the operator's digest check and Kaniko's push trust it; ``helm uninstall`` keeps
  the CRD and the ImageBuilds (``crds.keep``).
- kustomize: the documented order (the Deployment first, waited for, then ``delete -k``)
  ends with no 403 in the operator's log, and removes the CRD as documented.

The sandbox's own operator process is stopped meanwhile (two operators would both build), and
the sandbox's install is put back afterwards for the tests that follow.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.cluster.builds import ACCEPT
from tests.cluster.installs import (
    OperatorImage,
    assert_clean_shutdown,
    cli,
    following_log,
    leader_pod_name,
    restore_sandbox_install,
    wait_ready_operator,
)
from tests.tooling import tool

from sandbox.controlplane import OPERATOR_NAMESPACE, REPO_ROOT, SERVICE_IP
from sandbox.node import GATEWAY
from sandbox.registry import LocalRegistry
from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster

CRD = "imagebuilds.stagewright.dev"
CHART = REPO_ROOT / "charts" / "stagewright"
HELM_NAMESPACE = "sw-helm"
#: The namespace-mode release's own namespace.
SCOPED_NAMESPACE = "sw-helm-scoped"
HELM_RELEASE = "sw"
HELM_OPERATOR = "sw-stagewright-operator"
KUSTOMIZE_OPERATOR = "stagewright-operator"
#: No RUN step and no base image: the build needs nothing but the registry it pushes to.
DOCKERFILE = "FROM scratch\nCOPY greeting.txt /greeting.txt\n"


@pytest.fixture(scope="module")
def private_registry() -> Iterator[LocalRegistry]:
    """A TLS registry whose certificate a private CA signed, on the bridge for build pods."""
    with LocalRegistry(address=GATEWAY, private_ca=True) as registry:
        yield registry


@pytest.fixture
def sandbox_operator_paused(sandbox: Sandbox) -> Iterator[None]:
    """Stop the sandbox's operator process for the test; put its install back afterwards."""
    sandbox.operator.stop()
    try:
        yield
    finally:
        restore_sandbox_install(sandbox)


def _build(sandbox: Sandbox, namespace: str, image: str, *, insecure: bool) -> dict[str, Any]:
    """A ConfigMap context and an ImageBuild pushing it to ``image``; its final state."""
    sandbox.admin.apply([
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "ctx", "namespace": namespace},
         "data": {"Dockerfile": DOCKERFILE, "greeting.txt": "installed as users do\n"}},
        {"apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
         "metadata": {"name": "hello", "namespace": namespace},
         "spec": {"source": {"configMap": {"name": "ctx"}},
                  "output": {"image": image, "insecure": insecure}}},
    ])
    return sandbox.wait_settled("hello", namespace, timeout=240)


@contextlib.contextmanager
def _helm_release(sandbox: Sandbox, operator_image: OperatorImage, release_namespace: str,
                  *values: str) -> Iterator[None]:
    """The chart installed into ``release_namespace`` (which must exist) with the operator's
    own image, the sandbox's Kaniko and ``values``; on exit uninstalled, whatever the test
    did, and the namespace deleted and waited for: the next test's release may use its name
    (a Terminating namespace refuses Helm's release Secret)."""
    # Build pods are baseline (Kaniko runs as root): the release's operator may create them,
    # as the sandbox's own operator may (hack/sandbox/pod-security.yaml).
    sandbox.allow_baseline_builds(HELM_OPERATOR, release_namespace)
    try:
        cli(sandbox, "helm", "install", HELM_RELEASE, str(CHART),
            "--namespace", release_namespace,
            "--set", f"image.repository={operator_image.repository}",
            "--set", f"image.digest={operator_image.digest}",
            "--set", f"kaniko.image={sandbox.images.kaniko}",
            "--set", "operator.resyncSeconds=5",
            *(arg for value in values for arg in ("--set", value)))
        yield
    finally:
        subprocess.run([str(tool("helm")), "--kubeconfig",
                        str(sandbox.control_plane.admin.kubeconfig), "uninstall", HELM_RELEASE,
                        "--namespace", release_namespace, "--ignore-not-found"],
                       capture_output=True, check=False, timeout=120)
        sandbox.admin.delete("v1", "Namespace", release_namespace)
        sandbox.admin.wait_gone("v1", "Namespace", release_namespace)


def _operator_env(pod: dict[str, Any]) -> dict[str, str]:
    container = pod["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container.get("env") or []}


def test_helm_install_private_ca_registry_build_and_uninstall_keeps_crd(
        sandbox: Sandbox, operator_image: OperatorImage, private_registry: LocalRegistry,
        namespace: str, tmp_path: Path, sandbox_operator_paused: None) -> None:
    # A fresh cluster as far as Stagewright goes: the chart installs the CRD.
    cli(sandbox, "kubectl", "delete", "crd", CRD, "--ignore-not-found", "--wait")
    assert private_registry.cert_path is not None
    bundle = private_registry.cert_path.read_text()
    sandbox.admin.apply([{"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": HELM_NAMESPACE}}])
    # The bundle where the docs say: the operator's namespace and each build namespace.
    sandbox.admin.apply([
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "registry-ca", "namespace": ns}, "data": {"ca.crt": bundle}}
        for ns in (HELM_NAMESPACE, namespace)])
    with _helm_release(sandbox, operator_image, HELM_NAMESPACE,
                       "caBundle.configMap=registry-ca"):
        pod = wait_ready_operator(sandbox, HELM_NAMESPACE, HELM_OPERATOR)
        assert pod["spec"]["containers"][0]["image"] == operator_image.reference
        image = f"{private_registry.host}/{namespace}/hello"
        done = _build(sandbox, namespace, image, insecure=False)
        log = sandbox.pod_log(pod["metadata"]["name"], HELM_NAMESPACE)
        status = done["status"]
        assert status["phase"] == "Succeeded", f"{status}\n--- operator log\n{log[-3000:]}"
        # The registry's own answer, trusting only the private CA.
        response = httpx.get(f"{private_registry.url}/v2/{namespace}/hello/manifests/latest",
                             headers={"Accept": ACCEPT}, verify=private_registry.ssl_context(),
                             timeout=10)
        response.raise_for_status()
        assert status["digest"] == response.headers["Docker-Content-Digest"]
        # The size comes from the operator's own look-up through the CA bundle.
        manifest = response.json()
        assert status["size"] == manifest["config"]["size"] + sum(
            layer["size"] for layer in manifest["layers"])
        assert "CERTIFICATE_VERIFY_FAILED" not in log
        # It reached the apiserver as in-cluster clients do: the kubernetes Service.
        assert _operator_env(pod).get("STAGEWRIGHT_CA_BUNDLE_FILE")

        with following_log(sandbox, HELM_NAMESPACE, pod["metadata"]["name"],
                           tmp_path / "operator.log") as followed:
            cli(sandbox, "helm", "uninstall", HELM_RELEASE, "--namespace", HELM_NAMESPACE,
                "--wait", "--timeout", "2m")
        assert_clean_shutdown(followed.read_text(errors="replace"))
        assert sandbox.admin.get("apps/v1", "Deployment", HELM_OPERATOR, HELM_NAMESPACE) is None
        assert sandbox.admin.get("rbac.authorization.k8s.io/v1", "ClusterRole",
                                 HELM_OPERATOR) is None
        # crds.keep (the default): the CRD and every ImageBuild with its status stay.
        assert sandbox.admin.get("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                 CRD) is not None
        kept = sandbox.imagebuild("hello", namespace)
        assert kept is not None
        assert kept["status"]["digest"] == status["digest"]


def _overlay(directory: Path, sandbox: Sandbox, operator_image: OperatorImage) -> Path:
    """A user's overlay of manifests/: the image pinned by digest, the sandbox's Kaniko."""
    directory.mkdir()
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes only relative paths to a base.
        "resources": [os.path.relpath(REPO_ROOT / "manifests", directory)],
        "images": [{"name": "ghcr.io/stagewright/stagewright",
                    "newName": operator_image.repository, "digest": operator_image.digest}],
        "patches": [{"patch": yaml.safe_dump({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": KUSTOMIZE_OPERATOR, "namespace": OPERATOR_NAMESPACE},
            "spec": {"template": {"spec": {"containers": [{"name": "operator", "env": [
                {"name": "STAGEWRIGHT_KANIKO_IMAGE", "value": sandbox.images.kaniko},
                {"name": "STAGEWRIGHT_RESYNC_SECONDS", "value": "5"},
            ]}]}}}})},
            # Kubernetes 1.20 serves no policy/v1 (manifests/base/kustomization.yaml says so).
            {"patch": yaml.safe_dump({
                "$patch": "delete", "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": KUSTOMIZE_OPERATOR, "namespace": OPERATOR_NAMESPACE}})}],
    }))
    return directory


def test_kustomize_install_build_and_documented_uninstall_without_403(
        sandbox: Sandbox, operator_image: OperatorImage, namespace: str, tmp_path: Path,
        sandbox_operator_paused: None) -> None:
    overlay = _overlay(tmp_path / "overlay", sandbox, operator_image)
    cli(sandbox, "kubectl", "apply", "-k", str(overlay))
    cli(sandbox, "kubectl", "wait", "--for=condition=Established", f"crd/{CRD}")
    pod = wait_ready_operator(sandbox, OPERATOR_NAMESPACE, KUSTOMIZE_OPERATOR)
    assert pod["spec"]["containers"][0]["image"] == operator_image.reference
    done = _build(sandbox, namespace, f"{sandbox.registry.host}/{namespace}/hello",
                  insecure=True)
    name = pod["metadata"]["name"]
    assert done["status"]["phase"] == "Succeeded", (
        f"{done['status']}\n--- operator log\n"
        f"{sandbox.pod_log(name, OPERATOR_NAMESPACE)[-3000:]}")
    assert done["status"]["size"] > 0  # the operator's registry look-up, from inside the pod

    # docs/install.md, "Uninstalling": the operator first, waited for, then the rest; the
    # operator's log followed to its last line meanwhile.
    with following_log(sandbox, OPERATOR_NAMESPACE, name, tmp_path / "operator.log") as log:
        cli(sandbox, "kubectl", "-n", OPERATOR_NAMESPACE, "delete", "deployment",
            KUSTOMIZE_OPERATOR, "--cascade=foreground", "--wait", "--timeout=120s")
        assert sandbox.admin.get("v1", "Pod", name, OPERATOR_NAMESPACE) is None
        cli(sandbox, "kubectl", "delete", "-k", str(overlay), "--ignore-not-found", "--wait",
            "--timeout=120s")
    assert_clean_shutdown(log.read_text(errors="replace"))
    # kustomize's documented policy: `delete -k` removes the CRD with everything else.
    assert sandbox.admin.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", CRD) is None
    assert sandbox.admin.get("rbac.authorization.k8s.io/v1", "ClusterRole",
                             KUSTOMIZE_OPERATOR) is None


def test_kubernetes_service_reaches_the_apiserver_from_a_pod(sandbox: Sandbox,
                                                            namespace: str) -> None:
    """The relay answers at 10.96.0.1:443 from the pod network, with the apiserver's TLS."""
    pod_name = "probe"
    probe = f"echo | busybox nc -w 3 {SERVICE_IP} 443 && echo open"
    sandbox.admin.apply([{
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "probe", "image": sandbox.base_image,
                                 "command": ["sh", "-c", probe]}]},
    }])
    done = sandbox.admin.wait_for("v1", "Pod", pod_name, namespace,
                                  lambda p: (p.get("status") or {}).get("phase")
                                  in ("Succeeded", "Failed"), 90, "finished")
    assert done["status"]["phase"] == "Succeeded", sandbox.pod_log(pod_name, namespace)
    assert "open" in sandbox.pod_log(pod_name, namespace)


def test_helm_install_watching_one_namespace_needs_nothing_cluster_wide(
        sandbox: Sandbox, operator_image: OperatorImage, namespace: str, tmp_path: Path,
        sandbox_operator_paused: None) -> None:
    """`watchNamespaces`: a Role per namespace and no cluster-wide grant at all. The operator
    lists and watches only that namespace (never namespaces, never CRDs), builds there, and
    stops with nothing refused in its log from start to end."""
    sandbox.admin.apply([{"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": SCOPED_NAMESPACE}}])
    # The CRD is the cluster admin's (here: the sandbox's), as in a tenant's install.
    with _helm_release(sandbox, operator_image, SCOPED_NAMESPACE,
                       f"watchNamespaces={{{namespace}}}", "crds.enabled=false"):
        assert sandbox.admin.get("rbac.authorization.k8s.io/v1", "ClusterRole",
                                 HELM_OPERATOR) is None
        pod = wait_ready_operator(sandbox, SCOPED_NAMESPACE, HELM_OPERATOR)
        name = pod["metadata"]["name"]
        with following_log(sandbox, SCOPED_NAMESPACE, name, tmp_path / "operator.log") as log:
            done = _build(sandbox, namespace, f"{sandbox.registry.host}/{namespace}/hello",
                          insecure=True)
            assert done["status"]["phase"] == "Succeeded", (
                f"{done['status']}\n--- operator log\n"
                f"{sandbox.pod_log(name, SCOPED_NAMESPACE)[-3000:]}")
            assert done["status"]["size"] > 0
            cli(sandbox, "helm", "uninstall", HELM_RELEASE, "--namespace", SCOPED_NAMESPACE,
                "--wait", "--timeout", "2m")
        assert_clean_shutdown(log.read_text(errors="replace"))


def test_helm_two_replicas_one_leads_and_builds_go_on_when_its_pod_is_deleted(
        sandbox: Sandbox, operator_image: OperatorImage, namespace: str,
        sandbox_operator_paused: None) -> None:
    """The chart's default: two replicas, one leading (Ready, /readyz "leader"), one
    standing by (Ready, "standby"). `kubectl delete pod` of the leader: it gives the Lease up
    on SIGTERM, another replica leads, and builds go on; the Deployment makes a new pod."""
    sandbox.admin.apply([{"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": HELM_NAMESPACE}}])
    with _helm_release(sandbox, operator_image, HELM_NAMESPACE, "crds.enabled=false",
                       "logFormat=json"):
        leader = wait_ready_operator(sandbox, HELM_NAMESPACE, HELM_OPERATOR)
        pods = {pod["metadata"]["name"]: pod
                for pod in sandbox.admin.list("v1", "Pod", HELM_NAMESPACE)}
        assert len(pods) == 2
        for name, pod in pods.items():  # the pod network is the host's bridge
            answer = httpx.get(f"http://{pod['status']['podIP']}:8082/readyz", timeout=5)
            assert answer.status_code == 200
            assert answer.text.strip() == (
                "leader" if name == leader["metadata"]["name"] else "standby")
        first = _build(sandbox, namespace, f"{sandbox.registry.host}/{namespace}/first",
                       insecure=True)
        assert first["status"]["phase"] == "Succeeded"
        leader_name = leader["metadata"]["name"]
        log = sandbox.pod_log(leader_name, HELM_NAMESPACE)
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        about = [line for line in lines if (line.get("object") or {}).get("name") == "hello"]
        assert about, log[-2000:]  # JSON lines naming the ImageBuild...
        assert all(line["replica"].startswith(leader_name + "_") for line in lines)
        assert about[0]["object"]["namespace"] == namespace  # ...and its namespace

        cli(sandbox, "kubectl", "-n", HELM_NAMESPACE, "delete", "pod", leader_name,
            "--wait=false")
        # The standby, or the pod the Deployment starts in the deleted one's place: whichever
        # tries first after the Lease is given up.
        successor = leader_pod_name(sandbox, HELM_NAMESPACE, timeout=60,
                                    other_than=leader_name)
        sandbox.admin.apply([{
            "apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
            "metadata": {"name": "second", "namespace": namespace},
            "spec": {"source": {"configMap": {"name": "ctx"}},
                     "output": {"image": f"{sandbox.registry.host}/{namespace}/second",
                                "insecure": True}}}])
        second = sandbox.wait_settled("second", namespace, timeout=240)
        assert second["status"]["phase"] == "Succeeded", (
            sandbox.pod_log(successor, HELM_NAMESPACE)[-3000:])
        assert '"Created pod second-1-1' in sandbox.pod_log(successor, HELM_NAMESPACE)
        wait_ready_operator(sandbox, HELM_NAMESPACE, HELM_OPERATOR)  # a new standby again
