"""Benchmark: start-up with a backlog, failover and handover of the leader Lease, and the burst
with leader election on; Stagewright against the naive kopf operator in the same run.

The same harness as benchmarks/burst.py (benchmarks/README.md): a real kube-apiserver + etcd
with RBAC (``hack/sandbox/controlplane.py``), a real TLS registry, and the KWOK-style stand-in
kubelet (benchmarks/instant_kubelet.py) that finishes each build pod the moment it appears, so
only the operators are timed. Scenarios (``--scenario``, repeatable):

- ``backlog``: N pending ImageBuilds exist before the operator starts (a restart, an upgrade,
  a GitOps repo synced at once). From the moment its process is started: the first pod, the
  first build finished, all N finished, for the naive operator, one Stagewright replica, and a
  Stagewright standby that takes over the Lease (the harness holds the Lease while the
  ImageBuilds are created, then releases it): from the moment it leads to its first pod.
- ``failover``: two Stagewright replicas with leader election (defaults 15/10/2 s); kill -9
  the leader at a random point of its renew cycle, create an ImageBuild at once, time the
  kill -> the standby leads -> the build's pod exists; restart the killed one as the new
  standby; ``--kills`` times. p50, p95, max.
- ``handover``: the same with SIGTERM (the leader gives its Lease up), ``--handovers`` times.
- ``burst``: N ImageBuilds at once (burst.py's burst) under Stagewright without election and
  under a leader with a standby beside it, in the same run: throughput and memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks.burst import (
    IMAGEBUILDS,
    BaselineProcess,
    Costs,
    Harness,
    StagewrightProcess,
    Watched,
    _create_all,
    burst,
    cpu_seconds,
    create_namespace,
    empty_namespace,
    imagebuild,
    push_image,
    rss_kib,
    watch_namespace,
)
from benchmarks.instant_kubelet import InstantKubelet
from benchmarks.kube import Kube
from sandbox.cluster import Cluster, install_stagewright
from sandbox.controlplane import OPERATOR_NAMESPACE, ControlPlane
from sandbox.processes import free_port
from sandbox.registry import LocalRegistry

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _spread(values: list[float]) -> dict[str, float]:
    """p50, p95 and max (nearest rank) of a list of seconds."""
    if not values:
        return {}
    return {"n": len(values), "p50": round(statistics.median(values), 2),
            "p95": round(_quantile(values, 0.95), 2), "max": round(max(values), 2),
            "min": round(min(values), 2)}


def election_env(lease: str, *, name: str) -> dict[str, str]:
    """A replica with leader election on (the defaults' timing) and a readiness endpoint."""
    return {"STAGEWRIGHT_LEADER_ELECTION": "true", "STAGEWRIGHT_LEASE_NAME": lease,
            "STAGEWRIGHT_LEASE_NAMESPACE": OPERATOR_NAMESPACE, "POD_NAME": name,
            "STAGEWRIGHT_READINESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/readyz"}


def role(env: dict[str, str]) -> str:
    """What a replica's /readyz says ("" while it does not answer 200)."""
    try:
        answer = httpx.get(env["STAGEWRIGHT_READINESS_ENDPOINT"], timeout=1)
    except httpx.HTTPError:
        return ""
    return answer.text.strip() if answer.status_code == 200 else ""


async def poll(check: Callable[[], Awaitable[bool]], what: str, limit: float = 60,
               every: float = 0.02) -> None:
    """Until ``check()`` holds; TimeoutError naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {limit} s")
        await asyncio.sleep(every)


async def wait_role(env: dict[str, str], wanted: str) -> None:
    """Until a replica's /readyz says ``wanted``."""
    async def check() -> bool:
        return await asyncio.to_thread(role, env) == wanted
    await poll(check, f"a replica answering {wanted}", every=0.1)


async def lease(kube: Kube, name: str) -> dict[str, Any] | None:
    """The Lease, or None."""
    async with kube.session.get(f"{kube.base}{LEASES}/{name}") as response:
        if response.status == 404:
            return None
        response.raise_for_status()
        found: dict[str, Any] = await response.json()
        return found


def holder(found: dict[str, Any] | None) -> str:
    """Who holds a Lease ("" for nobody)."""
    return str(((found or {}).get("spec") or {}).get("holderIdentity") or "")


# backlog: start-up with pending ImageBuilds.

class _HeldLease:
    """The harness holds a Lease (renewing it) so a standby waits; ``release`` frees it."""

    def __init__(self, kube: Kube, name: str) -> None:
        self.kube = kube
        self.name = name
        self._task: asyncio.Task[None] | None = None

    async def _write(self, holder_identity: str | None) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        current = await lease(self.kube, self.name)
        spec = {"holderIdentity": holder_identity, "leaseDurationSeconds": 15,
                "renewTime": now, "acquireTime": now}
        if current is None:
            await self.kube.request("POST", LEASES, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name}, "spec": spec})
        else:
            current["spec"] = spec
            await self.kube.request("PUT", f"{LEASES}/{self.name}", current)

    async def hold(self) -> None:
        """Take it now and renew it every 2 s until released."""
        await self._write("bench-harness")

        async def renew() -> None:
            while True:
                await asyncio.sleep(2)
                await self._write("bench-harness")

        self._task = asyncio.create_task(renew())

    async def release(self) -> None:
        """Stop renewing and leave it without a holder."""
        if self._task is not None:
            self._task.cancel()
        await self._write(None)


async def backlog(harness: Harness, which: str, namespace: str, count: int,
                  before: Path | None = None) -> dict[str, Any]:
    """``count`` pending ImageBuilds, then the operator ``which`` starts (or takes over):
    ``baseline``, ``single``, ``standby``, or ``before`` (one replica of the operator's code
    in ``before``, another checkout: the same run's "before" figures)."""
    async with AsyncExitStack() as stack:
        kube = await stack.enter_async_context(Kube(harness.control_plane,
                                                    harness.control_plane.admin))
        seen, kubelet, tasks = await watch_namespace(kube, harness, namespace)
        operator, env, held = await _backlog_operator(harness, kube, which, namespace, before)
        result: dict[str, Any] = {"operator": which, "pending": count}
        if held is not None:  # the standby starts first and waits
            await asyncio.to_thread(operator.start)
            await wait_role(env, "standby")
        created = time.monotonic()
        await _create_all(kube, harness, namespace, count, seen)
        result["harness_created_all_seconds"] = round(time.monotonic() - created, 2)
        await asyncio.sleep(1)
        if held is None:
            started = time.monotonic()
            await asyncio.to_thread(operator.start)
            result["live_seconds"] = round(time.monotonic() - started, 2)
        else:
            await held.release()
            released = time.monotonic()

            async def taken() -> bool:
                return holder(await lease(kube, held.name)) not in ("", "bench-harness")
            await poll(taken, "the standby leading")
            started = time.monotonic()  # it leads from here
            result["released_to_leading_seconds"] = round(started - released, 2)
        stack.callback(operator.stop)
        costs = Costs(harness, operator)

        async def drained() -> bool:
            return len(seen.finished) >= count
        await poll(drained, "the backlog drained", limit=300, every=0.05)
        result.update(_backlog_figures(seen, kubelet, started, operator.pid))
        result["server_cpu_seconds"] = costs.since()["server_cpu_seconds"]
        if isinstance(operator, StagewrightProcess):
            result["listed"] = _listed(operator.process.log())
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(operator.stop)
        await empty_namespace(kube, namespace)
    return result


async def _backlog_operator(
        harness: Harness, kube: Kube, which: str, namespace: str, before: Path | None,
) -> tuple[BaselineProcess | StagewrightProcess, dict[str, str], _HeldLease | None]:
    """The operator under test, its extra env, and the Lease the harness holds (standby)."""
    if which == "baseline":
        return BaselineProcess(harness, namespace), {}, None
    env: dict[str, str] = {}
    held = None
    if which == "standby":
        env = election_env(f"backlog-{namespace}", name="standby")
        held = _HeldLease(kube, env["STAGEWRIGHT_LEASE_NAME"])
        await held.hold()
    elif which == "before" and before is not None:
        env = {"PYTHONPATH": os.pathsep.join(
            [str(before / "operator"), *os.environ.get("PYTHONPATH", "").split(os.pathsep)])}
    return StagewrightProcess(harness, namespace, env=env,
                              log_name=f"backlog-{which}.log"), env, held


def _backlog_figures(seen: Watched, kubelet: InstantKubelet, started: float,
                     pid: int) -> dict[str, Any]:
    """Times from ``started``: the first pod, the first build finished, all finished."""
    nan = float("nan")
    return {
        "first_pod_seconds": round(min(kubelet.times.seen.values(), default=nan) - started, 2),
        "first_finished_seconds": round(min(seen.finished.values(), default=nan) - started, 2),
        "drained_seconds": round(max(seen.finished.values(), default=nan) - started, 2),
        "finished": len(seen.finished),
        "imagebuilds_with_more_than_one_pod": sum(
            1 for pods in kubelet.times.pods_per_owner.values() if len(pods) > 1),
        "peak_rss_mib": round(rss_kib(pid, "VmHWM") / 1024, 1),
        # Start-up included: what the process used from its start to the drain.
        "operator_cpu_seconds": round(cpu_seconds(pid), 2),
    }


def _listed(log: str) -> list[str]:
    """The operator's own start-up lines (what it listed, and how long that took)."""
    return re.findall(r"(Listed .*|Acting .*)", log)[-4:]


def run_backlogs(harness: Harness, count: int, repeat: int, before: Path | None = None,
                 only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Baseline, one Stagewright replica, a Stagewright standby (and with ``before``, one
    replica of that checkout's code): ``repeat`` rounds."""
    rounds = []
    operators = only or ("baseline", "single", "standby", *(("before",) if before else ()))
    for index in range(repeat):
        found = {which: asyncio.run(backlog(harness, which, f"bl-{which}-{index}", count,
                                            before))
                 for which in operators}
        base = found.get("baseline")
        for which in ("single", "before"):
            if which in found and base is not None:
                found[f"ratio_{which}_to_baseline"] = {
                    key: round(found[which][key] / base[key], 3)
                    for key in ("first_pod_seconds", "first_finished_seconds",
                                "drained_seconds", "peak_rss_mib")}
        rounds.append(found)
    return {"rounds": rounds}


# failover and handover.

class Pair:
    """Two Stagewright replicas with leader election on the same Lease."""

    def __init__(self, harness: Harness, lease_name: str) -> None:
        self.lease_name = lease_name
        self.envs = [election_env(lease_name, name=f"replica-{index}") for index in range(2)]
        self.replicas = [StagewrightProcess(harness, "", env=env,
                                            log_name=f"{lease_name}-{index}.log")
                         for index, env in enumerate(self.envs)]

    def index_of(self, holder_identity: str) -> int:
        """Which replica an identity in the Lease names."""
        return next(i for i, env in enumerate(self.envs)
                    if holder_identity.startswith(env["POD_NAME"] + "_"))


async def _wait_pod(kubelet: InstantKubelet, owner: str) -> float:
    async def created() -> bool:
        return owner in kubelet.times.seen
    await poll(created, f"a pod for {owner}", limit=120, every=0.01)
    return kubelet.times.seen[owner]


async def failovers(harness: Harness, kills: int, handovers: int,
                    retry_period: float = 2.0) -> dict[str, Any]:
    """kill -9 (and SIGTERM) the leader; time kill -> leading -> the next build's pod."""
    namespace = "bench-failover"
    pair = Pair(harness, "failover")
    results: dict[str, Any] = {"kill": [], "term": []}
    async with AsyncExitStack() as stack:
        kube = await stack.enter_async_context(Kube(harness.control_plane,
                                                    harness.control_plane.admin))
        await create_namespace(kube, namespace)
        kubelet = InstantKubelet(kube, namespace, harness.digest)
        watch = asyncio.create_task(kubelet.run(
            await kube.list_version(f"/api/v1/namespaces/{namespace}/pods")))
        for replica in pair.replicas:
            await asyncio.to_thread(replica.start)
            stack.callback(replica.stop)
        rounds = [("kill", i) for i in range(kills)] + [("term", i) for i in range(handovers)]
        for how, index in rounds:
            results[how].append(await _one_failover(kube, pair, kubelet, namespace, how, index,
                                                    retry_period))
        watch.cancel()
    summary: dict[str, Any] = {}
    for how in ("kill", "term"):
        runs = results[how]
        summary[how] = {
            "runs": len(runs),
            "kill_to_leading_seconds": _spread([r["to_leading"] for r in runs]),
            "kill_to_pod_seconds": _spread([r["to_pod"] for r in runs]),
            "leading_to_pod_seconds": _spread([r["to_pod"] - r["to_leading"] for r in runs]),
            "offset_in_renew_cycle_seconds": _spread([r["offset"] for r in runs]),
            "each": runs,
        }
    return summary


async def _one_failover(kube: Kube, pair: Pair, kubelet: InstantKubelet, namespace: str,
                        how: str, index: int, retry_period: float) -> dict[str, Any]:
    # Both up: one leads, the other stands by.
    current = ""
    deadline = time.monotonic() + 60
    while True:
        current = holder(await lease(kube, pair.lease_name))
        if current:
            leader = pair.index_of(current)
            other = 1 - leader
            if await asyncio.to_thread(role, pair.envs[other]) == "standby":
                break
        if time.monotonic() > deadline:
            raise TimeoutError("no leader with a ready standby")
        await asyncio.sleep(0.1)
    # A renew just happened (the Lease changed): wait a random part of the renew cycle.
    version = (await lease(kube, pair.lease_name) or {})["metadata"]["resourceVersion"]

    async def renewed_since() -> bool:
        found = await lease(kube, pair.lease_name) or {}
        return bool(found["metadata"]["resourceVersion"] != version)
    await poll(renewed_since, "a renew", limit=20)
    renewed = time.monotonic()
    offset = random.uniform(0, retry_period)
    await asyncio.sleep(max(0.0, renewed + offset - time.monotonic()))
    victim = pair.replicas[leader]
    stopped = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL if how == "kill" else signal.SIGTERM)
    owner = f"{how}-{index:03d}"
    await kube.request("POST", IMAGEBUILDS.format(ns=namespace),
                       imagebuild(owner, namespace, kube_registry(pair)))
    pod_task = asyncio.create_task(_wait_pod(kubelet, owner))

    async def taken_over() -> bool:
        current = holder(await lease(kube, pair.lease_name))
        return bool(current) and pair.index_of(current) == other
    await poll(taken_over, "the standby leading", limit=60)
    leading = time.monotonic()
    pod = await pod_task
    await asyncio.to_thread(victim.stop, how == "kill")  # reap it (SIGTERM: its own exit)
    await asyncio.to_thread(victim.start)  # the new standby
    return {"offset": round(offset, 3), "to_leading": round(leading - stopped, 3),
            "to_pod": round(pod - stopped, 3)}


_REGISTRY_HOST: dict[str, str] = {}


def kube_registry(_pair: Pair) -> str:
    """The registry the failover builds name (set once the harness is up)."""
    return _REGISTRY_HOST["host"]


# burst with election on.

class LeaderWithStandby:
    """A leader (started first, so it takes the Lease) and a standby beside it."""

    def __init__(self, harness: Harness, namespace: str) -> None:
        self.leader_env = election_env(f"burst-{namespace}", name="leader")
        self.standby_env = election_env(f"burst-{namespace}", name="standby")
        self.namespace = namespace
        self.leader = StagewrightProcess(harness, namespace, env=self.leader_env,
                                         log_name="burst-leader.log")
        self.standby = StagewrightProcess(harness, namespace, env=self.standby_env,
                                          log_name="burst-standby.log")

    def start(self) -> None:
        """Leader first, then the standby."""
        self.leader.start()
        deadline = time.monotonic() + 30
        while role(self.leader_env) != "leader":
            if time.monotonic() > deadline:
                raise TimeoutError("the first replica did not lead")
            time.sleep(0.1)
        self.standby.start()

    def stop(self, kill: bool = False) -> None:
        """Both."""
        self.standby.stop(kill)
        self.leader.stop(kill)

    @property
    def pid(self) -> int:
        """The leader's (memory and CPU are read from it)."""
        return self.leader.pid


def run_election_bursts(harness: Harness, count: int, repeat: int) -> dict[str, Any]:
    """Stagewright without election, then a leader with a standby: ``repeat`` rounds."""
    rounds = []
    for index in range(repeat):
        plain = asyncio.run(burst(harness, StagewrightProcess(harness, f"eb-plain-{index}"),
                                  f"eb-plain-{index}", count))
        pair = LeaderWithStandby(harness, f"eb-elected-{index}")
        elected = asyncio.run(burst(harness, pair, f"eb-elected-{index}",  # type: ignore[arg-type]
                                    count))
        rounds.append({"election_off": plain, "election_on_with_standby": elected,
                       "ratio_on_to_off": {key: round(elected[key] / plain[key], 3) for key in (
                           "wall_seconds", "after_last_create_seconds", "peak_rss_mib",
                           "operator_cpu_seconds", "writes_per_build")}})
    return {"rounds": rounds}


def main() -> None:
    """Start the shared parts once, run the chosen scenarios, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append",
                        choices=["backlog", "failover", "burst"])
    parser.add_argument("--builds", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--handovers", type=int, default=10)
    parser.add_argument("--operator", action="append", default=[],
                        choices=["baseline", "single", "standby", "before"],
                        help="backlog: only these (default: all)")
    parser.add_argument("--before", type=Path,
                        help="backlog: also run one replica of this checkout's operator code")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stagewright-availability-") as tmp, \
            ExitStack() as stack:
        work_dir = Path(tmp)
        (work_dir / "control-plane").mkdir()
        control_plane = stack.enter_context(ControlPlane(work_dir / "control-plane"))
        install_stagewright(Cluster(control_plane.admin.kubeconfig))
        registry = stack.enter_context(LocalRegistry(tls=True))
        _REGISTRY_HOST["host"] = registry.host
        harness = Harness(control_plane, registry, push_image(registry), work_dir)
        for scenario in args.scenario or ["backlog"]:
            if scenario == "backlog":
                result: Any = run_backlogs(harness, args.builds, args.repeat, args.before,
                                           tuple(args.operator))
            elif scenario == "failover":
                result = asyncio.run(failovers(harness, args.kills, args.handovers))
            else:
                result = run_election_bursts(harness, args.builds, args.repeat)
            print(json.dumps({scenario: result}, indent=2), flush=True)
        if os.environ.get("BENCH_KEEP_LOGS"):
            for log in work_dir.glob("*.log"):
                (Path(os.environ["BENCH_KEEP_LOGS"]) / log.name).write_text(log.read_text())


if __name__ == "__main__":
    main()
