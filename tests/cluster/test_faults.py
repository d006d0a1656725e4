"""Faults on the real node with real Kaniko: the build loop loses and duplicates nothing.

After each fault every build ends with the right status, each ImageBuild generation has
exactly the pods its attempts explain (counted by the stagewright.dev/imagebuild and
generation labels), and the operator still builds a new ImageBuild. Builds are short
(``sleep`` on the busybox base) and shared within a scenario: one that passes and one that
fails, so a fault that turned a failure into a success, or the reverse, shows.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.cluster.builds import context, imagebuild, manifest, pods, wait_phase, wait_pod_running

from sandbox.cluster import OperatorProcess
from sandbox.stack import IMAGEBUILD_API, Sandbox
from sandbox.tcpproxy import TcpProxy

#: Its own tier (`make test-faults`): the outages alone are 100 s of waiting by design.
pytestmark = [pytest.mark.cluster, pytest.mark.faults]

#: One context for both outcomes: OUTCOME=pass succeeds, anything else fails after the nap.
DOCKERFILE = ("ARG BASE\nFROM ${BASE}\nARG NAP=8\nARG OUTCOME=pass\n"
              "RUN echo napping ${NAP} && sleep ${NAP} && test \"${OUTCOME}\" = pass\n")
#: The "still serving" probe: no RUN step, so it builds in seconds.
QUICK = "ARG BASE\nFROM ${BASE}\nLABEL probe=yes\n"
OUTCOMES = {"passes": ("Succeeded", "Succeeded"), "fails": ("Failed", "BuildFailed")}


def _build(sandbox: Sandbox, namespace: str, name: str, **args: str) -> dict[str, Any]:
    return imagebuild(sandbox, namespace, name, cache={"enabled": False},
                      buildArgs={"BASE": sandbox.base_image, **args})


def start_builds(sandbox: Sandbox, namespace: str, nap: int = 8) -> list[str]:
    """One passing and one failing build, both running in Kaniko when this returns."""
    sandbox.admin.apply([context(namespace, DOCKERFILE)])
    sandbox.admin.apply([_build(sandbox, namespace, "passes", NAP=str(nap)),
                         _build(sandbox, namespace, "fails", NAP=str(nap), OUTCOME="fail")])
    for name in OUTCOMES:
        pod = wait_phase(sandbox, namespace, name, "Building")["status"]["podName"]
        wait_pod_running(sandbox, namespace, pod)
    return list(OUTCOMES)


def pods_per_generation(sandbox: Sandbox, namespace: str, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in pods(sandbox, namespace, name):
        generation = pod["metadata"]["labels"]["stagewright.dev/generation"]
        counts[generation] = counts.get(generation, 0) + 1
    return counts


def assert_builds_ended_right(sandbox: Sandbox, namespace: str, timeout: float = 150) -> None:
    """Right phase and reason, the pushed digest is the registry's, one pod per generation."""
    for name, (phase, reason) in OUTCOMES.items():
        status = sandbox.wait_settled(name, namespace, timeout=timeout)["status"]
        assert (status["phase"], status["reason"]) == (phase, reason), status
        assert status["attempt"] == 1, status
        assert pods_per_generation(sandbox, namespace, name) == {"1": 1}
        if phase == "Succeeded":
            assert status["digest"] == manifest(sandbox, f"{namespace}/{name}", "latest")[0]


def assert_still_serving(sandbox: Sandbox, namespace: str, name: str = "after") -> None:
    sandbox.admin.apply([context(namespace, QUICK, name="quick")])
    probe = _build(sandbox, namespace, name)
    probe["spec"]["source"] = {"configMap": {"name": "quick"}}
    sandbox.admin.apply([probe])
    status = sandbox.wait_settled(name, namespace, timeout=90)["status"]
    assert status["phase"] == "Succeeded", status
    assert pods_per_generation(sandbox, namespace, name) == {"1": 1}


def assert_no_traceback(operator_log: str) -> None:
    assert "Traceback" not in operator_log, operator_log[-3000:]


def _control_plane_stopped(sandbox: Sandbox, namespace: str, component: str) -> None:
    """The apiserver (or etcd behind it) goes away mid-build and comes back on its port.

    The operator's writes and its informers' watches fail meanwhile; the informers re-list and
    re-watch (back-off capped at 5 s), the resync re-derives each build from its pod, so both
    finish as their pods did.
    """
    start_builds(sandbox, namespace, nap=12)
    log_start = len(sandbox.operator.log())
    sandbox.control_plane.stop_component(component)
    time.sleep(20)
    sandbox.control_plane.start_component(component)
    assert_builds_ended_right(sandbox, namespace)
    assert sandbox.operator.running
    assert_no_traceback(sandbox.operator.log()[log_start:])
    assert_still_serving(sandbox, namespace)


def test_apiserver_stopped_for_20s_mid_build(sandbox: Sandbox, namespace: str) -> None:
    _control_plane_stopped(sandbox, namespace, "kube-apiserver")


def test_etcd_stopped_for_20s_mid_build(sandbox: Sandbox, namespace: str) -> None:
    _control_plane_stopped(sandbox, namespace, "etcd")


@pytest.fixture
def operator_through(sandbox: Sandbox, tmp_path: Path) -> Iterator[TcpProxy]:
    """The operator restarted to reach the apiserver only through a cuttable proxy."""
    with TcpProxy(("127.0.0.1", sandbox.control_plane.port)) as proxy:
        config = yaml.safe_load(sandbox.control_plane.operator.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = proxy.url
        kubeconfig = tmp_path / "operator-via-proxy.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        sandbox.operator.stop()
        try:
            with OperatorProcess(sandbox.control_plane, tmp_path / "operator.log",
                                 env={"STAGEWRIGHT_KANIKO_IMAGE": sandbox.images.kaniko,
                                      "KUBECONFIG": str(kubeconfig)}):
                yield proxy
        finally:
            sandbox.operator.start()


def test_every_watch_connection_cut_mid_build(sandbox: Sandbox, namespace: str,
                                              operator_through: TcpProxy,
                                              tmp_path: Path) -> None:
    """Every connection the operator has (watches and requests) closed, three times."""
    start_builds(sandbox, namespace)
    cut = []
    for _ in range(3):
        cut.append(operator_through.cut())
        time.sleep(2)
    assert cut[0] >= 2, cut  # at least the ImageBuild and the pod watch were open
    assert all(n >= 1 for n in cut[1:]), cut  # the operator reconnected each time
    assert_builds_ended_right(sandbox, namespace)
    assert_no_traceback((tmp_path / "operator.log").read_text())
    assert_still_serving(sandbox, namespace)


def test_the_registry_down_when_the_size_is_read_and_back_60s_later(
        sandbox: Sandbox, namespace: str) -> None:
    """Kaniko pushed and exited; the registry is down when the operator checks the digest.

    The operator treats it as temporary within its grace (five minutes after Kaniko's exit):
    status stays Building (reason Building) and the log says it will retry; once the registry
    is back the build ends Succeeded with the digest and size the registry serves.
    """
    admin = sandbox.admin
    admin.apply([context(namespace, DOCKERFILE)])
    admin.apply([_build(sandbox, namespace, "passes", NAP="3")])
    pod = wait_phase(sandbox, namespace, "passes", "Building")["status"]["podName"]
    sandbox.operator.stop()  # so the pod can finish without the operator reading the size
    try:
        admin.wait_for("v1", "Pod", pod, namespace,
                       lambda p: p["status"].get("phase") == "Succeeded", 90, "succeeded")
        sandbox.registry.pause()
        log_start = len(sandbox.operator.log())
        sandbox.operator.start()
        time.sleep(60)
        status = sandbox.imagebuild("passes", namespace)["status"]  # type: ignore[index]
        assert (status["phase"], status["reason"]) == ("Building", "Building"), status
        retried = sandbox.operator.log()[log_start:]
        assert "will retry" in retried, retried[-2000:]
    finally:
        if sandbox.registry.pid is None:
            sandbox.registry.resume()
        if not sandbox.operator.running:
            sandbox.operator.start()
    status = sandbox.wait_settled("passes", namespace, timeout=30)["status"]
    assert status["phase"] == "Succeeded", status
    digest, body = manifest(sandbox, f"{namespace}/passes", "latest")
    assert status["digest"] == digest
    assert status["size"] == body["config"]["size"] + sum(x["size"] for x in body["layers"])
    assert pods_per_generation(sandbox, namespace, "passes") == {"1": 1}
    assert_still_serving(sandbox, namespace)


def _delete(sandbox: Sandbox, namespace: str, name: str, propagation: str) -> None:
    sandbox.admin.resource(IMAGEBUILD_API, "ImageBuild").delete(
        name=name, namespace=namespace, body={"propagationPolicy": propagation})


def _wait_gone(sandbox: Sandbox, namespace: str, build: str, timeout: float) -> float:
    started = time.monotonic()
    while pods(sandbox, namespace, build):
        assert time.monotonic() - started < timeout, pods(sandbox, namespace, build)
        time.sleep(0.5)
    return time.monotonic() - started


def _marked_within(sandbox: Sandbox, namespace: str, pod: str, seconds: float) -> None:
    sandbox.admin.wait_for("v1", "Pod", pod, namespace,
                           lambda p: p["metadata"].get("deletionTimestamp") is not None,
                           seconds, "marked for deletion")


def test_an_imagebuild_deleted_mid_build_the_garbage_collector_alone_stops_it(
        sandbox: Sandbox, namespace: str) -> None:
    """Background deletion with the operator stopped: the owner reference is enough."""
    admin = sandbox.admin
    admin.apply([context(namespace, DOCKERFILE)])
    admin.apply([_build(sandbox, namespace, "doomed", NAP="60")])
    pod = wait_phase(sandbox, namespace, "doomed", "Building")["status"]["podName"]
    wait_pod_running(sandbox, namespace, pod)
    sandbox.operator.stop()
    try:
        _delete(sandbox, namespace, "doomed", "Background")
        _marked_within(sandbox, namespace, pod, 10)
        _wait_gone(sandbox, namespace, "doomed", 60)
    finally:
        sandbox.operator.start()
    assert_still_serving(sandbox, namespace)


def test_an_imagebuild_deleted_mid_build_as_an_orphan_the_operator_stops_it(
        sandbox: Sandbox, namespace: str) -> None:
    """propagationPolicy Orphan: the garbage collector strips the owner reference and leaves
    the pod; the operator sees a build pod nothing owns and deletes it."""
    admin = sandbox.admin
    admin.apply([context(namespace, DOCKERFILE)])
    admin.apply([_build(sandbox, namespace, "orphaned", NAP="60")])
    pod = wait_phase(sandbox, namespace, "orphaned", "Building")["status"]["podName"]
    wait_pod_running(sandbox, namespace, pod)
    log_start = len(sandbox.operator.log())
    _delete(sandbox, namespace, "orphaned", "Orphan")
    _marked_within(sandbox, namespace, pod, 30)
    assert f"Deleted pod {namespace}/{pod}" in sandbox.operator.log()[log_start:]
    _wait_gone(sandbox, namespace, "orphaned", 60)
    assert_still_serving(sandbox, namespace)


def test_the_namespace_deleted_mid_build(sandbox: Sandbox, namespace: str) -> None:
    """The namespace controller removes ImageBuilds and pods in whatever order it likes;
    the operator must not fight it (no pod re-created, no traceback) and keeps serving."""
    start_builds(sandbox, namespace)
    log_start = len(sandbox.operator.log())
    sandbox.admin.delete("v1", "Namespace", namespace)
    sandbox.admin.wait_gone("v1", "Namespace", namespace, timeout=90)
    log = sandbox.operator.log()[log_start:]
    assert_no_traceback(log)
    assert "Created pod" not in log, log[-3000:]
    # A pod deleted with its namespace is not retried into a namespace being deleted.
    assert [line for line in log.splitlines() if "ERROR" in line and namespace in line] == []
    other = f"{namespace[:40]}-next"
    sandbox.admin.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}])
    assert_still_serving(sandbox, other)


def _evict(sandbox: Sandbox, namespace: str, pod: str) -> None:
    """The Eviction API (policy/v1beta1 on 1.20), as ``kubectl drain`` calls it."""
    plane = sandbox.control_plane
    response = httpx.post(
        f"{plane.url}/api/v1/namespaces/{namespace}/pods/{pod}/eviction",
        json={"apiVersion": "policy/v1beta1", "kind": "Eviction",
              "metadata": {"name": pod, "namespace": namespace}},
        headers={"Authorization": f"Bearer {plane.admin.token}"},
        verify=ssl.create_default_context(cafile=str(plane.pki / "ca.crt")), timeout=10)
    assert response.status_code == 201, response.text


def _events(sandbox: Sandbox, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e["reason"], e["message"]) for e in sandbox.admin.list("v1", "Event", namespace)
            if e["involvedObject"].get("name") == name]


def test_an_evicted_build_is_retried_as_spec_retries_says_and_oom_is_not(
        sandbox: Sandbox, namespace: str) -> None:
    """Evicted is an infrastructure failure (api.reasons.INFRASTRUCTURE_FAILURES): retried up
    to spec.retries. OutOfMemory is the build's own: never retried, whatever retries says."""
    admin = sandbox.admin
    admin.apply([context(namespace, DOCKERFILE),
                 context(namespace, "ARG BASE\nFROM ${BASE}\n"
                         "RUN dd if=/dev/zero of=/dev/null bs=512M count=1\n", name="hungry")])
    retried = _build(sandbox, namespace, "evicted-retried", NAP="6")
    retried["spec"]["retries"] = 1
    final = _build(sandbox, namespace, "evicted-final", NAP="6")
    final["spec"]["retries"] = 0
    oom = _build(sandbox, namespace, "oom")
    oom["spec"].update(retries=2, source={"configMap": {"name": "hungry"}},
                       resources={"requests": {"memory": "64Mi", "cpu": "100m"},
                                  "limits": {"memory": "160Mi"}})
    admin.apply([retried, final, oom])
    for name in ("evicted-retried", "evicted-final"):
        pod = wait_phase(sandbox, namespace, name, "Building")["status"]["podName"]
        wait_pod_running(sandbox, namespace, pod)
        _evict(sandbox, namespace, pod)
    # (phase, reason, attempt, the attempts' pods that must remain): evicted ones go.
    expected: dict[str, tuple[str, str, int, set[str]]] = {
        "evicted-retried": ("Succeeded", "Succeeded", 2, {"2"}),
        "evicted-final": ("Failed", "Evicted", 1, set()),
        "oom": ("Failed", "OutOfMemory", 1, {"1"}),
    }
    for name, (phase, reason, attempts, kept) in expected.items():
        status = sandbox.wait_settled(name, namespace, timeout=150)["status"]
        assert (status["phase"], status["reason"], status["attempt"]) == (
            phase, reason, attempts), status
        tries = [p["metadata"]["labels"]["stagewright.dev/attempt"]
                 for p in pods(sandbox, namespace, name)]
        assert len(set(tries)) == len(tries), tries  # never two pods for one attempt
        assert kept <= set(tries) <= {str(n) for n in range(1, attempts + 1)}, tries
        assert set(pods_per_generation(sandbox, namespace, name)) <= {"1"}
    assert any(reason == "Retrying" and "Evicted" in message
               for reason, message in _events(sandbox, namespace, "evicted-retried"))
    assert_still_serving(sandbox, namespace)

