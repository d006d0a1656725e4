"""MEASURING STICK for benchmarks/burst.py, not a product: the least work the contract allows.

What any operator honouring the ImageBuild contract must do per build, and nothing else:

1. see the new ImageBuild (its own list + watch of ImageBuilds in one namespace);
2. create one build pod for it (name, controller owner reference, labels, one container with
   the fields the stand-in kubelet, benchmarks/instant_kubelet.py, reads) and then patch
   status ``Building`` (writes 1 and 2);
3. see the pod ``Succeeded`` (its own list + watch of pods in the namespace, by label), take
   the digest from the termination message, GET that manifest by digest from the registry
   once (the digest is checked at the registry: the body must hash to it; the size is
   config + layers from the manifest) and patch status ``Succeeded`` with digest, size and
   image (write 3).

No validation of the spec, no logging, no events, no work queue, no retries, no resync, no
metrics, no build-log read, no config blob. Each event becomes a task at once; how many
requests are in flight is bounded only by the HTTP connection pools (``--connections``
each, one pool for the API server and one for the registry; further requests wait for a
connection in aiohttp's queue).

Options for attribution only:
- ``--workers N`` lets at most N steps (a step: create pod + patch Building, or manifest
  GET + patch Succeeded) run at a time, as a pool of N workers would;
- ``--read-log`` adds the one request per build Stagewright makes beyond the contract
  (``pods/log``, for its cache report), ``before`` the Succeeded write (where Stagewright
  makes it) or ``after``;
- ``--objects stagewright`` writes Stagewright's own build pod and status patches
  (benchmarks/floor_objects.py) instead of the minimal ones, to measure what the size of
  Stagewright's objects costs.

The single ordering rule kept is the one correctness needs: ``Succeeded`` is written after
``Building`` returned, so a slow ``Building`` patch can never overwrite it.

It reads the API server's URL, CA file and bearer token from the environment (FLOOR_API,
FLOOR_CA, FLOOR_TOKEN), so it runs as whichever identity the harness hands it; burst.py hands
it the operator's own RBAC identity, as Stagewright gets. It touches ``--ready-file`` once
both lists are read and both watches are open.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from benchmarks.floor_objects import StagewrightObjects

GROUP_VERSION = "stagewright.dev/v1alpha1"
LABEL = "floor.stagewright.dev/imagebuild"
MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class FloorOperator:
    """One namespace, two watches, three writes per build."""

    def __init__(self, api: aiohttp.ClientSession, registry: aiohttp.ClientSession,
                 base: str, namespace: str, workers: int = 0, read_log: str = "",
                 objects: StagewrightObjects | None = None) -> None:
        self.api = api
        self.registry = registry
        self.builds = f"{base}/apis/{GROUP_VERSION}/namespaces/{namespace}/imagebuilds"
        self.pods = f"{base}/api/v1/namespaces/{namespace}/pods"
        self.namespace = namespace
        #: ImageBuild name -> spec.output.image, for the pod's success step.
        self.images: dict[str, str] = {}
        #: ImageBuild name -> its create-pod-then-Building task (Succeeded waits for it).
        self.started: dict[str, asyncio.Task[None]] = {}
        #: Pods whose success was handled (a pod can be seen Succeeded more than once).
        self.done: set[str] = set()
        self.failures = 0
        #: Attribution only: also read the build pod's log "before" or "after" writing
        #: Succeeded ("": never).
        self.read_log = read_log
        #: Attribution only: write Stagewright's pod and status instead of the minimal ones.
        self.objects = objects
        #: ``workers`` > 0: at most that many steps at a time (to mimic a worker pool).
        self._slots = asyncio.Semaphore(workers) if workers > 0 else None
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._counted(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _counted(self, work: Awaitable[None]) -> None:
        try:
            if self._slots is None:
                await work
            else:
                async with self._slots:
                    await work
        except Exception:  # a measuring stick counts failures, logs nothing
            self.failures += 1

    async def _write(self, method: str, url: str, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
        async with self.api.request(method, url, data=json.dumps(body),
                                    headers=headers or {"Content-Type": "application/json"},
                                    ) as response:
            await response.read()
            if response.status >= 400:
                raise RuntimeError(f"{method} {url}: {response.status}")

    # ImageBuild -> pod + Building.

    def on_build(self, build: dict[str, Any]) -> None:
        """A new ImageBuild (no status yet): start its build."""
        meta = build["metadata"]
        name = meta["name"]
        if (build.get("status") or {}).get("phase") or name in self.started:
            return
        self.images[name] = build["spec"]["output"]["image"]
        self.started[name] = self._spawn(self._start(name, meta["uid"], build))

    async def _start(self, name: str, uid: str, build: dict[str, Any]) -> None:
        if self.objects is not None:
            await self._write("POST", self.pods, self.objects.pod(build, f"{name}-floor", LABEL))
            await self._write("PATCH", f"{self.builds}/{name}/status",
                              self.objects.building(f"{name}-floor"), MERGE_PATCH)
            return
        spec = build["spec"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"{name}-floor", "labels": {LABEL: name},
                "ownerReferences": [{"apiVersion": GROUP_VERSION, "kind": "ImageBuild",
                                     "name": name, "uid": uid, "controller": True,
                                     "blockOwnerDeletion": True}]},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "containers": [{
                         "name": "kaniko", "image": "kaniko:bench",
                         "args": [f"--context={spec['source'].get('url', '')}",
                                  f"--destination={spec['output']['image']}:latest",
                                  "--digest-file=/dev/termination-log"]}]},
        }
        await self._write("POST", self.pods, pod)
        await self._write("PATCH", f"{self.builds}/{name}/status",
                          {"status": {"phase": "Building", "podName": f"{name}-floor"}},
                          MERGE_PATCH)

    # Pod Succeeded -> manifest GET -> Succeeded.

    def on_pod(self, pod: dict[str, Any]) -> None:
        """A pod changed: act once when it has succeeded."""
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        if status.get("phase") != "Succeeded" or name in self.done:
            return
        self.done.add(name)
        build = pod["metadata"]["labels"][LABEL]
        digest = status["containerStatuses"][0]["state"]["terminated"]["message"].strip()
        self._spawn(self._finish(build, digest, name))

    async def _finish(self, build: str, digest: str, pod: str) -> None:
        image = self.images[build]
        registry, repository = image.split("/", 1)
        async with self.registry.get(
                f"https://{registry}/v2/{repository}/manifests/{digest}",
                headers={"Accept": MANIFEST_TYPES}) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"manifest {digest}: {response.status}")
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise RuntimeError(f"the registry served another manifest for {digest}")
        manifest = json.loads(body)
        size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
        if self.read_log == "before":  # where Stagewright reads it, for its cache report
            await self._read_log(pod)
        started = self.started.get(build)
        if started is not None:
            await started  # never overwrite Succeeded with a late Building
        status = {"status": {"phase": "Succeeded", "digest": digest, "size": size,
                             "image": f"{image}@{digest}"}}
        if self.objects is not None:
            status = self.objects.succeeded(image, digest, manifest, size)
        await self._write("PATCH", f"{self.builds}/{build}/status", status, MERGE_PATCH)
        self.images.pop(build, None)
        self.started.pop(build, None)
        if self.read_log == "after":
            await self._read_log(pod)

    async def _read_log(self, pod: str) -> None:
        async with self.api.get(f"{self.pods}/{pod}/log",
                                params={"container": "kaniko",
                                        "limitBytes": str(2**20)}) as response:
            await response.read()

    # List + watch.

    async def list_then_watch(self, url: str, params: dict[str, str],
                              handle: Callable[[dict[str, Any]], None],
                              listed: asyncio.Event) -> None:
        """Handle every listed object, then every watch event, reconnecting where it ended."""
        async with self.api.get(url, params=params) as response:
            if response.status >= 400:
                raise RuntimeError(f"list {url}: {response.status}")
            items = await response.json()
        for item in items.get("items") or []:
            handle(item)
        version = str(items["metadata"]["resourceVersion"])
        first = True
        while True:
            async for event in self._watch(url, {**params, "resourceVersion": version},
                                           listed if first else None):
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    handle(event["object"])
            first = False

    async def _watch(self, url: str, params: dict[str, str],
                     opened: asyncio.Event | None) -> AsyncIterator[dict[str, Any]]:
        query = {**params, "watch": "1", "timeoutSeconds": "3600",
                 "allowWatchBookmarks": "true"}
        async with self.api.get(url, params=query,
                                timeout=aiohttp.ClientTimeout(total=None)) as response:
            if response.status >= 400:
                raise RuntimeError(f"watch {url}: {response.status}")
            if opened is not None:
                opened.set()
            async for line in response.content:
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {url}: {event['object']}")
                    yield event


async def run(namespace: str, connections: int, workers: int, read_log: str,
              ready_file: Path, objects: str = "minimal") -> int:
    """Serve until SIGTERM/SIGINT; return the number of failed steps."""
    trust = ssl.create_default_context(cafile=os.environ["FLOOR_CA"])
    api = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=trust, limit=connections),
        headers={"Authorization": f"Bearer {os.environ['FLOOR_TOKEN']}"}, read_bufsize=2**20)
    # The ImageBuilds say insecure: true (the benchmark registry's certificate is self-signed).
    registry = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False, limit=connections))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with api, registry:
        stagewright_objects = None
        if objects == "stagewright":  # Stagewright's modules, imported only to be measured
            from benchmarks.floor_objects import StagewrightObjects  # noqa: PLC0415
            stagewright_objects = StagewrightObjects()
        operator = FloorOperator(api, registry, os.environ["FLOOR_API"].rstrip("/"), namespace,
                                 workers, read_log, stagewright_objects)
        builds_open, pods_open = asyncio.Event(), asyncio.Event()
        watches = [
            asyncio.create_task(operator.list_then_watch(
                operator.builds, {}, operator.on_build, builds_open)),
            asyncio.create_task(operator.list_then_watch(
                operator.pods, {"labelSelector": LABEL}, operator.on_pod, pods_open)),
        ]
        async def both_open() -> None:
            await builds_open.wait()
            await pods_open.wait()

        opened = asyncio.create_task(both_open())
        await asyncio.wait([opened, *watches], return_when=asyncio.FIRST_COMPLETED)
        for task in watches:
            if task.done():
                task.result()  # a watch that ended before it opened: fail loudly
        await asyncio.to_thread(ready_file.touch)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *watches], return_when=asyncio.FIRST_COMPLETED)
        for task in watches:
            task.cancel()
        if operator.failures:
            print(f"floor operator: {operator.failures} failed steps", file=sys.stderr)
        return operator.failures


def main() -> None:
    """``python -m benchmarks.floor_operator --namespace NS --ready-file PATH``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=100,
                        help="connections per pool (100: aiohttp's default)")
    parser.add_argument("--workers", type=int, default=0,
                        help="at most this many steps at a time; 0 (the default): unbounded")
    parser.add_argument("--read-log", choices=["before", "after"], default="",
                        help="attribution only: also GET the pod's log before (where "
                             "Stagewright does) or after writing Succeeded")
    parser.add_argument("--objects", choices=["minimal", "stagewright"], default="minimal",
                        help="attribution only: write Stagewright's own build pod and status "
                             "patches (benchmarks/floor_objects.py) instead of the minimal ones")
    args = parser.parse_args()
    failures = asyncio.run(run(args.namespace, args.connections, args.workers,
                               args.read_log, args.ready_file, args.objects))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
