"""kopf wiring: which events reach the reconciler, and the operator's start-up and shutdown.

Only event handlers are registered (no kopf indexes: see ``Tracked``). kopf therefore writes
nothing of its own to the cluster: no finalizer, no progress or diff-base annotations, no
per-pod bookkeeping. All state is in ImageBuild status, written by the reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    REBUILD_ANNOTATION,
    VERSION,
    Phase,
)
from stagewright.handlers.build_queue import BuildQueue
from stagewright.handlers.kube_api import ApiError, KubeApi, load_configuration
from stagewright.handlers.metrics import Metrics
from stagewright.handlers.reconciler import Reconciler
from stagewright.queueing import Limits, Waiting
from stagewright.registry import RegistryClient, RegistryError
from stagewright.resources.kaniko_pod import LABEL_MANAGED_BY, MANAGED_BY
from stagewright.settings import Settings

_SETTLED = (Phase.SUCCEEDED.value, Phase.FAILED.value)
_log = logging.getLogger("stagewright")


class OperatorMemo(kopf.Memo):
    """kopf's memo, shared by all objects instead of copied for each one.

    kopf shallow-copies the operator's memo into a record per object it ever sees; the
    handlers only read operator-wide things from it (reconciler, indexes), so one shared
    instance saves a dict per ImageBuild and per build pod.
    """

    def __copy__(self) -> OperatorMemo:
        return self


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: our own prefix wherever kopf would write, no peering, quiet posting."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration",
    )
    settings.peering.standalone = True
    # kopf watches CRDs (RBAC: list, watch), so ImageBuilds are served even when their CRD
    # is established after the operator starts, as with `kubectl apply -k manifests/`.
    settings.scanning.disabled = False
    # The reconciler posts the Events a person needs itself (api.reasons.WARNINGS), from any
    # task, resync included. kopf's posting of log lines stays off, so a log line never costs
    # an API write and a happy build stays at three (pod, status Building, status Succeeded).
    settings.posting.loggers = False
    # Watch build pods only, selected by the API server: kopf keeps a record for every object
    # it is sent, so every other pod in the cluster would cost memory and CPU for nothing.
    settings.watching.label_selectors["", "v1", "pods"] = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    # Memory that does not grow with history. kopf starts a worker per object, which keeps the
    # object's last body until it has been idle for idle_timeout (5 s by default); at start-up
    # every existing ImageBuild and build pod arrives within seconds, so thousands of bodies
    # were alive at once, and Python kept that peak. Idle workers now exit after 0.5 s, and the
    # initial listing comes in chunks instead of one response holding every object.
    settings.queueing.idle_timeout = 0.5
    settings.watching.chunk_size = 500


@dataclass
class Tracked:
    """What the operator tracks between events: unfinished builds and running build pods.

    Kept by the event handlers, not by kopf indexes: until every index is filled kopf has each
    listed object's worker wait on one condition and wakes them all for every object indexed,
    which is quadratic in the objects at start-up (minutes for 10,000 finished builds). The
    same truth comes from one paginated list of each at start-up, before any event is handled.
    """

    #: Unfinished ImageBuilds; the value is set for those waiting for a build slot.
    unsettled: dict[tuple[str, str], Waiting | None] = field(default_factory=dict)
    #: Unfinished build pods (namespace, pod) -> their ImageBuild (namespace, name).
    running_pods: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def running_builds(self) -> list[tuple[str, str]]:
        """ImageBuilds with an unfinished build pod."""
        return list(set(self.running_pods.values()))

    def note_imagebuild(self, namespace: str, name: str, entry: dict[Any, Any]) -> None:
        """Record what ``unsettled`` says about an ImageBuild ({} when it is finished)."""
        if entry:
            self.unsettled.update(entry)
        else:
            self.unsettled.pop((namespace, name), None)

    def note_pod(self, namespace: str, name: str, entry: dict[Any, Any]) -> None:
        """Record what ``running_pods`` says about a build pod ({} when it ended)."""
        if entry:
            self.running_pods[(namespace, name)] = next(iter(entry))
        else:
            self.running_pods.pop((namespace, name), None)


async def _list_existing(api: KubeApi, settings: Settings, tracked: Tracked) -> None:
    """Fill ``tracked`` from the cluster as it is, before the first event is handled."""
    scopes = settings.namespaces or [""]
    for namespace in scopes:
        where = f"/namespaces/{namespace}" if namespace else ""
        for body in await api.list_all(f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}"):
            meta = body["metadata"]
            build = await unsettled(namespace=meta.get("namespace"), name=meta["name"],
                                    status=body.get("status") or {}, meta=meta,
                                    annotations=meta.get("annotations") or {})
            tracked.note_imagebuild(meta.get("namespace") or "", meta["name"], build)
        for pod in await api.list_all(f"/api/v1{where}/pods",
                                      f"{LABEL_MANAGED_BY}={MANAGED_BY}"):
            meta = pod["metadata"]
            running = await running_pods(namespace=meta.get("namespace"), name=meta["name"],
                                         meta=meta, status=pod.get("status") or {})
            tracked.note_pod(meta.get("namespace") or "", meta["name"], running)


@kopf.on.startup(id="start")
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Create the API client and reconciler, and start the periodic resync."""
    configure(settings)
    operator_settings: Settings = memo.get("settings") or Settings()
    metrics = Metrics()
    memo.clients = clients = contextlib.AsyncExitStack()
    api = await clients.enter_async_context(
        KubeApi(load_configuration(), observer=metrics.api_request))
    # One registry client for the operator's life: its bearer tokens are reused across builds.
    registry = await clients.enter_async_context(
        RegistryClient(timeout=operator_settings.registry_timeout_seconds,
                       observer=metrics.registry_request,
                       ca_bundle=operator_settings.ca_bundle_file,
                       allow=operator_settings.registry_allow))
    wakers: set[asyncio.Task[None]] = set()

    def wake(namespace: str, name: str) -> None:
        task = asyncio.create_task(_reconcile(memo.reconciler, namespace, name))
        wakers.add(task)
        task.add_done_callback(wakers.discard)

    memo.tracked = tracked = Tracked()
    await _list_existing(api, operator_settings, tracked)
    queue = BuildQueue(Limits(operator_settings.max_running_builds,
                              operator_settings.max_running_builds_per_namespace),
                       running_pods=tracked.running_builds, wake=wake)
    metrics.watch_queue(queue.waiting, tracked.running_builds)
    if operator_settings.metrics_port is not None:
        metrics.serve(operator_settings.metrics_port, operator_settings.metrics_address)
    memo.reconciler = Reconciler(api, registry, operator_settings, kopf_settings=settings,
                                 queue=queue, metrics=metrics)
    # After a restart, queued builds start in their old order, not in event order; builds
    # whose slots are free start now.
    queue.seed(entry for entry in tracked.unsettled.values() if entry)
    memo.resync = asyncio.create_task(_resync(memo.reconciler, tracked, operator_settings))


@kopf.on.cleanup(id="stop")
async def stop(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync and close connections."""
    task: asyncio.Task[None] | None = memo.get("resync")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    clients: contextlib.AsyncExitStack | None = memo.get("clients")
    if clients is not None:
        await clients.aclose()


def _settled(status: Mapping[str, Any], meta: Mapping[str, Any],
             annotations: Mapping[str, str]) -> bool:
    """The current generation and rebuild request finished building: nothing left to do."""
    return (status.get("phase") in _SETTLED
            and status.get("observedGeneration") == meta.get("generation")
            and status.get("rebuild") == (annotations.get(REBUILD_ANNOTATION) or None))


def _building(status: Mapping[str, Any], meta: Mapping[str, Any],
              annotations: Mapping[str, str]) -> bool:
    """The current generation and rebuild request has a pod building it."""
    return (status.get("phase") == Phase.BUILDING.value and bool(status.get("podName"))
            and status.get("observedGeneration") == meta.get("generation")
            and status.get("rebuild") == (annotations.get(REBUILD_ANNOTATION) or None))


def _queued(status: Mapping[str, Any], meta: Mapping[str, Any],
            annotations: Mapping[str, str]) -> bool:
    """The current generation and rebuild request waits in the build queue."""
    return (status.get("reason") == Reason.QUEUED.value
            and status.get("observedGeneration") == meta.get("generation")
            and status.get("rebuild") == (annotations.get(REBUILD_ANNOTATION) or None))


def _pristine(status: kopf.Status) -> bool:
    """A pod just created: no scheduler or kubelet has said anything about it yet."""
    return (status.get("phase") in (None, "Pending") and not status.get("conditions")
            and not status.get("containerStatuses"))


async def unsettled(namespace: str | None, name: str, status: Mapping[str, Any],
                    meta: Mapping[str, Any], annotations: Mapping[str, str],
                    **_: Any) -> dict[tuple[str, str], Waiting | None]:
    """ImageBuilds not finished building; the value is set for those waiting for a slot.

    A finished ImageBuild has no entry ({}), so the operator's memory does not grow with
    history.
    Async, as every handler here: kopf runs sync handlers in a thread pool, a thread hop per
    event that cost a tenth of the operator's CPU under a burst.
    """
    if _settled(status, meta, annotations):
        return {}
    waiting = status.get("reason") == Reason.QUEUED.value or not status.get("phase") or (
        status.get("observedGeneration") != meta.get("generation"))
    entry = Waiting(str(meta.get("creationTimestamp") or ""), namespace or "", name)
    return {(namespace or "", name): entry if waiting else None}


def _owner(meta: Mapping[str, Any]) -> str | None:
    return next((ref.get("name") for ref in meta.get("ownerReferences") or []
                 if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION), None)


async def running_pods(namespace: str | None, name: str, meta: Mapping[str, Any],
                       status: Mapping[str, Any], **_: Any) -> dict[tuple[str, str], str]:
    """Unfinished build pods by owner: the running builds, as the cluster says (for the queue).

    A finished pod gives an empty dict: it no longer holds a slot.
    """
    owner = _owner(meta)
    if owner is None or status.get("phase") in ("Succeeded", "Failed"):
        return {}
    return {(namespace or "", owner): name}


@kopf.on.event(GROUP, VERSION, PLURAL, id="imagebuild")
async def on_imagebuild(event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo,
                        body: kopf.Body,
                        status: kopf.Status, meta: kopf.Meta, annotations: kopf.Annotations,
                        **_: Any) -> None:
    """Any change to an ImageBuild (and each one at start-up): take the next step."""
    reconciler: Reconciler = memo.reconciler
    namespace = namespace or ""  # ImageBuilds are namespaced; kopf's type allows None
    tracked: Tracked = memo.tracked
    tracked.note_imagebuild(namespace, name, {} if event["type"] == "DELETED" else await unsettled(
        namespace=namespace, name=name, status=status, meta=meta, annotations=annotations))
    if event["type"] == "DELETED":
        reconciler.forget(namespace, name)  # its pods go with it (owner references)
        if reconciler.queue is not None:
            reconciler.queue.release(namespace, name)
        return
    if _building(status, meta, annotations):
        # Our own "Building" write: the pod's events (and the resync) carry it on from here.
        return
    queue = reconciler.queue
    if _queued(status, meta, annotations) and queue is not None and queue.holds(namespace, name):
        return  # our own "Queued" write: the queue wakes it when a slot frees
    if _settled(status, meta, annotations):
        # Finished: no read, no lock, no state. Thousands of finished builds cost nothing
        # at start-up; a new generation or rebuild request arrives as another event.
        return
    await _reconcile(reconciler, namespace, name, body=dict(body))


@kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED_BY: MANAGED_BY}, id="build-pod")
async def on_build_pod(event: kopf.RawEvent, namespace: str | None, meta: kopf.Meta,
                       status: kopf.Status, memo: kopf.Memo, body: kopf.Body,
                       **_: Any) -> None:
    """A build pod changed: free its slot once it ended, and re-check its ImageBuild."""
    owner = _owner(meta)
    if not owner or not namespace:
        return
    reconciler: Reconciler = memo.reconciler
    tracked: Tracked = memo.tracked
    tracked.note_pod(namespace, str(meta.get("name")), {} if event["type"] == "DELETED" else
                     await running_pods(namespace=namespace, name=str(meta.get("name")),
                                        meta=meta, status=status))
    ended = event["type"] == "DELETED" or status.get("phase") in ("Succeeded", "Failed")
    if ended and reconciler.queue is not None:
        reconciler.queue.release(namespace, owner)
    if _pristine(status):
        return  # the reconcile that created it recorded it; nothing new to read
    if (namespace, owner) in tracked.unsettled:  # a finished build's old pod needs nothing
        pod = None if event["type"] == "DELETED" else dict(body)
        await _reconcile(reconciler, namespace, owner, pod=pod)


async def _reconcile(reconciler: Reconciler, namespace: str, name: str, *,
                     body: dict[str, Any] | None = None,
                     pod: dict[str, Any] | None = None) -> None:
    """Reconcile, turning failures into a log line: the resync retries unsettled builds."""
    try:
        await reconciler.reconcile(namespace, name, body=body, pod=pod)
    except (ApiError, RegistryError) as exc:
        log = _log.warning if exc.temporary else _log.error
        log(f"Reconciling {namespace}/{name} failed, will retry: {exc}")


async def _resync(reconciler: Reconciler, tracked: Tracked, settings: Settings) -> None:
    """Re-check unfinished builds periodically: level-based recovery from anything missed."""
    while True:
        await asyncio.sleep(settings.resync_seconds)
        for namespace, name in list(tracked.unsettled):
            if reconciler.seconds_since_reconciled(namespace, name) < settings.resync_seconds:
                continue  # an event just brought it up to date
            if reconciler.queue is not None and reconciler.queue.waits(namespace, name):
                continue  # in line: nothing to check until the queue wakes it
            try:
                await _reconcile(reconciler, namespace, name)
            except Exception:  # one broken object must not end the resync of all others
                _log.exception(f"Resync of {namespace}/{name} failed")
