"""What only a real node shows: the kubelet's OOM kills, deadlines, pull errors, the garbage
collector, volumes and env where Kaniko reads them, and Kaniko's own cache and failure logs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.builds import context, imagebuild, pods, wait_phase, wait_pod_running

from sandbox.cluster import OperatorProcess
from sandbox.gitserver import GitServer
from sandbox.node import BRIDGE, BRIDGE_MAC
from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster


def test_a_build_over_its_memory_limit_ends_out_of_memory(sandbox: Sandbox,
                                                          namespace: str) -> None:
    admin = sandbox.admin
    # dd's 512 MiB buffer is touched as it is filled: far over the 160 MiB limit.
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\n"
                         "RUN dd if=/dev/zero of=/dev/null bs=512M count=1\n")])
    admin.apply([imagebuild(sandbox, namespace, "hungry", cache={"enabled": False},
                            resources={"requests": {"memory": "64Mi", "cpu": "100m"},
                                       "limits": {"memory": "160Mi"}})])
    status = sandbox.wait_settled("hungry", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "OutOfMemory"), status
    [pod] = pods(sandbox, namespace, "hungry")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled"


def test_a_deadline_ends_timeout_through_the_kubelets_deadline_exceeded(
        sandbox: Sandbox, namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN sleep 120\n")])
    admin.apply([imagebuild(sandbox, namespace, "late", timeout="8s")])
    status = sandbox.wait_settled("late", namespace, timeout=90)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "Timeout"), status
    [pod] = pods(sandbox, namespace, "late")
    assert pod["spec"]["activeDeadlineSeconds"] == 8
    assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "DeadlineExceeded")


@pytest.fixture
def unpullable_operator(sandbox: Sandbox, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator restarted with a Kaniko image the registry does not have."""
    sandbox.operator.stop()
    missing = sandbox.images.kaniko.rsplit(":", 1)[0] + ":no-such-tag"
    operator = OperatorProcess(sandbox.control_plane, tmp_path / "operator.log",
                               env={"STAGEWRIGHT_KANIKO_IMAGE": missing})
    try:
        with operator:
            yield operator
    finally:
        sandbox.operator.start()


def test_an_image_that_cannot_be_pulled_shows_the_kubelets_words_then_times_out(
        sandbox: Sandbox, namespace: str, unpullable_operator: OperatorProcess) -> None:
    """PodWaiting with the kubelet's pull error; the pod's deadline then ends it as Timeout.

    Nothing recovers a pull error by itself here: the kubelet backs off and retries until the
    pod's activeDeadlineSeconds, then the build fails with Timeout (the operator's own check,
    deadline plus two minutes' grace, is the fallback when no kubelet reports).
    """
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN true\n")])
    admin.apply([imagebuild(sandbox, namespace, "unpullable", timeout="20s")])
    waiting = wait_phase(sandbox, namespace, "unpullable", "Pending", timeout=60,
                         reason="PodWaiting")["status"]
    assert any(words in waiting["message"] for words in ("ErrImagePull", "ImagePullBackOff")), \
        waiting
    assert "no-such-tag" in waiting["message"]
    status = sandbox.wait_settled("unpullable", namespace, timeout=90)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "Timeout"), status


def test_a_deleted_imagebuild_loses_its_pod_to_the_garbage_collector(sandbox: Sandbox,
                                                                     namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN sleep 60\n")])
    admin.apply([imagebuild(sandbox, namespace, "doomed")])
    pod = wait_phase(sandbox, namespace, "doomed", "Building")["status"]["podName"]
    wait_pod_running(sandbox, namespace, pod)
    admin.delete(IMAGEBUILD_API, "ImageBuild", "doomed", namespace)
    # The controller-manager's garbage collector marks the orphan for deletion at once; the
    # kubelet then stops it and the object goes.
    admin.wait_for("v1", "Pod", pod, namespace,
                   lambda p: p["metadata"].get("deletionTimestamp") is not None, 30,
                   "marked for deletion")
    deadline = time.monotonic() + 60
    while pods(sandbox, namespace, "doomed") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pods(sandbox, namespace, "doomed") == []


DOCKERFILE_FROM_GIT = ("ARG BASE\nFROM ${BASE}\nCOPY marker.txt /marker.txt\n"
                       "ARG EXPECT\nRUN grep -qx \"${EXPECT}\" /marker.txt\n")


def from_git(sandbox: Sandbox, namespace: str, name: str, url: str, revision: str,
             expect: str, secret: str | None = "git-creds") -> dict[str, Any]:
    """An ImageBuild of a git context whose RUN checks which revision was cloned."""
    build = imagebuild(sandbox, namespace, name, cache={"enabled": False},
                       buildArgs={"BASE": sandbox.base_image, "EXPECT": expect})
    git_source: dict[str, Any] = {"url": url, "revision": revision}
    if secret:
        git_source["secretRef"] = {"name": secret}
    build["spec"]["source"] = {"git": git_source}
    return build


def test_a_git_context_is_cloned_with_credentials_by_branch_and_by_commit(
        sandbox: Sandbox, namespace: str, git: GitServer) -> None:
    first = git.create_repository("app", {"Dockerfile": DOCKERFILE_FROM_GIT,
                                          "marker.txt": "one\n"})
    git.commit("app", {"marker.txt": "two\n"})
    git.commit("app", {"marker.txt": "feature\n"}, branch="feature")
    url = f"{git.url}/app.git"
    sandbox.admin.apply([from_git(sandbox, namespace, "by-branch", url, "feature", "feature"),
                         from_git(sandbox, namespace, "by-commit", url, first, "one")])
    for name in ("by-branch", "by-commit"):
        status = sandbox.wait_settled(name, namespace)["status"]
        assert status["phase"] == "Succeeded", status.get("message")


def test_a_git_clone_without_credentials_says_authentication_is_required(
        sandbox: Sandbox, namespace: str, git: GitServer) -> None:
    git.create_repository("app", {"Dockerfile": DOCKERFILE_FROM_GIT, "marker.txt": "one\n"})
    sandbox.admin.apply([from_git(sandbox, namespace, "no-creds", f"{git.url}/app.git", "main",
                                  "one", secret=None)])
    denied = sandbox.wait_settled("no-creds", namespace)["status"]
    assert denied["phase"] == "Failed", denied
    # Kaniko prints the error, then its whole usage text (~100 lines): the message must keep
    # the error, not only the usage's last lines.
    assert "authentication required" in denied["message"], denied["message"][-600:]


def test_the_gateways_mac_outlives_the_pods_that_come_and_go(sandbox: Sandbox,
                                                              namespace: str) -> None:
    """Pods reach the registry at the bridge's address; a bridge that followed its ports' MACs
    changed its own when a pod ended, and the next build's pushes timed out for ~30 s while
    its ARP entry was stale (seen in `make demo`). The MAC is fixed by the sandbox: the kernel
    says so (addr_assign_type 3, "set"), and it is unchanged after pods ended."""
    net = Path("/sys/class/net") / BRIDGE
    assert (net / "addr_assign_type").read_text().strip() == "3"
    sandbox.admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nLABEL quick=yes\n")])
    for name in ("first", "second"):
        sandbox.admin.apply([imagebuild(sandbox, namespace, name, cache={"enabled": False},
                                        buildArgs={"BASE": sandbox.base_image})])
    for name in ("first", "second"):
        status = sandbox.wait_settled(name, namespace, timeout=120)["status"]
        assert status["phase"] == "Succeeded", status
    assert (net / "address").read_text().strip() == BRIDGE_MAC
