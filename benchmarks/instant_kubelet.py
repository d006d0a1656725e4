"""A KWOK-style stand-in kubelet for scale benchmarks ONLY: it finishes every pod instantly.

It runs nothing. The moment a pod appears in the watched namespace it writes the status a
kubelet writes for a build container that exited 0 with Kaniko's digest as its termination
message, so the benchmark times the operator, not builds. The cluster tier and the demo use
real nodes; this never belongs there (STYLE.md, item 14).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks.kube import Kube


@dataclass
class PodTimes:
    """When each build pod was first seen and finished, keyed by its owner's name."""

    seen: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    #: Pods seen per owner: more than one for a generation is a duplicated build.
    pods_per_owner: dict[str, set[str]] = field(default_factory=dict)
    #: Pods created and not yet finished, sampled to check a concurrency limit.
    unfinished: set[str] = field(default_factory=set)
    max_unfinished: int = 0
    modified_events: int = 0
    standin_writes: int = 0


class InstantKubelet:
    """Watches pods in ``namespace`` and marks each one Succeeded with ``digest`` at once."""

    def __init__(self, kube: Kube, namespace: str, digest: str, concurrency: int = 16,
                 hold_seconds: float = 0.0) -> None:
        self.kube = kube
        #: How long a pod "runs" before it finishes; 0 for instant (the throughput burst).
        self.hold_seconds = hold_seconds
        self.namespace = namespace
        self.digest = digest
        self.times = PodTimes()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, resource_version: str) -> None:
        """Serve pods until cancelled."""
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        async for event in self.kube.watch(path, resource_version):
            pod = event["object"]
            name = pod["metadata"]["name"]
            if event["type"] == "MODIFIED":
                self.times.modified_events += 1
            if event["type"] == "DELETED":
                self.times.unfinished.discard(name)
                continue
            finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            if finished or event["type"] != "ADDED":
                continue
            owner = _owner(pod)
            self.times.seen.setdefault(owner, time.monotonic())
            self.times.pods_per_owner.setdefault(owner, set()).add(name)
            self.times.unfinished.add(name)
            self.times.max_unfinished = max(self.times.max_unfinished,
                                            len(self.times.unfinished))
            task = asyncio.create_task(self._finish(pod, owner))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, pod: dict[str, Any], owner: str) -> None:
        if self.hold_seconds:
            await asyncio.sleep(self.hold_seconds)
        async with self._slots:
            name = pod["metadata"]["name"]
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            statuses = [{
                "name": container["name"], "image": container.get("image", ""),
                "imageID": container.get("image", ""), "ready": False, "started": False,
                "restartCount": 0, "containerID": f"instant://{pod['metadata']['uid']}",
                "state": {"terminated": {
                    "exitCode": 0, "reason": "Completed", "message": self.digest,
                    "startedAt": now, "finishedAt": now}},
            } for container in pod["spec"]["containers"]]
            patch = {"status": {"phase": "Succeeded", "startTime": now,
                                "containerStatuses": statuses}}
            await self.kube.request(
                "PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}/status", patch,
                content_type="application/merge-patch+json")
            self.times.standin_writes += 1
            self.times.done.setdefault(owner, time.monotonic())
            self.times.unfinished.discard(name)


def _owner(pod: dict[str, Any]) -> str:
    refs = pod["metadata"].get("ownerReferences") or []
    return str(refs[0]["name"]) if refs else pod["metadata"]["name"]

