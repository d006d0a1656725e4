"""Benchmark: API writes, operator memory and cache effect of the build loop, on the sandbox.

Method (see benchmarks/README.md): start the sandbox (real apiserver, registry, a real node
running real Kaniko, operator process); apply N ImageBuilds of a one-layer Dockerfile at once;
wait until all are Succeeded; count, from a watch started before the first apply, every change
to an ImageBuild, every build pod and every Kubernetes Event; read the operator's resident
memory from /proc/PID/status. Then build the demo's runtime stage twice, cold and after a
rebuild request (empty local store both times, as a fresh Kaniko pod has), and report both
durations from the ImageBuild's own start and completion times.

Every build is a real Kaniko pod on one node: each requests the operator's default 500m CPU, so
two cores run four at a time. N defaults to 8 to keep a run near a minute; the burst benchmarks
measure the operator alone at scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.demo import APP, DOCKERFILE, context_configmap, imagebuild
from sandbox.stack import IMAGEBUILD_API, Sandbox

NAMESPACE = "bench"


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tiny_build(name: str, registry: str) -> dict[str, Any]:
    """An ImageBuild whose build is one COPY onto scratch: the loop, not Kaniko, is measured."""
    return {
        "apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"source": {"configMap": {"name": "tiny"}}, "cache": {"enabled": False},
                 "output": {"image": f"{registry}/bench/{name}", "insecure": True}},
    }


def count_writes(sandbox: Sandbox, count: int) -> dict[str, Any]:
    """Apply ``count`` builds at once and count the writes the operator made for them."""
    admin = sandbox.admin
    admin.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                 {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "tiny", "namespace": NAMESPACE},
                  "data": {"Dockerfile": "FROM scratch\nCOPY Dockerfile /Dockerfile\n"}}])
    admin.wait_for_service_account(NAMESPACE)  # build pods are refused before it exists
    resource = admin.resource(IMAGEBUILD_API, "ImageBuild")
    start_version = resource.get(namespace=NAMESPACE).metadata.resourceVersion
    # Count while it happens: the API server keeps too few old events to replay 2N of them.
    modified: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        version = start_version
        while not stop.is_set():
            for event in resource.watch(namespace=NAMESPACE, resource_version=version,
                                        timeout=1):
                version = event["object"].metadata.resourceVersion
                if event["type"] == "MODIFIED":
                    modified.append(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _wait_operator_ready(sandbox)
    memory_before = rss_mib(sandbox.operator.pid or 0)
    started = time.monotonic()
    admin.apply([tiny_build(f"b{i:04d}", sandbox.registry.host) for i in range(count)])
    deadline = time.monotonic() + 60 + 3 * count
    while time.monotonic() < deadline:
        items = admin.list(IMAGEBUILD_API, "ImageBuild", NAMESPACE)
        if all((o.get("status") or {}).get("phase") in ("Succeeded", "Failed") for o in items):
            break
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    items = admin.list(IMAGEBUILD_API, "ImageBuild", NAMESPACE)
    time.sleep(2)  # the last events reach the watcher
    stop.set()
    watcher.join()
    pods = len(admin.list("v1", "Pod", NAMESPACE))
    # The operator's Events only: on the real node the scheduler and kubelet post their own.
    events = sum(1 for e in admin.list("v1", "Event", NAMESPACE)
                 if e["involvedObject"]["kind"] == "ImageBuild")
    return {
        "builds": count,
        "succeeded": sum(1 for o in items if o["status"]["phase"] == "Succeeded"),
        "imagebuild_writes": len(modified),
        "pods_created": pods,
        "events_posted": events,
        "writes_per_build": (len(modified) + pods + events) / count,
        "seconds": round(elapsed, 1),
        "operator_rss_mib_before": round(memory_before, 1),
        "operator_rss_mib_after": round(rss_mib(sandbox.operator.pid or 0), 1),
    }


def _wait_operator_ready(sandbox: Sandbox, timeout: float = 60) -> None:
    """The operator is ready once kopf ran its start-up handler (clients and resync made)."""
    deadline = time.monotonic() + timeout
    while "Activity 'start' succeeded" not in sandbox.operator.log():
        if time.monotonic() > deadline:
            raise TimeoutError("the operator did not start:\n" + sandbox.operator.log()[-2000:])
        time.sleep(0.2)
    time.sleep(2)  # let the initial listing of ImageBuilds and pods settle


def cache_effect(sandbox: Sandbox, rounds: int) -> dict[str, Any]:
    """Cold build, then ``rounds`` rebuilds of the same spec: durations from status times."""
    admin = sandbox.admin
    cm = context_configmap(NAMESPACE)
    cm["data"] = {"Dockerfile": DOCKERFILE, "app.sh": APP}
    admin.apply([cm, imagebuild("cached", "runtime", sandbox.registry.host, sandbox.base_image,
                                namespace=NAMESPACE)])
    durations = [_duration(sandbox.wait_settled("cached", NAMESPACE))]
    for round_ in range(rounds):
        done = sandbox.rebuild("cached", NAMESPACE, request=f"bench-{round_}")
        if done["status"]["phase"] != "Succeeded":
            raise RuntimeError(f"rebuild failed: {done['status'].get('message')}")
        durations.append(_duration(done))
    return {"cold_seconds": durations[0], "warm_seconds_median": statistics.median(durations[1:]),
            "warm_seconds": durations[1:]}


def _duration(obj: dict[str, Any]) -> float:
    """Build time as the operator recorded it (second resolution)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    status = obj["status"]
    start = time.mktime(time.strptime(status["startTime"], fmt))
    return time.mktime(time.strptime(status["completionTime"], fmt)) - start


def main() -> None:
    """Run both measurements and print them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=8, help="concurrent tiny builds")
    parser.add_argument("--cache-rounds", type=int, default=3, help="warm rebuilds to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stagewright-bench-") as work_dir, \
            Sandbox(Path(work_dir), operator_env={"STAGEWRIGHT_RESYNC_SECONDS": "30"}) as sandbox:
        result = {"loop": count_writes(sandbox, args.builds),
                  "cache": cache_effect(sandbox, args.cache_rounds)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
