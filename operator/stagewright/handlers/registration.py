"""kopf wiring: the operator's runtime, and the informers that bring events to the reconciler.

kopf stays the runtime: ``stagewright run`` is ``kopf.run``, and kopf gives the start-up and
clean-up handlers, the liveness probe, signal handling and logging (object-prefixed log lines).
ImageBuilds and build pods are not watched through kopf's resource handlers, though: kopf spends
a worker task, deep copies of the body (its diff-base "essence") and a handler dispatch on every
event of every object, including each of thousands of finished ImageBuilds and pods listed at
start-up, and that machinery was most of the operator's CPU under a burst and most of its
memory with a long history (benchmarks/README.md). The controller-runtime way replaces it:

- an :class:`~stagewright.handlers.informer.Informer` per kind (and per namespace with
  ``STAGEWRIGHT_NAMESPACES``) lists then watches on our own aiohttp client, keeping no object;
- each event is classified on sight (:class:`Controller`): a finished ImageBuild or an old pod
  is dropped at once; unfinished builds and running pods are noted in :class:`Tracked`;
- what needs a step goes to a keyed :class:`~stagewright.handlers.workqueue.WorkQueue`: events
  for one ImageBuild coalesce, a bounded number of workers run ``Reconciler.reconcile``, one
  per key at a time.

kopf therefore writes nothing of its own to the cluster: no finalizer, no progress or diff-base
annotations, no per-pod bookkeeping. All state is in ImageBuild status, written by the
reconciler.

With leader election (``STAGEWRIGHT_LEADER_ELECTION``; ``handlers/election.py``) the
start-up handler only creates the clients and stands for the Lease: the replica acts (an
:class:`Operator` term: tracked state, build queue, reconciler and controller, all new, from a
full list) only while it leads, and ends the term the moment it stops leading. kopf's own
peering stays off: it only pauses kopf's watchers, which serve nothing here, and judges a
peer's death by comparing clocks across nodes. Whoever needs to know who leads (the webhook
server, to forward a delivery that landed on a standby) finds ``memo.leadership``: the
:class:`~stagewright.handlers.election.Election`, or a ``Standalone`` that always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
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
from stagewright.handlers.election import (
    Election,
    Fence,
    Standalone,
    Timing,
    replica_identity,
)
from stagewright.handlers.informer import Informer
from stagewright.handlers.kube_api import ApiError, KubeApi, load_configuration
from stagewright.handlers.metrics import Metrics
from stagewright.handlers.probes import Readiness
from stagewright.handlers.reconciler import Reconciler
from stagewright.handlers.trigger_watch import TriggerWatch
from stagewright.handlers.webhook_server import WebhookServer
from stagewright.handlers.workqueue import WorkQueue
from stagewright.queueing import Limits, Waiting
from stagewright.registry import RegistryClient, RegistryError
from stagewright.resources.events import build_event
from stagewright.resources.pod_common import LABEL_MANAGED_BY, MANAGED_BY
from stagewright.settings import Settings
from stagewright.status import now_iso
from stagewright.triggers.gitrefs import GitRefs

_SETTLED = (Phase.SUCCEEDED.value, Phase.FAILED.value)
_log = logging.getLogger("stagewright")

#: The (namespace, name) of an ImageBuild: the work queue's key.
Key = tuple[str, str]


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: no peering, no scanning, no posting. kopf handles no resource, so it has
    nothing to persist (no finalizer, no progress or diff-base annotations)."""
    settings.peering.standalone = True
    # kopf serves no resource here (our informers do, and wait for the CRD themselves), so it
    # need not watch CRDs for new resources.
    settings.scanning.disabled = True
    # The reconciler posts the Events a person needs itself (api.reasons.WARNINGS). kopf's
    # posting of log lines stays off, so a log line never costs an API write and a happy
    # build stays at three (pod, status Building, status Succeeded).
    settings.posting.loggers = False


@dataclass
class Tracked:
    """What the operator keeps between events: unfinished builds and running build pods.

    Filled from the informers' first lists before any reconcile runs, so after a restart the
    build queue counts the same running builds, and keeps the same line, as before it.
    Finished ImageBuilds and ended pods have no entry: memory does not grow with history.
    """

    #: Unfinished ImageBuilds; the value is set for those waiting for a build slot.
    unsettled: dict[Key, Waiting | None] = field(default_factory=dict)
    #: Unfinished build pods (namespace, pod) -> their ImageBuild (namespace, name).
    running_pods: dict[Key, Key] = field(default_factory=dict)

    def running_builds(self) -> list[Key]:
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


@dataclass
class Trigger:
    """Why an ImageBuild is to be reconciled: the freshest body and pod its events brought.

    Both None: read the truth from the API server (a wake from the queue, the resync, or an
    event that arrived while the key was being reconciled, whose body may predate our write).
    """

    body: dict[str, Any] | None = None
    pod: dict[str, Any] | None = None


def merge(older: Trigger, newer: Trigger) -> Trigger:
    """Coalesce two triggers of one key: the latest body and the latest pod win."""
    return Trigger(body=newer.body if newer.body is not None else older.body,
                   pod=newer.pod if newer.pod is not None else older.pod)


class Controller:
    """Classifies ImageBuild and build pod events on sight and queues the ones with work."""

    def __init__(self, api: KubeApi, reconciler: Reconciler, settings: Settings,
                 tracked: Tracked) -> None:
        self.api = api
        self.reconciler = reconciler
        self.triggers = reconciler.triggers
        self.settings = settings
        self.tracked = tracked
        self.scope = settings.scope
        self.work: WorkQueue[Key, Trigger] = WorkQueue(self._process, settings.workers, merge)
        self.informers: list[Informer] = []
        for namespace, fields in self.scope.watches():
            where = f"/namespaces/{namespace}" if namespace else ""
            # What a list brings is low priority in the work queue; watch events come first.
            self.informers.append(Informer(
                api, f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}", self.imagebuild_event,
                field_selector=fields, on_relist=partial(self._imagebuilds_listed, namespace),
                kind=KIND, on_listed=partial(self.imagebuild_event, low=True)))
            self.informers.append(Informer(
                api, f"/api/v1{where}/pods", self.pod_event,
                label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}", field_selector=fields,
                on_relist=partial(self._pods_listed, namespace), kind="Pod",
                on_listed=partial(self.pod_event, low=True)))
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """List everything (ImageBuilds first, so pods find their owners tracked), then
        start the workers and the watches. An ImageBuild resource not served yet (its CRD
        is not installed) is waited for by its informer, without holding up the start."""
        started = time.monotonic()
        for informer in self.informers:
            try:
                await informer.list()
            except ApiError as exc:  # its watch loop lists again, with back-off
                _log.warning(f"Listing {informer.path} failed ({exc}); retrying.")
        _log.info(f"Listed {len(self.tracked.unsettled)} unfinished ImageBuilds and "
                  f"{len(self.tracked.running_pods)} running build pods in "
                  f"{time.monotonic() - started:.2f} s; acting.")
        queue = self.reconciler.queue
        if queue is not None:
            # After a restart, queued builds start in their old order, not in event order;
            # builds whose slots are free start now.
            queue.seed(entry for entry in self.tracked.unsettled.values() if entry)
        self.work.start()
        for informer in self.informers:
            self._spawn(informer.run())
        self._spawn(self._resync())

    async def stop(self) -> None:
        """Stop watching, resyncing and reconciling."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.work.stop()

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def enqueue(self, key: Key, trigger: Trigger | None = None, *, low: bool = False) -> None:
        """Reconcile ``key`` soon (``low``: after every watch event waiting). An event that
        arrives while the key is being reconciled may predate the reconcile's own write, so
        its body is dropped (read afresh)."""
        trigger = trigger or Trigger()
        if self.work.active(key):
            trigger.body = None
        self.work.add(key, trigger, low=low)

    async def _process(self, key: Key, trigger: Trigger) -> None:
        await _reconcile(self.reconciler, *key, body=trigger.body, pod=trigger.pod)

    # Events

    def imagebuild_event(self, kind: str, body: dict[str, Any], *, low: bool = False) -> None:
        """Any change to an ImageBuild (and each one listed, ``low``): note it, queue its next
        step."""
        meta = body["metadata"]
        namespace, name = meta.get("namespace") or "", meta["name"]
        if not self.scope.covers(namespace):
            return  # another shard's (a pattern the API server cannot select)
        queue = self.reconciler.queue
        if kind == "DELETED":
            if self.triggers is not None:
                self.triggers.forget((namespace, name))
            self.tracked.note_imagebuild(namespace, name, {})
            self.reconciler.forget(namespace, name)  # its pods go with it (owner references)
            if queue is not None:
                queue.release(namespace, name)
            return
        self.reconciler.saw(namespace, name, meta.get("resourceVersion"))
        status = body.get("status") or {}
        annotations = meta.get("annotations") or {}
        self.tracked.note_imagebuild(namespace, name, unsettled(
            namespace=namespace, name=name, status=status, meta=meta, annotations=annotations))
        if _settled(status, meta, annotations):
            # Finished: no read, no lock, no state. Thousands of finished builds cost nothing
            # at start-up; a new generation or rebuild request arrives as another event. One
            # with triggers is watched (a few hundred bytes), and queued when what its
            # triggers saw differs from what it was built from.
            if self.triggers is not None and self.triggers.track(body):
                self.enqueue((namespace, name), Trigger(body=body), low=low)
            return
        if self.triggers is not None:
            self.triggers.track(body)  # building: its changes wait for the build's end
        if _building(status, meta, annotations):
            # Our own "Building" write: the pod's events (and the resync) carry it on from here.
            return
        if _queued(status, meta, annotations) and queue is not None and queue.holds(
                namespace, name):
            return  # our own "Queued" write: the queue wakes it when a slot frees
        self.enqueue((namespace, name), Trigger(body=body), low=low)

    def pod_event(self, kind: str, pod: dict[str, Any], *, low: bool = False) -> None:
        """A build pod changed (or was listed, ``low``): free its slot once it ended, and
        queue its ImageBuild (or stop the pod if none owns it)."""
        meta = pod["metadata"]
        namespace, name = meta.get("namespace") or "", str(meta.get("name"))
        owner = _owner(meta)
        if not namespace or not self.scope.covers(namespace):
            return
        status = pod.get("status") or {}
        if not owner:
            # Every build pod is created with its owner: none left means the ImageBuild was
            # deleted with propagationPolicy Orphan, and the garbage collector won't stop it.
            if kind != "DELETED" and not meta.get("deletionTimestamp") and status.get(
                    "phase") in ("Pending", "Running"):
                self._spawn(self._stop_orphan(pod))
            return
        self.tracked.note_pod(namespace, name, {} if kind == "DELETED" else running_pods(
            namespace=namespace, name=name, meta=meta, status=status))
        ended = kind == "DELETED" or status.get("phase") in ("Succeeded", "Failed")
        if ended and self.reconciler.queue is not None:
            self.reconciler.queue.release(namespace, owner)
        if _pristine(status):
            return  # the reconcile that created it recorded it; nothing new to read
        if (namespace, owner) in self.tracked.unsettled:  # an old pod of a finished build: no
            self.enqueue((namespace, owner), Trigger(pod=None if kind == "DELETED" else pod),
                         low=low)

    def _imagebuilds_listed(self, namespace: str, seen: set[Key]) -> None:
        """After a relist (of ``namespace``, or "" for all): unfinished builds not listed
        were deleted while unwatched."""
        for key in [k for k in self.tracked.unsettled
                    if k not in seen and _listed_by(namespace, k)]:
            self.imagebuild_event("DELETED", {"metadata": {"namespace": key[0],
                                                           "name": key[1]}})

    def _pods_listed(self, namespace: str, seen: set[Key]) -> None:
        """After a relist (of ``namespace``, or "" for all): running pods not listed were
        deleted while unwatched."""
        for key in [k for k in self.tracked.running_pods
                    if k not in seen and _listed_by(namespace, k)]:
            owner = self.tracked.running_pods.pop(key)
            if self.reconciler.queue is not None:
                self.reconciler.queue.release(*owner)
            if owner in self.tracked.unsettled:
                self.enqueue(owner)

    async def _stop_orphan(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            await self.reconciler.stop_orphan(pod)
        except ApiError as exc:
            _log.warning(f"Stopping orphaned build pod {meta.get('namespace')}/"
                         f"{meta.get('name')} failed: {exc}")

    async def _resync(self) -> None:
        """Re-check unfinished builds periodically: level-based recovery from anything missed."""
        reconciler, seconds = self.reconciler, self.settings.resync_seconds
        while True:
            await asyncio.sleep(seconds)
            for namespace, name in list(self.tracked.unsettled):
                if reconciler.seconds_since_reconciled(namespace, name) < seconds:
                    continue  # an event just brought it up to date
                if reconciler.queue is not None and reconciler.queue.waits(namespace, name):
                    continue  # in line: nothing to check until the queue wakes it
                if (namespace, name) not in self.work:
                    reconciler.unwritten(namespace, name)  # the truth, as the server has it
                    self.enqueue((namespace, name), low=True)


class Operator:
    """What runs while this replica acts: a fresh term (tracked state, build queue,
    reconciler, controller) each time it starts leading, so a new leader starts from a full
    list, as a restarted operator does. The clients and metrics outlive terms."""

    def __init__(self, api: KubeApi, registry: RegistryClient, settings: Settings,
                 kopf_settings: kopf.OperatorSettings, metrics: Metrics,
                 triggers: TriggerWatch | None = None) -> None:
        self.api = api
        self.registry = registry
        self.settings = settings
        self.kopf_settings = kopf_settings
        self.metrics = metrics
        #: Polls for ImageBuilds' triggers: fed by a term's events, emptied at its end.
        self.triggers = triggers
        self.controller: Controller | None = None
        #: Set while a term's controller has listed and runs.
        self.acting = asyncio.Event()
        metrics.watch_queue(self._waiting, self._running)

    def _waiting(self) -> list[tuple[str, str]]:
        controller = self.controller
        queue = controller.reconciler.queue if controller is not None else None
        return list(queue.waiting()) if queue is not None else []

    def _running(self) -> list[tuple[str, str]]:
        controller = self.controller
        return controller.tracked.running_builds() if controller is not None else []

    def enqueue(self, key: Key) -> None:
        """Reconcile ``key`` soon, if this replica acts (a trigger's wake-up)."""
        if self.controller is not None:
            self.controller.enqueue(key)

    async def lead(self) -> None:
        """Start a term: create its state, list, then watch and reconcile."""
        settings = self.settings
        tracked = Tracked()
        holder: list[Controller] = []
        queue = BuildQueue(Limits(settings.max_running_builds,
                                  settings.max_running_builds_per_namespace),
                           running_pods=tracked.running_builds,
                           wake=lambda namespace, name: holder[0].enqueue((namespace, name)))
        reconciler = Reconciler(self.api, self.registry, settings,
                                kopf_settings=self.kopf_settings, queue=queue,
                                metrics=self.metrics, triggers=self.triggers)
        controller = Controller(self.api, reconciler, settings, tracked)
        holder.append(controller)
        self.controller = controller
        self.metrics.set_leader(True)
        try:
            await controller.start()
        except BaseException:
            await self.step_down()
            raise
        self.acting.set()

    async def step_down(self) -> None:
        """End the term: stop watching and reconciling (its writes are fenced already)."""
        self.acting.clear()
        self.metrics.set_leader(False)
        controller, self.controller = self.controller, None
        if controller is not None:
            await controller.stop()
        if self.triggers is not None:
            await self.triggers.stop()  # no polls on a standby; the next term re-tracks


def lease_namespace(settings: Settings) -> str:
    """The Lease's namespace: the setting, else the pod's own (its ServiceAccount's)."""
    if settings.lease_namespace:
        return settings.lease_namespace
    with contextlib.suppress(OSError):
        return _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    raise kopf.PermanentError("leader election needs STAGEWRIGHT_LEASE_NAMESPACE outside a pod")


#: Where a pod finds its own namespace.
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def leader_address(settings: Settings) -> str | None:
    """``POD_IP:port`` of the webhook server, where a standby forwards deliveries; None
    outside a pod or without a webhook port."""
    pod_ip, port = os.environ.get("POD_IP"), settings.webhook_port
    if not pod_ip or port is None:
        return None
    return f"[{pod_ip}]:{port}" if ":" in pod_ip else f"{pod_ip}:{port}"


def _election(api: KubeApi, fence: Fence, operator: Operator, identity: str) -> Election:
    settings = operator.settings
    namespace = lease_namespace(settings)
    election: Election

    async def started() -> None:
        _log.info(f"Leading: this replica ({identity}) holds Lease {namespace}/"
                  f"{settings.lease_name} and starts acting.")
        await _post_leader_event(api, election)
        await operator.lead()

    def changed(before: str, after: str) -> None:
        _log.info(f"Lease {namespace}/{settings.lease_name}: {after} leads now"
                  f"{f' (was {before})' if before else ''}.")

    election = Election(
        api, fence, namespace=namespace, name=settings.lease_name, identity=identity,
        timing=Timing(settings.lease_duration_seconds, settings.renew_deadline_seconds,
                      settings.retry_period_seconds),
        address=leader_address(settings), on_started=started, on_stopped=operator.step_down,
        on_leader_changed=changed)
    return election


async def _post_leader_event(api: KubeApi, election: Election) -> None:
    """A Normal Event on the Lease, as client-go's elector posts: who leads from now on."""
    meta = dict((election.lease() or {}).get("metadata") or {})
    meta.setdefault("name", election.name)
    meta.setdefault("namespace", election.namespace)
    event = build_event(meta, reason="LeaderElection", event_type="Normal", now=now_iso(),
                        message=f"{election.identity} became leader",
                        api_version="coordination.k8s.io/v1", kind="Lease")
    try:
        await api.create_event(event)
    except ApiError as exc:
        _log.warning(f"Could not post the LeaderElection Event: {exc}")


@kopf.on.startup(id="start")
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Create the clients; then act at once, or stand for leadership and act once leading."""
    configure(settings)
    operator_settings: Settings = memo.get("settings") or Settings()
    identity: str = memo.get("identity") or replica_identity()
    metrics = Metrics()
    fence = Fence() if operator_settings.leader_election else None
    memo.clients = clients = contextlib.AsyncExitStack()
    api = await clients.enter_async_context(
        KubeApi(load_configuration(), observer=metrics.api_request, fence=fence))
    # One registry client for the operator's life: its bearer tokens are reused across builds.
    registry = await clients.enter_async_context(
        RegistryClient(timeout=operator_settings.registry_timeout_seconds,
                       observer=metrics.registry_request,
                       ca_bundle=operator_settings.ca_bundle_file,
                       allow=operator_settings.registry_allow))
    if operator_settings.metrics_port is not None:
        metrics.serve(operator_settings.metrics_port, operator_settings.metrics_address)
    # Trigger polls (git refs, base images) run only while this replica leads: the leader's
    # list tracks the ImageBuilds with triggers, and each term's end forgets them.
    git = await clients.enter_async_context(
        GitRefs(timeout=operator_settings.git_timeout_seconds,
                ca_bundle=operator_settings.ca_bundle_file))
    operator_holder: list[Operator] = []
    triggers = TriggerWatch(api, registry, git, operator_settings,
                            wake=lambda key: operator_holder[0].enqueue(key))  # noqa: PLW0108 - late
    clients.push_async_callback(triggers.stop)
    memo.operator = operator = Operator(api, registry, operator_settings, settings, metrics,
                                        triggers=triggers)
    operator_holder.append(operator)
    election = None
    # What the webhook server asks (is_leader, leader_address), with or without election.
    memo.leadership = Standalone(leader_address(operator_settings))
    if fence is not None:
        memo.leadership = memo.election = election = _election(api, fence, operator, identity)
        memo.election_task = asyncio.create_task(election.run(), name="stagewright-election")
    if operator_settings.readiness_endpoint:
        memo.readiness = await clients.enter_async_context(
            Readiness(operator_settings.readiness_endpoint, partial(_role, operator, election)))
    if operator_settings.webhook_port is not None:
        webhooks = WebhookServer(api, triggers, operator_settings.webhook_address,
                                 operator_settings.webhook_port,
                                 leader=Acting(memo.leadership, operator))
        await webhooks.start()
        clients.push_async_callback(webhooks.stop)
    if election is None:
        await operator.lead()


@dataclass
class Acting:
    """Who may take a webhook delivery: the leader once its term has listed (before that its
    trigger watch knows no webhook path yet; a delivery then is refused with 503, to be
    redelivered, rather than 404)."""

    leadership: Election | Standalone
    operator: Operator

    def is_leader(self) -> bool:
        """Leading, and acting."""
        return self.leadership.is_leader() and self.operator.acting.is_set()

    def leader_address(self) -> str | None:
        """Where the leader's webhook endpoint is, from the Lease."""
        return self.leadership.leader_address()


def _role(operator: Operator, election: Election | None) -> str | None:
    """What /readyz says: ``leader``, ``standby``, or None while neither can be said yet."""
    if election is None:
        return "leader" if operator.acting.is_set() else None
    if election.is_leader():
        return "leader"
    return "standby" if election.tried.is_set() else None


@kopf.on.cleanup(id="stop")
async def stop(memo: kopf.Memo, **_: Any) -> None:
    """Stop acting, give the Lease up, and close connections."""
    election: Election | None = memo.get("election")
    task: asyncio.Task[None] | None = memo.get("election_task")
    if task is not None:
        task.cancel()  # no more renewals; leading stops (fence closed, term ended)
        with contextlib.suppress(asyncio.CancelledError):
            await task
    operator: Operator | None = memo.get("operator")
    if operator is not None:
        await operator.step_down()
    if election is not None:
        await election.release()
    clients: contextlib.AsyncExitStack | None = memo.get("clients")
    if clients is not None:
        await clients.aclose()


def _listed_by(namespace: str, key: Key) -> bool:
    """Whether a list of ``namespace`` ("" for all) covers ``key``."""
    return not namespace or key[0] == namespace


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


def _pristine(status: Mapping[str, Any]) -> bool:
    """A pod just created: no scheduler or kubelet has said anything about it yet."""
    return (status.get("phase") in (None, "Pending") and not status.get("conditions")
            and not status.get("containerStatuses"))


def unsettled(namespace: str | None, name: str, status: Mapping[str, Any],
              meta: Mapping[str, Any], annotations: Mapping[str, str],
              ) -> dict[Key, Waiting | None]:
    """An ImageBuild's entry in ``Tracked.unsettled``: none ({}) once it finished building;
    the value is set for one waiting for a slot."""
    if _settled(status, meta, annotations):
        return {}
    waiting = status.get("reason") == Reason.QUEUED.value or not status.get("phase") or (
        status.get("observedGeneration") != meta.get("generation"))
    entry = Waiting(str(meta.get("creationTimestamp") or ""), namespace or "", name)
    return {(namespace or "", name): entry if waiting else None}


def _owner(meta: Mapping[str, Any]) -> str | None:
    return next((ref.get("name") for ref in meta.get("ownerReferences") or []
                 if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION), None)


def running_pods(namespace: str | None, name: str, meta: Mapping[str, Any],
                 status: Mapping[str, Any]) -> dict[Key, str]:
    """A build pod's entry in ``Tracked.running_pods``, by owner: the running builds, as the
    cluster says (for the queue). A finished pod gives {}: it no longer holds a slot."""
    owner = _owner(meta)
    if owner is None or status.get("phase") in ("Succeeded", "Failed"):
        return {}
    return {(namespace or "", owner): name}


async def _reconcile(reconciler: Reconciler, namespace: str, name: str, *,
                     body: dict[str, Any] | None = None,
                     pod: dict[str, Any] | None = None) -> None:
    """Reconcile, turning failures into a log line: the resync retries unsettled builds."""
    try:
        await reconciler.reconcile(namespace, name, body=body, pod=pod)
    except (ApiError, RegistryError) as exc:
        log = _log.warning if exc.temporary else _log.error
        log(f"Reconciling failed, will retry: {exc}", extra=object_ref(namespace, name))


def object_ref(namespace: str, name: str) -> dict[str, Any]:
    """``extra`` for a log line about an ImageBuild: kopf's formatters prefix the text with
    [namespace/name] and put it in a JSON line's ``object``, as for kopf's object loggers."""
    return {"k8s_ref": {"apiVersion": API_VERSION, "kind": KIND, "namespace": namespace,
                        "name": name}}
