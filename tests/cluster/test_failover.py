"""Two operator replicas with leader election on the real node: failover, handover, fencing.

Each test stops the sandbox's own operator and runs two ``stagewright run`` processes with
leader election on one Lease (with the operator's RBAC identity: the Lease Role is checked
for real), then the sandbox's operator is started again. The timing is shortened (a 6 s
lease, 4 s renew deadline, 1 s retry) so a failover takes seconds; the defaults' figures are
benchmarks/availability.py's. After each fault every build must end with the right status,
with exactly the pods its attempts explain, and the surviving replica must build a new
ImageBuild.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.cluster.builds import SLOW_DOCKERFILE, context, imagebuild, pods, wait_phase

from sandbox.cluster import OperatorProcess
from sandbox.controlplane import OPERATOR_NAMESPACE
from sandbox.gitserver import GitServer
from sandbox.node import GATEWAY
from sandbox.processes import free_port
from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster

QUICK_DOCKERFILE = "ARG BASE\nFROM ${BASE}\nRUN echo built > /built\n"
#: Small requests, so ten builds fit on the one node at once.
SMALL = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}
TIMING = {"STAGEWRIGHT_LEASE_DURATION_SECONDS": "6", "STAGEWRIGHT_RENEW_DEADLINE_SECONDS": "4",
          "STAGEWRIGHT_RETRY_PERIOD_SECONDS": "1"}
LEASES = ("coordination.k8s.io/v1", "Lease")


class Replica:
    """One ``stagewright run`` with leader election, its readiness endpoint and log."""

    def __init__(self, sandbox: Sandbox, work_dir: Path, name: str, lease: str,
                 env: dict[str, str]) -> None:
        self.name = name
        self.readiness = f"http://127.0.0.1:{free_port()}/readyz"
        self.process = OperatorProcess(sandbox.control_plane, work_dir / f"{name}.log", env={
            "STAGEWRIGHT_KANIKO_IMAGE": sandbox.images.kaniko,
            "STAGEWRIGHT_BUILDAH_IMAGE": sandbox.images.buildah,
            "STAGEWRIGHT_LEADER_ELECTION": "true", "STAGEWRIGHT_LEASE_NAME": lease,
            "STAGEWRIGHT_LEASE_NAMESPACE": OPERATOR_NAMESPACE,
            "STAGEWRIGHT_READINESS_ENDPOINT": self.readiness, "POD_NAME": name,
            # Host processes: the leader's webhook endpoint is on 127.0.0.1 (a free port).
            "POD_IP": "127.0.0.1", **TIMING, **env})
        self.webhook = f"http://127.0.0.1:{self.process.webhook_port}"

    def role(self) -> str:
        """What /readyz says ("" while it does not answer 200)."""
        try:
            answer = httpx.get(self.readiness, timeout=2)
        except httpx.HTTPError:
            return ""
        return answer.text.strip() if answer.status_code == 200 else ""

    def log(self) -> str:
        return self.process.log()


def lease_holder(sandbox: Sandbox, lease: str) -> str:
    found = sandbox.admin.get(*LEASES, lease, OPERATOR_NAMESPACE) or {}
    return str((found.get("spec") or {}).get("holderIdentity") or "")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture
def replicas(sandbox: Sandbox, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start replicas (``replicas(name, lease=..., **env)``) with the sandbox's operator
    stopped; every one is stopped afterwards, and the sandbox's operator started again."""
    started: list[Replica] = []
    sandbox.operator.stop()

    def start(name: str, lease: str = "failover", **env: str) -> Replica:
        replica = Replica(sandbox, tmp_path, name, lease, env)
        replica.process.start()
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in started:
            replica.process.stop(kill=True)
            # What each did (pytest shows it when the test failed).
            print(f"--- {replica.name}\n{replica.log()[-3000:]}")
        for lease in ("failover", "handover", "frozen", "webhooks"):
            sandbox.admin.delete(*LEASES, lease, OPERATOR_NAMESPACE)
        sandbox.operator.start()


def leader_and_standby(sandbox: Sandbox, first: Replica, second: Replica,
                       lease: str) -> tuple[Replica, Replica]:
    """Wait until one leads and the other stands by; (leader, standby)."""
    wait_until(lambda: {first.role(), second.role()} == {"leader", "standby"}, 60,
               "one leader and one ready standby")
    holder = lease_holder(sandbox, lease)
    leader = first if holder.startswith(first.name + "_") else second
    assert leader.role() == "leader", (holder, leader.name)
    return leader, second if leader is first else first


def pods_per_attempt(sandbox: Sandbox, namespace: str, build: str) -> dict[str, int]:
    """How many pods each (generation, attempt) of a build has."""
    counts: dict[str, int] = {}
    for pod in pods(sandbox, namespace, build):
        labels = pod["metadata"]["labels"]
        key = f"{labels['stagewright.dev/generation']}/{pod['metadata']['name'].rsplit('-', 1)[1]}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_ten_builds_survive_a_killed_leader_and_the_standby_builds_the_next(
        sandbox: Sandbox, namespace: str, replicas: Callable[..., Replica]) -> None:
    first, second = replicas("replica-a"), replicas("replica-b")
    leader, standby = leader_and_standby(sandbox, first, second, "failover")
    lease = sandbox.admin.get(*LEASES, "failover", OPERATOR_NAMESPACE)
    assert lease is not None
    # Where a standby forwards webhook deliveries: the leader's POD_IP and webhook port.
    assert lease["metadata"]["annotations"]["stagewright.dev/leader-address"] == (
        f"127.0.0.1:{leader.process.webhook_port}")
    sandbox.admin.apply([context(namespace, SLOW_DOCKERFILE)])
    names = [f"b{index}" for index in range(10)]
    sandbox.admin.apply([imagebuild(sandbox, namespace, name, resources=SMALL)
                         for name in names])
    for name in names:
        wait_phase(sandbox, namespace, name, "Building", timeout=120)
    assert "Created pod" not in standby.log()  # a standby writes nothing
    leader.process.stop(kill=True)
    killed = time.monotonic()
    wait_until(lambda: standby.role() == "leader", 30, "the standby leading")
    took_over = time.monotonic() - killed
    assert took_over < 6 + 1 + 5, took_over  # lease + retry, and some slack for the machine
    for name in names:
        status = sandbox.wait_settled(name, namespace, timeout=240)["status"]
        assert status["phase"] == "Succeeded", (name, status)
        assert status["attempt"] == 1
        assert pods_per_attempt(sandbox, namespace, name) == {"1/1": 1}, name
    sandbox.admin.apply([context(namespace, QUICK_DOCKERFILE, name="quick"),
                         imagebuild(sandbox, namespace, "next", resources=SMALL,
                                    source={"configMap": {"name": "quick"}})])
    assert sandbox.wait_settled("next", namespace, timeout=180)["status"]["phase"] == "Succeeded"
    assert re.search(r"Created pod next-1-1\b", standby.log())
    # Each change of leader is a log line on every replica, and an Event on the Lease.
    assert f"{standby.name}_" in standby.log().split("leads now")[-2]
    events = sandbox.admin.list("v1", "Event", OPERATOR_NAMESPACE)
    became = [e["message"] for e in events if e.get("reason") == "LeaderElection"
              and e["involvedObject"]["name"] == "failover"]
    assert any(m.startswith(f"{standby.name}_") and m.endswith("became leader")
               for m in became), became


def test_sigterm_hands_the_lease_over_at_once(sandbox: Sandbox, namespace: str,
                                              replicas: Callable[..., Replica]) -> None:
    """A rolling update: the old leader gives its Lease up on SIGTERM, so the standby leads
    within about a retry period (1 s here), not a lease duration, even with the default
    15 s lease."""
    slow = {"STAGEWRIGHT_LEASE_DURATION_SECONDS": "15",
            "STAGEWRIGHT_RENEW_DEADLINE_SECONDS": "10"}
    first = replicas("replica-c", lease="handover", **slow)
    second = replicas("replica-d", lease="handover", **slow)
    leader, standby = leader_and_standby(sandbox, first, second, "handover")
    stopping = time.monotonic()
    leader.process.stop()  # SIGTERM, waited for
    wait_until(lambda: standby.role() == "leader", 10, "the standby leading")
    assert time.monotonic() - stopping < 6  # far inside the 15 s lease
    assert "Released Lease" in leader.log()
    sandbox.admin.apply([context(namespace, QUICK_DOCKERFILE),
                         imagebuild(sandbox, namespace, "after", resources=SMALL)])
    assert sandbox.wait_settled("after", namespace, timeout=180)["status"]["phase"] == (
        "Succeeded")
    assert re.search(r"Created pod after-1-1\b", standby.log())


def _wrote_after(log: str, offset: int) -> list[str]:
    """Lines of a replica's log past ``offset`` that record a write it made."""
    return re.findall(r".*(?:Created pod|Adopted pod|Deleted pod|Cancelled pod|Built |"
                      r"Queued:|Build failed).*", log[offset:])


def test_a_leader_frozen_past_its_lease_writes_nothing_when_woken(
        sandbox: Sandbox, namespace: str, replicas: Callable[..., Replica]) -> None:
    first = replicas("replica-e", lease="frozen")
    second = replicas("replica-f", lease="frozen")
    leader, standby = leader_and_standby(sandbox, first, second, "frozen")
    sandbox.admin.apply([context(namespace, QUICK_DOCKERFILE)])
    pid = leader.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: standby.role() == "leader", 30, "the standby leading")
        # Work the frozen replica's watches now hold for it: new builds, and a spec change
        # that cancels (deletes) a running pod.
        sandbox.admin.apply([imagebuild(sandbox, namespace, f"w{index}", resources=SMALL)
                             for index in range(3)])
        for index in range(3):
            wait_phase(sandbox, namespace, f"w{index}", "Building", timeout=120)
        woken_at = len(leader.log())
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(8)  # it wakes, finds its lease long gone, and must not act on what it holds
    after = leader.log()
    assert _wrote_after(after, woken_at) == [], after[woken_at:]
    assert "Stopped leading" in after[woken_at:]
    assert leader.role() == "standby"
    for index in range(3):
        name = f"w{index}"
        assert sandbox.wait_settled(name, namespace, timeout=180)["status"]["phase"] == (
            "Succeeded")
        assert pods_per_attempt(sandbox, namespace, name) == {"1/1": 1}, name


def test_two_shards_build_only_their_own_namespaces(
        sandbox: Sandbox, namespace: str, replicas: Callable[..., Replica]) -> None:
    """A shard by name, and a catch-all of the test's namespaces except that one (a pattern
    and an exclusion): each builds only its own, each on its own Lease."""
    prefix = namespace[:40].rstrip("-")
    own, rest = f"{prefix}-a", f"{prefix}-b"
    for extra in (own, rest):
        sandbox.admin.apply([{"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": extra}}])
        sandbox.admin.wait_for_service_account(extra)
    try:
        shard_a = replicas("shard-a", lease="shard-a", STAGEWRIGHT_NAMESPACES=own)
        shard_b = replicas("shard-b", lease="shard-b",
                           STAGEWRIGHT_NAMESPACES=f"{prefix}-*,!{own}")
        wait_until(lambda: shard_a.role() == shard_b.role() == "leader", 30, "both leading")
        for target in (own, rest):
            sandbox.admin.apply([context(target, QUICK_DOCKERFILE),
                                 imagebuild(sandbox, target, "web", resources=SMALL)])
        for target in (own, rest):
            status = sandbox.wait_settled("web", target, timeout=180)["status"]
            assert status["phase"] == "Succeeded", (target, status)
            assert pods_per_attempt(sandbox, target, "web") == {"1/1": 1}
        assert f"[{own}/web] Created pod" in shard_a.log()
        assert f"[{rest}/web] Created pod" in shard_b.log()
        assert f"[{rest}/web]" not in shard_a.log()
        assert f"[{own}/web]" not in shard_b.log()
        for lease, replica in (("shard-a", shard_a), ("shard-b", shard_b)):
            assert lease_holder(sandbox, lease).startswith(f"{replica.name}_")
    finally:
        for extra in (own, rest):
            sandbox.admin.delete("v1", "Namespace", extra)
            sandbox.admin.delete(*LEASES, extra, OPERATOR_NAMESPACE)
        for lease in ("shard-a", "shard-b"):
            sandbox.admin.delete(*LEASES, lease, OPERATOR_NAMESPACE)


WEBHOOK_SECRET = "webhook-secret-for-failover"
GIT_USER = ("builder", "s3cret-token")


def _secret(namespace: str, name: str, kind: str, values: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}


def test_a_webhook_delivered_to_the_standby_is_one_check_by_the_leader(
        sandbox: Sandbox, namespace: str, replicas: Callable[..., Replica],
        tmp_path: Path) -> None:
    """The standby forwards a delivery verbatim to the address on the Lease; the leader
    checks once and builds the new commit once; the same delivery again, through the standby,
    is the leader's replay."""
    first = replicas("replica-g", lease="webhooks")
    second = replicas("replica-h", lease="webhooks")
    leader, standby = leader_and_standby(sandbox, first, second, "webhooks")
    sandbox.admin.apply([
        _secret(namespace, "git-creds", "kubernetes.io/basic-auth",
                {"username": GIT_USER[0], "password": GIT_USER[1]}),
        _secret(namespace, "hook", "Opaque", {"token": WEBHOOK_SECRET})])
    (tmp_path / "git").mkdir()
    with GitServer(tmp_path / "git", address=GATEWAY, user=GIT_USER[0],
                   password=GIT_USER[1]) as git:
        one = git.create_repository("app", {"Dockerfile": QUICK_DOCKERFILE})
        build = imagebuild(sandbox, namespace, "app", cache={"enabled": False},
                           resources=SMALL)
        build["spec"]["source"] = {"git": {"url": f"{git.url}/app.git", "revision": "main",
                                           "secretRef": {"name": "git-creds"}}}
        build["spec"]["triggers"] = {"webhook": {"secretRef": {"name": "hook"}},
                                     "debounce": "2s"}
        sandbox.admin.apply([build])

        def built(commit: str) -> Callable[[dict[str, Any]], bool]:
            return lambda obj: ((obj.get("status") or {}).get("phase") == "Succeeded"
                                and ((obj["status"].get("inputs") or {}).get("commit")
                                     == commit))

        sandbox.admin.wait_for(IMAGEBUILD_API, "ImageBuild", "app", namespace, built(one),
                               180, f"built {one[:12]}")
        path = sandbox.admin.wait_for(
            IMAGEBUILD_API, "ImageBuild", "app", namespace,
            lambda o: bool(((o.get("status") or {}).get("triggers") or {}).get(
                "webhookPath")), 30, "showing its webhook path")["status"]["triggers"][
            "webhookPath"]
        two = git.commit("app", {"marker.txt": "two\n"})
        payload = json.dumps({"ref": "refs/heads/main"}).encode()
        headers = {"Content-Type": "application/json", "X-GitHub-Delivery": "f-1",
                   "X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + hmac.new(
                       WEBHOOK_SECRET.encode(), payload, hashlib.sha256).hexdigest()}
        answer = httpx.post(standby.webhook + path, content=payload, headers=headers,
                            timeout=15)
        assert answer.status_code == 202, answer.text  # the leader's answer, passed back
        sandbox.admin.wait_for(IMAGEBUILD_API, "ImageBuild", "app", namespace, built(two),
                               180, f"built {two[:12]}")
        again = httpx.post(standby.webhook + path, content=payload, headers=headers,
                           timeout=15)
        assert (again.status_code, again.json()) == (200, {"status": "already received"})
        time.sleep(4)  # a doubled check would start a third build within the debounce
    pods_now = pods(sandbox, namespace, "app")
    assert len(pods_now) == 2, [p["metadata"]["name"] for p in pods_now]
    assert "Created pod" not in standby.log()
    assert "Webhook delivery f-1" in leader.log()
