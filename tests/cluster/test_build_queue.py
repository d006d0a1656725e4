"""The build queue on a real apiserver with real builds: limits, order, fairness, restart.

The session's operator is stopped for these tests and another ``stagewright run`` with queue
limits takes its place (same identity and RBAC); the session's operator is restarted after.
A sampler thread lists build pods every 0.2 s to see how many run at once and in which order
they appeared, and records every reason and message each ImageBuild showed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests.cluster.builds import context, imagebuild

from sandbox.cluster import OperatorProcess
from sandbox.images import PlatformBase
from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster

DOCKERFILE = "ARG BASE\nFROM $BASE\nRUN echo built > /built\n"


@dataclass
class Sampled:
    """What the sampler saw."""

    pod_order: list[str] = field(default_factory=list)
    max_running: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


class Sampler:
    """Polls build pods and ImageBuilds in ``namespaces`` until stopped."""

    def __init__(self, sandbox: Sandbox, namespaces: list[str]) -> None:
        self.sandbox = sandbox
        self.namespaces = namespaces
        self.seen = Sampled()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampled:
        self._thread.start()
        return self.seen

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            running_total = 0
            for namespace in self.namespaces:
                pods = self.sandbox.admin.list("v1", "Pod", namespace,
                                               label_selector="app.kubernetes.io/managed-by")
                for pod in sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"]):
                    owner = f"{namespace}/{pod['metadata']['labels']['stagewright.dev/imagebuild']}"
                    if owner not in self.seen.pod_order:
                        self.seen.pod_order.append(owner)
                running = sum(1 for p in pods
                              if p["status"].get("phase") not in ("Succeeded", "Failed"))
                running_total += running
                self.seen.max_running[namespace] = max(self.seen.max_running.get(namespace, 0),
                                                       running)
                for build in self.sandbox.admin.list(IMAGEBUILD_API, "ImageBuild", namespace):
                    status = build.get("status") or {}
                    key = f"{namespace}/{build['metadata']['name']}"
                    entry = (str(status.get("reason")), str(status.get("message")))
                    history = self.seen.statuses.setdefault(key, [])
                    if not history or history[-1] != entry:
                        history.append(entry)
            self.seen.max_running["*"] = max(self.seen.max_running.get("*", 0), running_total)
            time.sleep(0.2)


@pytest.fixture
def queued_operator(sandbox: Sandbox, tmp_path: Any) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators with queue limits in place of the session's; restore it after."""
    started: list[OperatorProcess] = []
    sandbox.operator.stop()

    def start(**limits: int) -> OperatorProcess:
        # The session operator's settings (the sandbox's Kaniko image), plus the limits.
        env = {**sandbox.operator.env,
               **{f"STAGEWRIGHT_{key.upper()}": str(value) for key, value in limits.items()}}
        operator = OperatorProcess(sandbox.control_plane,
                                   tmp_path / f"operator-{len(started)}.log", env=env)
        started.append(operator)
        operator.start()
        return operator

    try:
        yield start
    finally:
        for operator in started:
            operator.stop()
        sandbox.operator.start()


def _apply_builds(sandbox: Sandbox, namespace: str, names: list[str]) -> None:
    """Create ImageBuilds one second apart: creation order is to the second."""
    sandbox.admin.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        context(namespace, DOCKERFILE)])
    for name in names:
        sandbox.admin.apply([imagebuild(sandbox, namespace, name, cache={"enabled": False})])
        time.sleep(1.05)


def _pods_per_build(sandbox: Sandbox, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in sandbox.admin.list("v1", "Pod", namespace,
                                  label_selector="app.kubernetes.io/managed-by"):
        owner = pod["metadata"]["labels"]["stagewright.dev/imagebuild"]
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def test_queue_keeps_limits_order_and_fairness(
        sandbox: Sandbox, queued_operator: Callable[..., OperatorProcess]) -> None:
    """Busy namespace: 3 builds; quiet namespace: 1 newer build. Limits: 2 in all, 1 each."""
    busy, quiet = "t-queue-busy", "t-queue-quiet"
    _apply_builds(sandbox, busy, ["a1", "a2", "a3"])
    _apply_builds(sandbox, quiet, ["b1"])
    with Sampler(sandbox, [busy, quiet]) as seen:
        queued_operator(max_running_builds=2, max_running_builds_per_namespace=1)
        for namespace, name in ((busy, "a1"), (busy, "a2"), (busy, "a3"), (quiet, "b1")):
            done = sandbox.wait_settled(name, namespace, timeout=240)
            assert done["status"]["phase"] == "Succeeded", done["status"]
    assert seen.max_running[busy] == 1
    assert seen.max_running[quiet] == 1
    assert seen.max_running["*"] <= 2
    # Fair: the quiet namespace's newer build did not wait behind the busy namespace's line.
    assert seen.pod_order.index(f"{quiet}/b1") < seen.pod_order.index(f"{busy}/a2")
    # Creation order within a namespace.
    busy_order = [o for o in seen.pod_order if o.startswith(busy)]
    assert busy_order == [f"{busy}/a1", f"{busy}/a2", f"{busy}/a3"]
    # Queued builds said where they stood, once: the message did not change while waiting.
    a3_queued = [m for r, m in seen.statuses[f"{busy}/a3"] if r == "Queued"]
    assert a3_queued == [f"2nd in line for namespace {busy}"]
    assert [r for r, _ in seen.statuses[f"{quiet}/b1"]].count("Queued") == 0
    assert _pods_per_build(sandbox, busy) == {"a1": 1, "a2": 1, "a3": 1}


def test_restart_mid_queue_keeps_order_and_limit(
        sandbox: Sandbox, queued_operator: Callable[..., OperatorProcess]) -> None:
    """SIGKILL with one build running and two queued: after a restart, same order, one pod each."""
    namespace = "t-queue-restart"
    _apply_builds(sandbox, namespace, ["r1", "r2", "r3"])
    with Sampler(sandbox, [namespace]) as seen:
        first = queued_operator(max_running_builds=1)
        sandbox.admin.wait_for(
            IMAGEBUILD_API, "ImageBuild", "r3", namespace,
            lambda o: (o.get("status") or {}).get("reason") == "Queued", 60, "queued")
        first.stop(kill=True)
        queued_operator(max_running_builds=1)
        for name in ("r1", "r2", "r3"):
            done = sandbox.wait_settled(name, namespace, timeout=240)
            assert done["status"]["phase"] == "Succeeded", done["status"]
    assert seen.max_running[namespace] == 1
    assert seen.pod_order == [f"{namespace}/r1", f"{namespace}/r2", f"{namespace}/r3"]
    assert _pods_per_build(sandbox, namespace) == {"r1": 1, "r2": 1, "r3": 1}


def test_a_multi_platform_build_takes_one_slot_and_starts_all_its_pods(
        sandbox: Sandbox, queued_operator: Callable[..., OperatorProcess],
        platform_base: PlatformBase) -> None:
    """Limit 1: the first build's two platform pods run together; the second build's start
    only once both have ended."""
    namespace = "t-queue-platforms"
    sandbox.admin.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        context(namespace, "ARG BASE\nFROM ${BASE}\nCOPY a.txt /a.txt\n",
                files={"a.txt": "a\n"})])
    for name in ("p1", "p2"):
        build = imagebuild(sandbox, namespace, name, cache={"enabled": False},
                           platforms=["linux/amd64", "linux/arm64"], platformMode="cross")
        build["spec"]["buildArgs"] = {"BASE": platform_base.index}
        sandbox.admin.apply([build])
        time.sleep(1.05)
    with Sampler(sandbox, [namespace]) as seen:
        queued_operator(max_running_builds=1)
        for name in ("p1", "p2"):
            done = sandbox.wait_settled(name, namespace, timeout=240)
            assert done["status"]["phase"] == "Succeeded", done["status"]
    assert seen.max_running[namespace] == 2  # one build's two pods, never a second build's
    assert _pods_per_build(sandbox, namespace) == {"p1": 2, "p2": 2}
    listed = sandbox.admin.list("v1", "Pod", namespace,
                                label_selector="app.kubernetes.io/managed-by")
    first = [p for p in listed if p["metadata"]["labels"]["stagewright.dev/imagebuild"] == "p1"]
    second = [p for p in listed if p["metadata"]["labels"]["stagewright.dev/imagebuild"] == "p2"]
    first_done = max(status["state"]["terminated"]["finishedAt"]
                     for p in first for status in p["status"]["containerStatuses"])
    assert min(p["metadata"]["creationTimestamp"] for p in second) >= first_done
    assert [r for r, _ in seen.statuses[f"{namespace}/p2"]].count("Queued") == 1
