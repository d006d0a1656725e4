"""Least privilege, judged by the real apiserver's PodSecurityPolicy admission.

The sandbox's kube-apiserver runs the PodSecurityPolicy plugin with two policies equal to the
Pod Security Standards' "baseline" and "restricted" levels (hack/sandbox/pod-security.yaml):
the operator's identity may use baseline (its build pods), every ServiceAccount in the
operator's namespace restricted. Each admitted pod carries the policy that admitted it in
its ``kubernetes.io/psp`` annotation; a pod no usable policy admits is refused (403).
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.dynamic.exceptions import ForbiddenError
from tests.cluster.builds import context, imagebuild, pods
from tests.tooling import by_kind, helm_template

from sandbox.cluster import Cluster
from sandbox.controlplane import OPERATOR_NAMESPACE
from sandbox.stack import Sandbox

pytestmark = pytest.mark.cluster

BASELINE, RESTRICTED = "stagewright-2-baseline", "stagewright-1-restricted"
PSP_ANNOTATION = "kubernetes.io/psp"


def _pod(namespace: str, name: str, image: str, **container_security: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "main", "image": image,
                                     "securityContext": container_security}]}}


@pytest.mark.parametrize(("field", "security", "host_path"), [
    ("privileged", {"privileged": True}, False),
    ("capabilities.add", {"capabilities": {"add": ["SYS_ADMIN"]}}, False),
    ("hostPath", {}, True),
])
def test_the_operator_identity_cannot_create_a_pod_beyond_baseline(
        sandbox: Sandbox, namespace: str, field: str, security: dict[str, Any],
        host_path: bool) -> None:
    """Each is refused by the apiserver, naming what broke the policy."""
    pod = _pod(namespace, "escalate", sandbox.base_image, **security)
    if host_path:
        pod["spec"]["volumes"] = [{"name": "root", "hostPath": {"path": "/"}}]
    operator = Cluster(sandbox.control_plane.operator.kubeconfig)
    with pytest.raises(ForbiddenError) as refused:
        operator.resource("v1", "Pod").create(body=pod, namespace=namespace)
    message = str(refused.value.body)
    assert "PodSecurityPolicy: unable to admit pod" in message, message
    assert field in message, message


def test_build_pods_are_admitted_under_baseline_and_build(sandbox: Sandbox,
                                                          namespace: str) -> None:
    sandbox.admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN echo root-but-tame\n")])
    sandbox.admin.apply([imagebuild(sandbox, namespace, "tame", cache={"enabled": False})])
    status = sandbox.wait_settled("tame", namespace)["status"]
    assert status["phase"] == "Succeeded", status
    [pod] = pods(sandbox, namespace, "tame")
    # Kaniko runs as root: restricted refuses it, baseline admits it unchanged.
    assert pod["metadata"]["annotations"][PSP_ANNOTATION] == BASELINE


def _chart_operator_pod() -> dict[str, Any]:
    [deployment] = by_kind(helm_template(), "Deployment")
    template = deployment["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "operator-dry-run", "namespace": OPERATOR_NAMESPACE,
                         "labels": template["metadata"].get("labels", {})},
            "spec": template["spec"]}


def test_the_charts_operator_pod_is_admitted_under_restricted(sandbox: Sandbox) -> None:
    """A dry-run create (admission runs, nothing is stored) of the chart's operator pod as the
    operator's ServiceAccount, in its namespace. The same pod made to run as root is refused
    by restricted and falls to baseline, which shows restricted is the one judging."""
    operator = Cluster(sandbox.control_plane.operator.kubeconfig)
    pod = _chart_operator_pod()
    admitted = operator.resource("v1", "Pod").create(
        body=pod, namespace=OPERATOR_NAMESPACE, dry_run="All").to_dict()
    assert admitted["metadata"]["annotations"][PSP_ANNOTATION] == RESTRICTED
    as_root = _chart_operator_pod()
    as_root["spec"]["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    for container in as_root["spec"]["containers"]:
        container["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    fallen = operator.resource("v1", "Pod").create(
        body=as_root, namespace=OPERATOR_NAMESPACE, dry_run="All").to_dict()
    assert fallen["metadata"]["annotations"][PSP_ANNOTATION] == BASELINE
