"""Benchmark: a burst of ImageBuilds, Stagewright against a naive kopf operator, in one run.

Method (benchmarks/README.md): a real kube-apiserver + etcd (RBAC on), a real TLS registry
holding the image whose digest the stand-in kubelet reports, and a KWOK-style stand-in
kubelet (benchmarks/instant_kubelet.py) that finishes every pod the moment it appears, so only
the operators are timed. Each operator runs as its own process in its own namespace: first
the baseline (benchmarks/naive_operator_baseline.py), then ``stagewright run`` with the
operator's RBAC identity. The harness creates N ImageBuilds back to back and watches pods and
ImageBuilds to time create -> pod and pod done -> status for each, counts every write, and
reads the operator's peak RSS (VmHWM). ``--floor`` adds a third operator to the burst,
benchmarks/floor_operator.py: the least work the contract allows, a measuring stick.
``--clients`` also compares HTTP clients under the same burst of concurrent API calls;
``--scenario queue|restart|memory`` run the other measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.clients import compare
from benchmarks.instant_kubelet import InstantKubelet
from benchmarks.kube import Kube
from sandbox.cluster import Cluster, OperatorProcess, install_stagewright
from sandbox.controlplane import ControlPlane
from sandbox.processes import free_port, stop_group
from sandbox.registry import LocalRegistry

HERE = Path(__file__).resolve().parent
IMAGEBUILDS = "/apis/stagewright.dev/v1alpha1/namespaces/{ns}/imagebuilds"
REPOSITORY = "bench/app"
SETTLED = ("Succeeded", "Failed")


@dataclass
class Harness:
    """The shared parts of one benchmark run."""

    control_plane: ControlPlane
    registry: LocalRegistry
    digest: str
    work_dir: Path


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """A memory figure of a process from /proc (VmRSS now, VmHWM the peak), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for pid {pid}")


def push_image(registry: LocalRegistry, repository: str = REPOSITORY) -> str:
    """Push a one-layer image to the registry; its manifest digest is what builds report."""
    verify = registry.ssl_context() if registry.tls else True
    with httpx.Client(base_url=registry.url, verify=verify, trust_env=False) as client:
        def blob(data: bytes) -> dict[str, Any]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            start = client.post(f"/v2/{repository}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["location"]  # keeps its own query (upload state)
            separator = "&" if "?" in location else "?"
            client.put(f"{location}{separator}digest={digest}", content=data).raise_for_status()
            return {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": digest, "size": len(data)}
        layer = blob(os.urandom(4096))
        config = blob(json.dumps({"architecture": "amd64", "os": "linux",
                                  "rootfs": {"type": "layers", "diff_ids": []}}).encode())
        config["mediaType"] = "application/vnd.docker.container.image.v1+json"
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config, "layers": [layer]}).encode()
        client.put(f"/v2/{repository}/manifests/latest", content=manifest, headers={
            "Content-Type": "application/vnd.docker.distribution.manifest.v2+json",
        }).raise_for_status()
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def imagebuild(name: str, namespace: str, registry: str) -> dict[str, Any]:
    """A build whose context is remote, so no ConfigMap or Secret look-ups are involved."""
    return {"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"url": "s3://bench-contexts/app.tar.gz"},
                     "cache": {"enabled": False},
                     "output": {"image": f"{registry}/{REPOSITORY}", "insecure": True}}}


# Operators under test: each is started by PID and stopped by PID.

class _ChildOperator:
    """An operator the harness runs as a child process of its own (its session's leader)."""

    def __init__(self, harness: Harness, namespace: str) -> None:
        self.harness = harness
        self.namespace = namespace
        self._process: subprocess.Popen[bytes] | None = None

    def stop(self, kill: bool = False) -> None:
        """Stop by PID."""
        if self._process is not None:
            stop_group(self._process, kill=kill, timeout=15)

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self._process is not None
        return self._process.pid


class BaselineProcess(_ChildOperator):
    """The naive kopf operator, with kopf's own defaults, as a process."""

    def start(self) -> None:
        """Start it and wait for kopf's liveness endpoint."""
        health = f"http://127.0.0.1:{free_port()}/healthz"
        log = (self.harness.work_dir / "baseline.log").open("ab")
        env = {**os.environ, "KUBECONFIG": str(self.harness.control_plane.admin.kubeconfig)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "-n", self.namespace,
             "--liveness", health, str(HERE / "naive_operator_baseline.py")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_live(health, self._process)



def _wait_live(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the baseline operator exited; see baseline.log")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the baseline operator was not live")


class StagewrightProcess:
    """``stagewright run`` (sandbox OperatorProcess) in one namespace with its RBAC identity."""

    def __init__(self, harness: Harness, namespace: str, env: dict[str, str] | None = None,
                 log_name: str = "stagewright.log") -> None:
        # Cluster-wide, as the chart installs it: with STAGEWRIGHT_NAMESPACES kopf would first
        # try to list namespaces, which the operator's RBAC does not allow (a 50 s back-off).
        # The harness deletes the baseline's ImageBuilds before Stagewright starts.
        self.namespace = namespace
        profile = os.environ.get("BENCH_CPROFILE")
        launcher = ("-m", "benchmarks.cpu_profile", profile) if profile else (
            "-m", "stagewright.cli")
        self.process = OperatorProcess(harness.control_plane, harness.work_dir / log_name, env={
            "STAGEWRIGHT_RESYNC_SECONDS": "30", **(env or {})}, launcher=launcher)

    def start(self) -> None:
        """Start and wait until live."""
        self.process.start()

    def stop(self, kill: bool = False) -> None:
        """Stop by PID (SIGKILL when ``kill``)."""
        self.process.stop(kill=kill)

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.process.pid is not None
        return self.process.pid


class FloorProcess(_ChildOperator):
    """The measuring stick (benchmarks/floor_operator.py) with the operator's RBAC identity."""

    def __init__(self, harness: Harness, namespace: str, connections: int = 100,
                 workers: int = 0, read_log: str = "", objects: str = "minimal") -> None:
        super().__init__(harness, namespace)
        self.read_log = read_log
        self.objects = objects
        self.connections = connections
        self.workers = workers

    def start(self) -> None:
        """Start it and wait until both its lists are read and both watches open."""
        ready = self.harness.work_dir / f"floor-{self.namespace}.ready"
        ready.unlink(missing_ok=True)
        control_plane = self.harness.control_plane
        log = (self.harness.work_dir / "floor.log").open("ab")
        env = {**os.environ, "FLOOR_API": control_plane.url,
               "FLOOR_CA": str(control_plane.pki / "ca.crt"),
               "FLOOR_TOKEN": control_plane.operator.token}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.floor_operator", "--namespace", self.namespace,
             "--ready-file", str(ready), "--connections", str(self.connections),
             "--workers", str(self.workers), "--objects", self.objects,
             *(["--read-log", self.read_log] if self.read_log else [])],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self._process.poll() is not None:
                raise RuntimeError("the floor operator exited; see floor.log")
            if time.monotonic() > deadline:
                raise TimeoutError("the floor operator did not open its watches")
            time.sleep(0.1)



Operator = BaselineProcess | StagewrightProcess | FloorProcess


# Measuring one burst.

@dataclass
class Watched:
    """What the harness saw of ImageBuilds."""

    created: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    reasons_seen: dict[str, set[str]] = field(default_factory=dict)
    modified: int = 0


async def _watch_imagebuilds(kube: Kube, namespace: str, version: str, seen: Watched) -> None:
    async for event in kube.watch(IMAGEBUILDS.format(ns=namespace), version):
        obj = event["object"]
        name = obj["metadata"]["name"]
        if event["type"] == "MODIFIED":
            seen.modified += 1
        status = obj.get("status") or {}
        if status.get("reason"):
            seen.reasons_seen.setdefault(name, set()).add(status["reason"])
        phase = status.get("phase")
        if phase in SETTLED and name not in seen.finished:
            seen.finished[name] = time.monotonic()
            seen.phases[name] = phase


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


async def _create_all(kube: Kube, harness: Harness, namespace: str, count: int,
                      seen: Watched, parallel: int = 8) -> None:
    """Create the ImageBuilds back to back (a few requests in flight, as kubectl apply -f)."""
    slots = asyncio.Semaphore(parallel)

    async def create(index: int) -> None:
        name = f"b{index:05d}"
        async with slots:
            await kube.request("POST", IMAGEBUILDS.format(ns=namespace),
                               imagebuild(name, namespace, harness.registry.host))
            seen.created[name] = time.monotonic()

    await asyncio.gather(*(create(i) for i in range(count)))


async def create_namespace(kube: Kube, name: str) -> None:
    """A namespace of one measurement's own."""
    await kube.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def watch_namespace(kube: Kube, harness: Harness, namespace: str, *,
                          hold_seconds: float = 0.0,
                          ) -> tuple[Watched, InstantKubelet, list[asyncio.Task[None]]]:
    """A new namespace, its ImageBuilds watched (what the harness saw) and its pods run by
    the stand-in kubelet; the two watch tasks are the caller's to check and cancel."""
    await create_namespace(kube, namespace)
    seen = Watched()
    kubelet = InstantKubelet(kube, namespace, harness.digest, hold_seconds=hold_seconds)
    tasks = [
        asyncio.create_task(_watch_imagebuilds(
            kube, namespace, await kube.list_version(IMAGEBUILDS.format(ns=namespace)), seen)),
        asyncio.create_task(kubelet.run(
            await kube.list_version(f"/api/v1/namespaces/{namespace}/pods"))),
    ]
    return seen, kubelet, tasks


async def empty_namespace(kube: Kube, namespace: str) -> None:
    """Delete a measurement's ImageBuilds and pods: none for the next operator to adopt, and
    none for the next measurement's apiserver to carry (no garbage collector runs here)."""
    for collection in (IMAGEBUILDS.format(ns=namespace), f"/api/v1/namespaces/{namespace}/pods"):
        async with kube.session.delete(kube.base + collection) as gone:
            gone.raise_for_status()


async def burst(harness: Harness, operator: Operator, namespace: str, count: int, *,
                hold_seconds: float = 0.0, give_up_after: float = 900,
                during: Callable[[Kube, Watched, InstantKubelet], Awaitable[None]] | None = None,
                ) -> dict[str, Any]:
    """Create ``count`` ImageBuilds at once under ``operator`` and measure until all finished."""
    async with AsyncExitStack() as stack:
        kube = await stack.enter_async_context(Kube(harness.control_plane,
                                                    harness.control_plane.admin))
        seen, kubelet, tasks = await watch_namespace(kube, harness, namespace,
                                                     hold_seconds=hold_seconds)
        await asyncio.to_thread(operator.start)
        stack.callback(operator.stop)  # also when the run fails or is interrupted
        await asyncio.sleep(1)
        profiler = _profile(operator)
        costs = Costs(harness, operator)
        requests_before = await apiserver_counters(kube)
        started = time.monotonic()
        sampler = Sampler(operator, seen, kubelet)
        sampling = asyncio.create_task(sampler.run())
        await _create_all(kube, harness, namespace, count, seen)
        if during is not None:
            await during(kube, seen, kubelet)
        deadline = time.monotonic() + give_up_after
        while len(seen.finished) < count and time.monotonic() < deadline:
            for task in tasks:
                if task.done():
                    task.result()
            await asyncio.sleep(0.1)
        peak_kib = rss_kib(operator.pid, "VmHWM")
        used = costs.since()
        sampling.cancel()
        requests = _counter_diff(requests_before, await apiserver_counters(kube))
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
            await asyncio.to_thread(profiler.wait, 30)
        await asyncio.sleep(2)  # late writes still count
        events = await kube.count(f"/api/v1/namespaces/{namespace}/events")
        pods = await kube.count(f"/api/v1/namespaces/{namespace}/pods")
        for task in tasks:
            task.cancel()
        await asyncio.to_thread(operator.stop)
        await empty_namespace(kube, namespace)
    _last_reasons.clear()
    _last_reasons.update(seen.reasons_seen)
    summary = _summary(seen, kubelet, count, started, pods=pods, events=events,
                       peak_kib=peak_kib)
    summary.update(used)
    # Everything the API server served meanwhile (the harness's and stand-in's share is the
    # same under every operator): requests, their server-side seconds, watch events and bytes.
    summary["apiserver_during_burst"] = requests
    summary["operator_busiest_second_cpu_share"] = sampler.busiest_second()
    summary["backlog_peaks"] = sampler.peaks
    return summary


_COUNTERS = {
    "apiserver_request_total": "requests",
    "apiserver_request_duration_seconds_sum": "seconds",
    "apiserver_response_sizes_sum": "response_bytes",
    "apiserver_watch_events_total": "watch_events",
    "apiserver_watch_events_sizes_sum": "watch_event_bytes",
}


async def apiserver_counters(kube: Kube) -> dict[str, dict[str, float]]:
    """The API server's own counters (/metrics), by verb and resource[/subresource]."""
    async with kube.session.get(kube.base + "/metrics") as response:
        response.raise_for_status()
        text = await response.text()
    counters: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        figure = _COUNTERS.get(name)
        if figure is None or "}" not in rest:
            continue
        labels_text, _, value = rest.rpartition("} ")
        labels = dict(part.split("=", 1) for part in labels_text.split('",') if "=" in part)
        labels = {k: v.strip('"') for k, v in labels.items()}
        if figure.startswith("watch"):
            key = f"WATCH-EVENTS {labels.get('kind', '')}"
        else:
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            key = f"{labels.get('verb', '')} {resource}"
        bucket = counters.setdefault(key, {})
        bucket[figure] = bucket.get(figure, 0.0) + float(value)
    return counters


def _counter_diff(before: dict[str, dict[str, float]],
                  after: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    diff = {}
    for key, figures in after.items():
        changed = {name: round(value - before.get(key, {}).get(name, 0.0), 3)
                   for name, value in figures.items()}
        if any(changed.values()):
            diff[key] = changed
    return dict(sorted(diff.items()))


class Costs:
    """What a burst cost, from construction to ``since()``: CPU of each process, load."""

    def __init__(self, harness: Harness, operator: Operator) -> None:
        self.harness = harness
        self.operator = operator
        self.pid = pid = operator.pid
        self.cpu = cpu_seconds(pid)
        self.wait = runqueue_wait_seconds(pid)
        self.servers = _server_cpu(harness)
        self.own = time.process_time()
        self.load = os.getloadavg()

    def since(self) -> dict[str, Any]:
        """The figures since construction."""
        servers = {name: round(used - self.servers.get(name, 0.0), 2)
                   for name, used in _server_cpu(self.harness).items()}
        servers["harness_and_standin_kubelet"] = round(time.process_time() - self.own, 2)
        # Restarted (the restart scenario): the first process's CPU went with it.
        restarted = self.operator.pid != self.pid
        return {
            # CPU the operator used for the burst: unlike wall time, not inflated by other load.
            "operator_cpu_seconds": None if restarted else round(
                cpu_seconds(self.pid) - self.cpu, 2),
            # Seconds its threads were runnable but waited for a core (schedstat): how much
            # the rest of the machine held it back.
            "operator_runqueue_wait_seconds": None if restarted else round(
                runqueue_wait_seconds(self.pid) - self.wait, 2),
            **({"operator_restarted": True} if restarted else {}),
            "server_cpu_seconds": servers,
            "load_average_before_after": [[round(x, 2) for x in self.load],
                                          [round(x, 2) for x in os.getloadavg()]],
        }


def runqueue_wait_seconds(pid: int) -> float:
    """Time all threads of ``pid`` spent runnable but not running (/proc/PID/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def _server_cpu(harness: Harness) -> dict[str, float]:
    """CPU seconds used so far by this run's kube-apiserver, etcd and registry."""
    pids: dict[str, int] = {}
    marker = str(harness.control_plane.work_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not command or marker.encode() not in b" ".join(command):
            continue
        name = Path(command[0].decode(errors="replace")).name
        if name in ("kube-apiserver", "etcd"):
            pids[name] = int(entry.name)
    if harness.registry.pid is not None:
        pids["registry"] = harness.registry.pid
    used = {}
    for name, pid in pids.items():
        try:
            used[name] = cpu_seconds(pid)
        except OSError:
            continue
    return used


class Sampler:
    """Every 0.25 s: the operator's CPU, and how many builds wait on the operator."""

    def __init__(self, operator: Operator, seen: Watched, kubelet: InstantKubelet) -> None:
        self.operator = operator
        self.seen = seen
        self.kubelet = kubelet
        #: (time, pid, CPU seconds): a restarted operator starts a new series.
        self.cpu: list[tuple[float, int, float]] = []
        #: The most ImageBuilds created without a pod yet, and pods done without status yet.
        self.peaks = {"created_without_pod": 0, "pod_done_without_status": 0}

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            pid = self.operator.pid
            with contextlib.suppress(FileNotFoundError):  # killed and not yet restarted
                self.cpu.append((time.monotonic(), pid, cpu_seconds(pid)))
            times = self.kubelet.times
            waiting_pod = len(self.seen.created) - len(times.seen)
            waiting_status = len(times.done) - len(self.seen.finished)
            self.peaks["created_without_pod"] = max(self.peaks["created_without_pod"],
                                                    waiting_pod)
            self.peaks["pod_done_without_status"] = max(self.peaks["pod_done_without_status"],
                                                        waiting_status)
            await asyncio.sleep(0.25)

    def busiest_second(self) -> float:
        """The highest share of one core the operator used over any 1 s of the burst."""
        best = 0.0
        for i, (t0, pid0, c0) in enumerate(self.cpu):
            for t1, pid1, c1 in self.cpu[i + 1:]:
                if pid1 == pid0 and t1 - t0 >= 1.0:
                    best = max(best, (c1 - c0) / (t1 - t0))
                    break
        return round(best, 2)


def _profile(operator: Operator) -> subprocess.Popen[bytes] | None:
    """With BENCH_PYSPY=FILE, sample Stagewright with py-spy during the burst (raw stacks)."""
    target = os.environ.get("BENCH_PYSPY")
    if not target or not isinstance(operator, StagewrightProcess):
        return None
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(operator.pid),
         "--format", "raw", "--rate", "100", "--output", target, "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _summary(seen: Watched, kubelet: InstantKubelet, count: int, started: float, *,
             pods: int, events: int, peak_kib: int) -> dict[str, Any]:
    times = kubelet.times
    to_pod = [times.seen[n] - seen.created[n] for n in seen.created if n in times.seen]
    to_status = [seen.finished[n] - times.done[n] for n in seen.finished if n in times.done]
    last_create = max(seen.created.values())
    last_finish = max(seen.finished.values()) if seen.finished else float("nan")
    pod_writes = times.modified_events - times.standin_writes
    writes = seen.modified + pods + events + max(pod_writes, 0)
    (pod50, pod99), (st50, st99) = _quantiles(to_pod), _quantiles(to_status)
    duplicated = sum(1 for names in times.pods_per_owner.values() if len(names) > 1)
    return {
        "builds": count, "finished": len(seen.finished),
        "succeeded": sum(1 for p in seen.phases.values() if p == "Succeeded"),
        "wall_seconds": round(last_finish - started, 2),
        "after_last_create_seconds": round(last_finish - last_create, 2),
        "create_to_pod_p50_p99": [round(pod50, 3), round(pod99, 3)],
        "done_to_status_p50_p99": [round(st50, 3), round(st99, 3)],
        "writes_per_build": round(writes / count, 2),
        "writes": {"imagebuild_status_or_meta": seen.modified, "pods_created": pods,
                   "events": events, "pod_patches_by_operator": max(pod_writes, 0)},
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "max_unfinished_pods": times.max_unfinished,
        "imagebuilds_with_more_than_one_pod": duplicated,
    }


# Entry points.

def _ratios(one: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    """``one``'s figures over ``other``'s, from the same run."""
    return {
        "wall_time": round(one["wall_seconds"] / other["wall_seconds"], 3),
        "after_last_create": round(one["after_last_create_seconds"]
                                   / other["after_last_create_seconds"], 3),
        "create_to_pod_p99": round(one["create_to_pod_p50_p99"][1]
                                   / other["create_to_pod_p50_p99"][1], 3),
        "done_to_status_p99": round(one["done_to_status_p50_p99"][1]
                                    / other["done_to_status_p50_p99"][1], 3),
        "writes_per_build": round(one["writes_per_build"] / other["writes_per_build"], 3),
        "peak_rss": round(one["peak_rss_mib"] / other["peak_rss_mib"], 3),
        "operator_cpu": round(one["operator_cpu_seconds"] / other["operator_cpu_seconds"], 3),
    }


def run_bursts(harness: Harness, count: int, repeat: int, floor: str | None = None,
               floor_connections: int = 100, floor_workers: int = 0,
               floor_variants: tuple[str, ...] = ()) -> dict[str, Any]:
    """``run_burst`` ``repeat`` times in a row; with more than one, also the median of each
    ratio and of Stagewright's own figures over the repeats, each repeat's figures kept.

    One burst on this shared machine can land in a busy minute: the medians of a few, each a
    same-run comparison, say more than any one of them.
    """
    if repeat == 1:
        return run_burst(harness, count, floor, floor_connections, floor_workers,
                         floor_variants)
    repeats = [run_burst(harness, count, floor, floor_connections, floor_workers,
                         floor_variants, suffix=f"-r{index + 1}") for index in range(repeat)]
    medians: dict[str, Any] = {}
    for group in ("ratio_stagewright_to_baseline", "ratio_floor_to_baseline",
                  "ratio_stagewright_to_floor"):
        if group in repeats[0]:
            medians[group] = {key: round(statistics.median(r[group][key] for r in repeats), 3)
                              for key in repeats[0][group]}
    for operator in ("stagewright", "floor"):
        if operator in repeats[0]:
            medians[operator] = {
                key: round(statistics.median(r[operator][key] for r in repeats), 3)
                for key in ("wall_seconds", "after_last_create_seconds", "operator_cpu_seconds")
            } | {
                f"{key}_p99": round(statistics.median(r[operator][f"{key}_p50_p99"][1]
                                                      for r in repeats), 3)
                for key in ("create_to_pod", "done_to_status")
            }
    return {"repeats": repeats, "median": medians}


def run_burst(harness: Harness, count: int, floor: str | None = None,
              floor_connections: int = 100, floor_workers: int = 0,
              floor_variants: tuple[str, ...] = (), suffix: str = "") -> dict[str, Any]:
    """Baseline, then Stagewright, on the same control plane, registry and stand-in kubelet.

    ``floor`` ("first" or "last") also runs the measuring stick (floor_operator.py) before
    the baseline or after Stagewright, so its figures come from the same run; each of
    ``floor_variants`` (``workers=N,connections=N[,log=before|after][,objects=stagewright]``)
    runs it once more, last, for attribution (``log``: with Stagewright's one extra request
    per build, pods/log, before the Succeeded write as Stagewright makes it, or after it;
    ``objects``: writing Stagewright's own build pod and status patches).
    """
    results: dict[str, Any] = {}
    floor_ns, baseline_ns, stagewright_ns = (f"bench-{name}{suffix}"
                                             for name in ("floor", "baseline", "stagewright"))
    stick = FloorProcess(harness, floor_ns, floor_connections, floor_workers)
    if floor == "first":
        results["floor"] = asyncio.run(burst(harness, stick, floor_ns, count))
    results["baseline"] = asyncio.run(burst(harness, BaselineProcess(harness, baseline_ns),
                                            baseline_ns, count))
    results["stagewright"] = asyncio.run(burst(
        harness, StagewrightProcess(harness, stagewright_ns), stagewright_ns, count))
    if floor == "last":
        results["floor"] = asyncio.run(burst(harness, stick, floor_ns, count))
    for index, variant in enumerate(floor_variants if floor else ()):
        options = dict(part.partition("=")[::2] for part in variant.split(","))
        if options.get("log") == "":  # plain "log": where Stagewright reads it
            options["log"] = "before"
        stick = FloorProcess(harness, f"bench-floor-{index}{suffix}",
                             int(options.get("connections") or floor_connections),
                             int(options.get("workers") or floor_workers),
                             read_log=options.get("log", ""),
                             objects=options.get("objects") or "minimal")
        results[f"floor[{variant}]"] = asyncio.run(burst(harness, stick,
                                                         f"bench-floor-{index}{suffix}", count))
    results["ratio_stagewright_to_baseline"] = _ratios(results["stagewright"],
                                                       results["baseline"])
    if floor:
        results["ratio_floor_to_baseline"] = _ratios(results["floor"], results["baseline"])
        results["ratio_stagewright_to_floor"] = _ratios(results["stagewright"],
                                                        results["floor"])
    return results


# Queue, restart and memory scenarios.

def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def last_busy(pid: int, watch_seconds: float, window: float = 0.5) -> float:
    """Sample CPU for ``watch_seconds``; when the last window above 2% of a core ended.

    Quiet alone is not settled: right after start the operator may wait seconds for the
    apiserver to answer a list of thousands of objects, and then get busy again.
    """
    started = time.monotonic()
    last = started
    previous = cpu_seconds(pid)
    while time.monotonic() - started < watch_seconds:
        await asyncio.sleep(window)
        now = cpu_seconds(pid)
        if now - previous > 0.02 * window:
            last = time.monotonic()
        previous = now
    return last


async def settle(pid: int, quiet_seconds: float = 2.0, give_up_after: float = 120) -> float:
    """Wait until the process used under 2% CPU for ``quiet_seconds``; return when that began."""
    deadline = time.monotonic() + give_up_after
    window: list[tuple[float, float]] = []
    while time.monotonic() < deadline:
        window.append((time.monotonic(), cpu_seconds(pid)))
        window = [w for w in window if w[0] >= window[-1][0] - quiet_seconds]
        (t0, c0), (t1, c1) = window[0], window[-1]
        if t1 - t0 >= quiet_seconds * 0.95 and c1 - c0 <= 0.02 * (t1 - t0):
            return t0
        await asyncio.sleep(0.1)
    raise TimeoutError("the operator did not settle")


def scrape(port: int) -> dict[str, float]:
    """The operator's metrics as {"name{labels}": value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    figures = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            figures[key] = float(value)
    return figures


def run_queue(harness: Harness, count: int, limit: int) -> dict[str, Any]:
    """``count`` at once under a cluster-wide limit; pods "run" 0.5 s so the limit binds."""
    port = free_port()
    operator = StagewrightProcess(harness, "bench-queue", env={
        "STAGEWRIGHT_MAX_RUNNING_BUILDS": str(limit), "STAGEWRIGHT_METRICS_PORT": str(port)},
        log_name="stagewright-queue.log")
    peaks = {"queue_depth": 0.0, "running_builds": 0.0}

    async def sample_metrics(kube: Kube, seen: Watched, kubelet: InstantKubelet) -> None:
        del kube, kubelet

        async def loop() -> None:
            while len(seen.finished) < count:
                figures = await asyncio.to_thread(scrape, port)
                for name, peak in list(peaks.items()):
                    value = figures.get(f'stagewright_{name}{{namespace="bench-queue"}}', 0.0)
                    peaks[name] = max(peak, value)
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(loop())
        _background.add(sampler)
        sampler.add_done_callback(_background.discard)

    result = asyncio.run(burst(harness, operator, "bench-queue", count, hold_seconds=0.5,
                               during=sample_metrics))
    queued = sum(1 for reasons in _last_reasons.values() if "Queued" in reasons)
    result.update({"limit": limit, "metrics_peak_queue_depth": peaks["queue_depth"],
                   "metrics_peak_running_builds": peaks["running_builds"],
                   "builds_that_were_queued": queued})
    return result


_background: set[asyncio.Task[None]] = set()
_last_reasons: dict[str, set[str]] = {}


def run_restart(harness: Harness, count: int, limit: int) -> dict[str, Any]:
    """SIGKILL the operator with ``limit`` builds running and the rest queued; restart it."""
    port = free_port()
    env = {"STAGEWRIGHT_MAX_RUNNING_BUILDS": str(limit), "STAGEWRIGHT_METRICS_PORT": str(port)}
    operator = StagewrightProcess(harness, "bench-restart", env=env,
                                  log_name="stagewright-restart.log")
    at_kill: dict[str, Any] = {}

    async def kill_mid_queue(kube: Kube, seen: Watched, kubelet: InstantKubelet) -> None:
        del kube
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill at the first moment the queue is full
            figures = await asyncio.to_thread(scrape, port)
            depth = figures.get('stagewright_queue_depth{namespace="bench-restart"}', 0.0)
            if len(kubelet.times.unfinished) >= limit and depth >= count - limit:
                break
            await asyncio.sleep(0.2)
        at_kill.update(running_pods=len(kubelet.times.unfinished), queue_depth=depth,
                       finished=len(seen.finished))
        await asyncio.to_thread(operator.stop, True)
        killed = time.monotonic()
        await asyncio.to_thread(operator.start)
        at_kill["restart_to_live_seconds"] = round(time.monotonic() - killed, 2)

    # Pods "run" 40 s: long enough that all are created, and the line full, before any ends.
    result = asyncio.run(burst(harness, operator, "bench-restart", count, hold_seconds=40,
                               during=kill_mid_queue))
    result.update({"limit": limit, "at_sigkill": at_kill})
    return result


async def _seed_finished(kube: Kube, namespace: str, count: int, digest: str,
                         registry: str) -> None:
    """``count`` ImageBuilds finished by an earlier operator, each with its last pod."""
    slots = asyncio.Semaphore(32)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    async def one(index: int) -> None:
        name = f"h{index:05d}"
        pod_name = f"{name}-1-1"
        async with slots:
            created = await kube.request("POST", IMAGEBUILDS.format(ns=namespace),
                                         imagebuild(name, namespace, registry))
            await kube.request(
                "PATCH", IMAGEBUILDS.format(ns=namespace) + f"/{name}/status",
                {"status": {"phase": "Succeeded", "reason": "Succeeded", "observedGeneration": 1,
                            "podName": pod_name, "attempt": 1, "startTime": now,
                            "completionTime": now, "digest": digest,
                            "image": f"{registry}/{REPOSITORY}@{digest}"}},
                content_type="application/merge-patch+json")
            await kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": pod_name, "labels": {
                        "app.kubernetes.io/managed-by": "stagewright",
                        "stagewright.dev/imagebuild": name},
                    "ownerReferences": [{
                        "apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
                        "name": name, "uid": created["metadata"]["uid"],
                        "controller": True}]},
                "spec": {"restartPolicy": "Never",
                         "containers": [{"name": "kaniko", "image": "kaniko:bench"}]}})
            await kube.request(
                "PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod_name}/status",
                {"status": {"phase": "Succeeded"}}, content_type="application/merge-patch+json")

    await asyncio.gather(*(one(i) for i in range(count)))


async def run_memory(harness: Harness, history: int, building: int) -> dict[str, Any]:
    """RSS: empty; ``building`` unfinished at once; ``history`` finished after a restart."""
    result: dict[str, Any] = {}
    async with Kube(harness.control_plane, harness.control_plane.admin) as kube:
        for namespace in ("bench-history", "bench-building"):
            await create_namespace(kube, namespace)
        operator = StagewrightProcess(harness, "", log_name="stagewright-memory.log")
        await asyncio.to_thread(operator.start)
        await last_busy(operator.pid, 10)
        empty_kib = rss_kib(operator.pid)
        result["rss_mib_empty_cluster"] = round(empty_kib / 1024, 1)
        await asyncio.to_thread(operator.stop)

        # Unfinished: pods that "run" for a minute, so all are building at the same time.
        seen = Watched()
        kubelet = InstantKubelet(kube, "bench-building", harness.digest, hold_seconds=60)
        watch = asyncio.create_task(kubelet.run(
            await kube.list_version("/api/v1/namespaces/bench-building/pods")))
        await asyncio.to_thread(operator.start)
        await _create_all(kube, harness, "bench-building", building, seen)
        while len(kubelet.times.seen) < building:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.2)
        await last_busy(operator.pid, 10)  # all pods exist; they "run" for 60 s
        building_kib = rss_kib(operator.pid)
        result["building_at_once"] = building
        result["rss_mib_building"] = round(building_kib / 1024, 1)
        result["kib_per_unfinished_build"] = round((building_kib - empty_kib) / building, 1)
        await asyncio.to_thread(operator.stop)
        watch.cancel()
        async with kube.session.delete(kube.base + IMAGEBUILDS.format(ns="bench-building")):
            pass

        # Finished history, then a fresh operator: settle time, memory, writes.
        started = time.monotonic()
        await _seed_finished(kube, "bench-history", history, harness.digest,
                             harness.registry.host)
        result["seed_seconds"] = round(time.monotonic() - started, 1)
        writes = {"count": 0}

        async def count_writes(path: str) -> None:
            async for event in kube.watch(path, await kube.list_version(path)):
                if event["type"] != "ADDED":
                    writes["count"] += 1

        watchers = [asyncio.create_task(count_writes(path)) for path in (
            IMAGEBUILDS.format(ns="bench-history"), "/api/v1/namespaces/bench-history/pods")]
        started = time.monotonic()
        await asyncio.to_thread(operator.start)
        # Watched for 30 s: settled is when the last busy half-second ended.
        quiet_since = await last_busy(operator.pid, 30 - (time.monotonic() - started))
        history_kib = rss_kib(operator.pid)
        events = await kube.count("/api/v1/namespaces/bench-history/events")
        await asyncio.sleep(2)
        await asyncio.to_thread(operator.stop)
        for task in watchers:
            task.cancel()
        result.update({
            "finished_history": history,
            "settled_seconds_after_start": round(quiet_since - started, 1),
            "rss_mib_history": round(history_kib / 1024, 1),
            "kib_per_finished_build_with_pod": round((history_kib - empty_kib) / history, 2),
            "writes_for_history": writes["count"] + events,
        })
    return result


async def run_clients(harness: Harness, count: int) -> list[dict[str, Any]]:
    """The HTTP client candidates, one after another, under the same burst of API calls."""
    async with Kube(harness.control_plane, harness.control_plane.admin) as kube:
        async def create_namespace(name: str) -> None:
            await kube.request("POST", "/api/v1/namespaces", {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return await compare(harness.control_plane, count, create_namespace)


def main() -> None:
    """Start the shared parts once, run the chosen scenarios, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=50, help="queue scenario's limit")
    parser.add_argument("--history", type=int, default=10000,
                        help="memory scenario's finished ImageBuilds")
    parser.add_argument("--scenario", action="append",
                        choices=["burst", "clients", "queue", "restart", "memory"])
    parser.add_argument("--repeat", type=int, default=1,
                        help="burst: run the operators' bursts this many times in a row and "
                             "report the medians too")
    parser.add_argument("--floor", nargs="?", const="last", choices=["first", "last"],
                        help="burst: also run the measuring stick (floor_operator.py), "
                             "after Stagewright (last, the default) or before the baseline")
    parser.add_argument("--floor-connections", type=int, default=100,
                        help="the floor operator's HTTP connections per pool")
    parser.add_argument("--floor-workers", type=int, default=0,
                        help="the floor operator's steps at a time (0: unbounded)")
    parser.add_argument("--floor-variant", action="append", default=[],
                        help="with --floor: run it once more, last, as "
                             "workers=N,connections=N[,log=before|after]"
                             "[,objects=stagewright] (log: also read each pod's log, before "
                             "or after writing Succeeded; objects: write Stagewright's own "
                             "pod and status)")
    args = parser.parse_args()
    scenarios = args.scenario or ["burst"]
    with tempfile.TemporaryDirectory(prefix="stagewright-burst-") as tmp, ExitStack() as stack:
        work_dir = Path(tmp)
        (work_dir / "control-plane").mkdir()
        control_plane = stack.enter_context(ControlPlane(work_dir / "control-plane"))
        install_stagewright(Cluster(control_plane.admin.kubeconfig))
        registry = stack.enter_context(LocalRegistry(tls=True))
        harness = Harness(control_plane, registry, push_image(registry), work_dir)
        results: dict[str, Any] = {}
        for scenario in scenarios:
            if scenario == "burst":
                results["burst"] = run_bursts(harness, args.builds, args.repeat, args.floor,
                                              args.floor_connections, args.floor_workers,
                                              tuple(args.floor_variant))
            elif scenario == "clients":
                results["clients"] = asyncio.run(run_clients(harness, args.builds))
            elif scenario == "queue":
                results["queue"] = run_queue(harness, args.builds, args.limit)
            elif scenario == "restart":
                results["restart"] = run_restart(harness, args.builds, args.builds // 2)
            elif scenario == "memory":
                results["memory"] = asyncio.run(run_memory(harness, args.history, args.builds))
            print(json.dumps({scenario: results.get(scenario)}, indent=2), flush=True)
        if os.environ.get("BENCH_KEEP_LOGS"):
            for log in work_dir.glob("*.log"):
                (Path(os.environ["BENCH_KEEP_LOGS"]) / log.name).write_text(log.read_text())


if __name__ == "__main__":
    main()
