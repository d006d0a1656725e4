"""Benchmark: what triggers cost at scale, beside an idle operator, in one run.

Method (benchmarks/README.md, "triggers.py"): a real kube-apiserver + etcd (RBAC on), git's
own ``http-backend`` (the sandbox's GitServer) serving ``--branches`` branches, and a real
registry serving ``--bases`` base images, both with access logs. The harness creates
``--builds`` ImageBuilds, each tracking one branch and one base image (round robin), and
writes the status an earlier operator left (Succeeded, built from the current head and
digest). Then, twice with the same objects:

1. idle: the same ImageBuilds without ``spec.triggers``; ``stagewright run`` starts, settles,
   and its CPU and memory are read over ``--intervals`` poll intervals;
2. triggers: with ``spec.triggers`` (source and baseImages, every ``--interval``); the same
   window, plus the git server's and the registry's own logs (requests by the operator's user
   agent) and the API writes the apiserver counted.

Then one commit is pushed to one branch: exactly that branch's ImageBuilds must get a build
(a pod), the others none. No node runs: the pods stay Pending, which is all that is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.burst import (
    IMAGEBUILDS,
    Harness,
    StagewrightProcess,
    _counter_diff,
    apiserver_counters,
    cpu_seconds,
    push_image,
    rss_kib,
    settle,
)
from benchmarks.kube import Kube
from sandbox.cluster import Cluster, install_stagewright
from sandbox.controlplane import ControlPlane
from sandbox.gitserver import GitServer
from sandbox.registry import LocalRegistry

NAMESPACE = "bench-triggers"
GIT_USER = ("bench", "bench-token")
REPOSITORIES = 4
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def make_sources(git: GitServer, branches: int) -> list[tuple[str, str, str]]:
    """``branches`` branches over a few repositories: (url, branch, head commit) each."""
    sources = []
    for index in range(branches):
        repository = f"app{index % REPOSITORIES}"
        branch = f"b{index}"
        if not (git.root / f"{repository}.git").exists():
            git.create_repository(repository, {"Dockerfile": "FROM scratch\n"}, branch=branch)
            head = git.head(repository, branch)
        else:
            head = git.commit(repository, {"branch.txt": branch}, branch=branch)
        sources.append((f"{git.url}/{repository}.git", branch, head))
    return sources


def make_bases(registry: LocalRegistry, count: int) -> list[tuple[str, str]]:
    """``count`` base images (one small image each): (reference, digest)."""
    bases = []
    for index in range(count):
        digest = push_image(registry, repository=f"bases/b{index}")
        bases.append((f"{registry.host}/bases/b{index}:latest", digest))
    return bases


def imagebuild(index: int, source: tuple[str, str, str], base: tuple[str, str],
               registry: LocalRegistry, interval: str, triggers: bool) -> dict[str, Any]:
    url, branch, _ = source
    spec: dict[str, Any] = {
        "source": {"git": {"url": url, "revision": branch, "secretRef": {"name": "git"}}},
        "buildArgs": {"BASE": base[0]},
        "cache": {"enabled": False},
        "output": {"image": f"{registry.host}/bench/app{index}", "insecure": True}}
    if triggers:
        spec["triggers"] = {"source": {"pollInterval": interval},
                            "baseImages": {"pollInterval": interval}}
    return {"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": f"t{index:05d}", "namespace": NAMESPACE}, "spec": spec}


async def seed(kube: Kube, count: int, sources: list[tuple[str, str, str]],
               bases: list[tuple[str, str]], registry: LocalRegistry, interval: str,
               triggers: bool) -> None:
    """The ImageBuilds, each with the status of a build of the current head and base."""
    slots = asyncio.Semaphore(32)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    async def one(index: int) -> None:
        source, base = sources[index % len(sources)], bases[index % len(bases)]
        body = imagebuild(index, source, base, registry, interval, triggers)
        async with slots:
            await kube.request("POST", IMAGEBUILDS.format(ns=NAMESPACE), body)
            await kube.request(
                "PATCH", IMAGEBUILDS.format(ns=NAMESPACE) + f"/{body['metadata']['name']}/status",
                {"status": {"phase": "Succeeded", "reason": "Succeeded", "observedGeneration": 1,
                            "startTime": now, "completionTime": now,
                            "causes": [{"type": "Spec", "new": "1"}],
                            "inputs": {"commit": source[2], "ref": f"refs/heads/{source[1]}",
                                       "baseImages": [{"image": base[0],
                                                       "digest": base[1]}]}}},
                content_type="application/merge-patch+json")

    await asyncio.gather(*(one(i) for i in range(count)))


async def clear(kube: Kube) -> None:
    await kube.request("DELETE", IMAGEBUILDS.format(ns=NAMESPACE))
    for _ in range(600):  # the API server deletes them in the background
        if not await kube.count(IMAGEBUILDS.format(ns=NAMESPACE)):
            return
        await asyncio.sleep(0.5)
    raise TimeoutError("the idle run's ImageBuilds were not deleted")


def git_lookups(git: GitServer) -> int:
    log = (git.root / "server.log").read_text(errors="replace")
    return len(re.findall(r'"GET /\S+/info/refs\?service=git-upload-pack HTTP/[\d.]+" \d+ \S+ '
                          r'"git/stagewright"', log))


def registry_lookups(registry: LocalRegistry) -> dict[str, int]:
    log = registry.access_log_path.read_text(errors="replace")
    found = re.findall(r'"(\w+) /v2/bases/\S+/manifests/\S+ HTTP/[\d.]+" \d+ \d+ "[^"]*" '
                       r'"stagewright"', log)
    return {method: found.count(method) for method in sorted(set(found))}


def writes(diff: dict[str, dict[str, float]]) -> dict[str, float]:
    """The write requests in an apiserver counter diff (verb resource -> count)."""
    return {key: figures.get("requests", 0.0) for key, figures in diff.items()
            if key.split(" ", 1)[0] in WRITES and figures.get("requests")}


async def window(harness: Harness, git: GitServer, registry: LocalRegistry,
                 operator: StagewrightProcess, seconds: float) -> dict[str, Any]:
    """One measured window of a settled operator: its CPU, memory, look-ups and writes."""
    async with Kube(harness.control_plane, harness.control_plane.admin) as kube:
        await settle(operator.pid, quiet_seconds=3.0, give_up_after=300)
        counters = await apiserver_counters(kube)
        git_before, registry_before = git_lookups(git), registry_lookups(registry)
        cpu_before, started = cpu_seconds(operator.pid), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(operator.pid) - cpu_before
        after = registry_lookups(registry)
        return {
            "seconds": round(elapsed, 1),
            "cpu_seconds": round(cpu, 3),
            "cpu_share_of_a_core": round(cpu / elapsed, 4),
            "rss_mib": round(rss_kib(operator.pid) / 1024, 1),
            "git_lookups": git_lookups(git) - git_before,
            "registry_requests": {m: after.get(m, 0) - registry_before.get(m, 0) for m in after},
            "api_writes": writes(_counter_diff(counters, await apiserver_counters(kube))),
        }


async def change_one_branch(harness: Harness, git: GitServer,
                            sources: list[tuple[str, str, str]], count: int,
                            wait_seconds: float) -> dict[str, Any]:
    """Push to the first branch: which ImageBuilds got a build pod within the wait."""
    url, branch, _ = sources[0]
    repository = url.rsplit("/", 1)[1].removesuffix(".git")
    git.commit(repository, {"pushed.txt": str(time.time())}, branch=branch)
    expected = {f"t{i:05d}" for i in range(count) if i % len(sources) == 0}
    async with Kube(harness.control_plane, harness.control_plane.admin) as kube:
        deadline = time.monotonic() + wait_seconds
        built: set[str] = set()
        while time.monotonic() < deadline:
            pods = (await kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods"))["items"]
            built = {p["metadata"]["labels"]["stagewright.dev/imagebuild"] for p in pods}
            if built >= expected:
                break
            await asyncio.sleep(1)
        await asyncio.sleep(5)  # anything else that would start, starts meanwhile
        pods = (await kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods"))["items"]
    built = {p["metadata"]["labels"]["stagewright.dev/imagebuild"] for p in pods}
    return {"expected": len(expected), "built": len(built & expected),
            "built_elsewhere": len(built - expected), "pods": len(pods)}


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    interval = float(args.interval.rstrip("s"))
    measured = interval * args.intervals
    with ExitStack() as stack:
        (work_dir / "control-plane").mkdir()
        control_plane = stack.enter_context(ControlPlane(work_dir / "control-plane"))
        admin = Cluster(control_plane.admin.kubeconfig)
        install_stagewright(admin)
        registry = stack.enter_context(LocalRegistry(access_log=True))
        (work_dir / "git").mkdir()
        git = stack.enter_context(GitServer(work_dir / "git", address="127.0.0.1",
                                            user=GIT_USER[0], password=GIT_USER[1]))
        harness = Harness(control_plane, registry, push_image(registry), work_dir)
        sources = make_sources(git, args.branches)
        bases = make_bases(registry, args.bases)
        admin.apply([{"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": NAMESPACE}},
                     {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
                      "metadata": {"name": "git", "namespace": NAMESPACE},
                      "stringData": {"username": GIT_USER[0], "password": GIT_USER[1]}}])
        env = {"STAGEWRIGHT_TRIGGER_MIN_POLL_INTERVAL": "1s",
               "STAGEWRIGHT_TRIGGER_REGISTRY_BUDGET": "6000"}
        for label, triggers in (("idle", False), ("triggers", True)):
            asyncio.run(_seeded(harness, args.builds, sources, bases, registry, args.interval,
                                triggers))
            operator = StagewrightProcess(harness, "", env=env, log_name=f"{label}.log")
            operator.start()
            try:
                results[label] = asyncio.run(window(harness, git, registry, operator, measured))
                if triggers:
                    results["one_push"] = asyncio.run(change_one_branch(
                        harness, git, sources, args.builds, wait_seconds=3 * interval + 60))
            finally:
                operator.stop()
            if not triggers:
                asyncio.run(_cleared(harness))
        idle, busy = results["idle"], results["triggers"]
        results["per_interval"] = {
            "git_lookups": round(busy["git_lookups"] / args.intervals, 2),
            "registry_heads": round(busy["registry_requests"].get("HEAD", 0) / args.intervals, 2),
            "imagebuilds": args.builds, "branches": args.branches, "bases": args.bases}
        lookups = busy["git_lookups"] + sum(busy["registry_requests"].values())
        # An idle operator uses next to no CPU, so a ratio to it says little: the figures are
        # the difference in a core's share, and the CPU per look-up.
        results["triggers_beside_idle"] = {
            "cpu_share_of_a_core_added": round(busy["cpu_share_of_a_core"]
                                               - idle["cpu_share_of_a_core"], 4),
            "cpu_ms_per_lookup": round(1000 * (busy["cpu_seconds"] - idle["cpu_seconds"])
                                       / max(lookups, 1), 2),
            "rss_ratio": round(busy["rss_mib"] / idle["rss_mib"], 3)}
    return results


async def _seeded(harness: Harness, count: int, sources: list[tuple[str, str, str]],
                  bases: list[tuple[str, str]], registry: LocalRegistry, interval: str,
                  triggers: bool) -> None:
    async with Kube(harness.control_plane, harness.control_plane.admin) as kube:
        await seed(kube, count, sources, bases, registry, interval, triggers)


async def _cleared(harness: Harness) -> None:
    async with Kube(harness.control_plane, harness.control_plane.admin) as kube:
        await clear(kube)


def main() -> None:
    """Run and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=1000)
    parser.add_argument("--branches", type=int, default=20)
    parser.add_argument("--bases", type=int, default=10)
    parser.add_argument("--interval", default="10s", help="every trigger's pollInterval")
    parser.add_argument("--intervals", type=int, default=6, help="intervals measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stagewright-triggers-") as tmp:
        results = run(args, Path(tmp))
        if os.environ.get("BENCH_KEEP_LOGS"):
            for log in Path(tmp).glob("*.log"):
                (Path(os.environ["BENCH_KEEP_LOGS"]) / log.name).write_text(log.read_text())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
