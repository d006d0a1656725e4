"""Leader election on a ``coordination.k8s.io/v1`` Lease, on the operator's own API client.

One replica acts (the leader); the others (standbys) watch nothing and write nothing but their
attempts to take the Lease. The rules are client-go's ``leaderelection`` package, which
controller-runtime operators use (defaults 15 s lease, 10 s renew deadline, 2 s retry):

- Clocks are never compared across machines. A standby judges a Lease expired when the Lease
  has not *changed* for ``leaseDurationSeconds`` of its own monotonic clock since it first
  saw that version (``observe``), so a frozen or skewed node cannot steal or keep the Lease
  by its clock. A Lease with no holder (released on SIGTERM) is free at once.
- The leader renews every retry period. Its right to act (the :class:`Fence`) lasts until
  ``renew deadline`` after it *sent* its last successful renew (``valid_until``), which is
  before any standby can see that renew, so before any standby's lease duration can run out
  from it: with the defaults, 5 s before the earliest takeover. Past that, it stops acting at
  once, whether or not its loop got to run.
- The fence is checked in the write path itself (``KubeApi``: every write but the Lease's,
  before the request is queued and again when it gets its connection), not only in loops,
  so a leader frozen by SIGSTOP past its lease and then woken sends no write: its first
  check reads the monotonic clock, which ran on while it was frozen. What is left is the
  microseconds between that last check and the bytes leaving the socket, as in any
  controller on the Kubernetes API (which has no fencing tokens).
- On SIGTERM the leader stops acting, then releases the Lease (no holder), so a standby
  takes over within a retry period instead of a lease duration.

Why our own elector rather than ``kubernetes_asyncio``'s ``leaderelection`` (read and
measured, benchmarks/README.md "availability.py"): that package is a second API library with
its own aiohttp session, connection pool and configuration loader next to ``KubeApi``; with it
installed the operator's start-up imports took 0.1-0.3 s longer and 32 MiB more resident
memory (kopf imports it as soon as it is installed), in four runs each way. Its elector keeps
time with the wall clock (``time.time()``, which a clock step moves), exposes no deadline for
our write path to check (it calls ``onstopped_leading`` from its own loop once a renew loop
has given up, late when the process was frozen), reads the Lease before every renew, and
never releases it on shutdown. The Lease protocol itself is three calls (GET, POST, PUT with
the resourceVersion as the precondition) on the client every other call already uses: one
client, one connection pool, one place that decides what may be written.

Pure decisions (``observe``, ``may_acquire``, ``lease_body``, ``valid_until``) are apart from
the I/O (:class:`Election`), so they are tested without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stagewright.handlers.kube_api import ApiError, KubeApi, NotLeaderError

#: The annotation on the Lease that says where the leader can be reached (``IP:port``), so a
#: standby can forward a webhook delivery to it.
LEADER_ADDRESS_ANNOTATION = "stagewright.dev/leader-address"

_log = logging.getLogger("stagewright")
_STOPPING = "the operator is stopping"


@dataclass(frozen=True)
class Timing:
    """The three durations of client-go's elector, in seconds."""

    #: How long a standby waits, after the Lease last changed, before taking it.
    lease_duration: float = 15.0
    #: How long the leader keeps acting without a successful renew.
    renew_deadline: float = 10.0
    #: How often the leader renews and a standby tries to take the Lease.
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs retry period < renew deadline < lease "
                             f"duration (got {self.retry_period}, {self.renew_deadline}, "
                             f"{self.lease_duration})")


@dataclass(frozen=True)
class Observed:
    """What a replica last read of the Lease, and when (its own monotonic clock) it first saw
    this version of it."""

    holder: str
    resource_version: str
    duration: float
    address: str | None
    transitions: int
    observed_at: float
    #: The Lease as read (for the next write's resourceVersion and fields kept).
    lease: dict[str, Any]


# Pure decisions.

def observe(previous: Observed | None, lease: dict[str, Any], now: float) -> Observed:
    """The Lease as observed at monotonic time ``now``: a version seen before keeps the
    moment it was first seen, so an unchanged Lease ages on the observer's clock only."""
    meta = lease.get("metadata") or {}
    spec = lease.get("spec") or {}
    version = str(meta.get("resourceVersion") or "")
    unchanged = previous is not None and previous.resource_version == version
    return Observed(
        holder=str(spec.get("holderIdentity") or ""),
        resource_version=version,
        duration=float(spec.get("leaseDurationSeconds") or 0),
        address=(meta.get("annotations") or {}).get(LEADER_ADDRESS_ANNOTATION) or None,
        transitions=int(spec.get("leaseTransitions") or 0),
        observed_at=previous.observed_at if unchanged and previous is not None else now,
        lease=lease,
    )


def expired(observed: Observed, now: float) -> bool:
    """Whether the Lease went unchanged for its whole duration, on this replica's clock."""
    return now >= observed.observed_at + observed.duration


def may_acquire(observed: Observed, identity: str, now: float) -> bool:
    """Whether ``identity`` may write the Lease as its holder: it holds it already, nobody
    does (released), or the holder let it expire."""
    return observed.holder in ("", identity) or expired(observed, now)


def valid_until(sent_at: float, timing: Timing) -> float:
    """Until when a leader may act after a renew sent at monotonic ``sent_at`` succeeded."""
    return sent_at + timing.renew_deadline


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(namespace: str, name: str, identity: str, timing: Timing, *,
               previous: Observed | None, address: str | None,
               moment: datetime) -> dict[str, Any]:
    """The Lease as ``identity`` writes it to take or renew it (PUT, or POST without
    ``previous``): the previous resourceVersion is the write's precondition."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": math.ceil(timing.lease_duration),
        "renewTime": micro_time(moment),
    }
    if previous is not None:
        old_meta = previous.lease.get("metadata") or {}
        old_spec = previous.lease.get("spec") or {}
        meta["resourceVersion"] = previous.resource_version
        annotations = dict(old_meta.get("annotations") or {})
        if old_meta.get("labels"):
            meta["labels"] = old_meta["labels"]
        renewing = previous.holder == identity
        spec["acquireTime"] = (old_spec.get("acquireTime") if renewing else None) or (
            micro_time(moment))
        spec["leaseTransitions"] = previous.transitions + (
            0 if renewing or not previous.holder else 1)
    else:
        annotations = {}
        spec["acquireTime"] = micro_time(moment)
        spec["leaseTransitions"] = 0
    annotations.pop(LEADER_ADDRESS_ANNOTATION, None)
    if address:
        annotations[LEADER_ADDRESS_ANNOTATION] = address
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": spec}


def released_body(observed: Observed, moment: datetime) -> dict[str, Any]:
    """The Lease as a leader leaves it on shutdown (client-go's ReleaseOnCancel): no holder,
    so a standby takes it at its next try."""
    lease = observed.lease
    meta = {k: v for k, v in (lease.get("metadata") or {}).items()
            if k in ("name", "namespace", "labels", "annotations", "resourceVersion")}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != LEADER_ADDRESS_ANNOTATION}
    meta["annotations"] = annotations
    spec = dict(lease.get("spec") or {})
    spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=micro_time(moment))
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": spec}


def replica_identity() -> str:
    """This process's name in the Lease: the pod's name (or host name) and a random suffix,
    as controller-runtime makes it, so a restarted container never inherits its own Lease."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


class Fence:
    """Until when this replica may write: checked by ``KubeApi`` before every write.

    Closed (0) until the replica leads; opened by each successful renew up to its
    ``valid_until``; closed at once when leadership is lost or given up.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0

    @property
    def until(self) -> float:
        """The monotonic deadline (0: closed)."""
        return self._until

    def open_until(self, deadline: float) -> None:
        """Allow writes until ``deadline`` (monotonic)."""
        self._until = deadline

    def close(self) -> None:
        """Allow no write from now on."""
        self._until = 0.0

    def valid(self) -> bool:
        """Whether a write may leave now."""
        return self._clock() < self._until

    def check(self) -> None:
        """Raise :class:`NotLeaderError` unless a write may leave now."""
        if not self.valid():
            raise NotLeaderError


class Standalone:
    """What answers ``is_leader`` and ``leader_address`` without leader election: this one
    replica always leads, at its own address."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    def is_leader(self) -> bool:
        """Always: nobody else acts."""
        return True

    def leader_address(self) -> str | None:
        """This replica's own address, if known."""
        return self.address


#: Told when this replica starts or stops leading.
Callback = Callable[[], Coroutine[Any, Any, None]]


class Election:
    """Takes and keeps the Lease for this replica; ``run`` until cancelled, then ``release``.

    ``on_started`` runs (as a task) once the replica leads; ``on_stopped`` once it stops, the
    fence closed before. ``is_leader`` and ``leader_address`` answer from the last Lease read
    (the webhook server asks them).
    """

    def __init__(self, api: KubeApi, fence: Fence, *, namespace: str, name: str,
                 identity: str, timing: Timing, address: str | None,
                 on_started: Callback, on_stopped: Callback,
                 on_leader_changed: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.fence = fence
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.address = address
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._on_leader_changed = on_leader_changed
        self._clock = clock
        self._observed: Observed | None = None
        self._leading = False
        self._leading_task: asyncio.Task[None] | None = None
        #: Set once the first attempt (a Lease read) is done: a ready standby.
        self.tried = asyncio.Event()

    # What the rest of the operator asks.

    def is_leader(self) -> bool:
        """Whether this replica leads and may act now."""
        return self._leading and self.fence.valid()

    def leader_address(self) -> str | None:
        """Where the leader can be reached (``IP:port``), from the last Lease read."""
        if self._observed is None or not self._observed.holder:
            return None
        return self._observed.address

    def lease(self) -> dict[str, Any] | None:
        """The Lease as last read or written."""
        return self._observed.lease if self._observed is not None else None

    def leader_identity(self) -> str | None:
        """Who holds the Lease, from the last Lease read."""
        return (self._observed.holder or None) if self._observed is not None else None

    # The loop.

    async def run(self) -> None:
        """Try to take the Lease until this replica leads; renew it while it does; stop
        leading the moment the fence runs out. Until cancelled."""
        try:
            while True:
                try:
                    if self._leading:
                        await self._renew()
                        continue
                    await self._try_to_acquire()
                except Exception:  # a Lease this code cannot read must not end the loop
                    _log.exception(f"Leader election on Lease {self.namespace}/{self.name} "
                                   "failed; trying again.")
                    await self._stop_leading("leader election failed")
                self.tried.set()
                await asyncio.sleep(self.timing.retry_period)
        finally:
            if self._leading:
                await self._stop_leading(_STOPPING)

    async def _try_to_acquire(self) -> None:
        sent = self._clock()
        try:
            taken = await self._acquire_or_renew()
        except ApiError as exc:
            _log.info(f"Could not read or take Lease {self.namespace}/{self.name}: {exc}")
            return
        if taken:
            self.fence.open_until(valid_until(sent, self.timing))
            self._leading = True
            self._leading_task = asyncio.create_task(self._on_started())

    async def _renew(self) -> None:
        """One renew, bounded by the fence; then wait for the next, or lose the lead."""
        sent = self._clock()
        left = self.fence.until - sent
        renewed = False
        if left > 0:
            try:
                async with asyncio.timeout(left):
                    renewed = await self._acquire_or_renew()
            except (ApiError, TimeoutError) as exc:
                _log.warning(f"Renewing Lease {self.namespace}/{self.name} failed: {exc}")
        if renewed:
            self.fence.open_until(valid_until(sent, self.timing))
        elif self._observed is not None and self._observed.holder not in ("", self.identity):
            await self._stop_leading(f"{self._observed.holder} holds the Lease")
            return
        if not self.fence.valid():
            await self._stop_leading("the Lease was not renewed within the renew deadline")
            return
        wait = min(self.timing.retry_period, self.fence.until - self._clock())
        await asyncio.sleep(max(wait, 0))

    async def _acquire_or_renew(self) -> bool:
        """Take or renew the Lease; False when another replica holds it (or won a race)."""
        if not (self._leading and self._observed is not None):
            # A leader renews from the Lease it last wrote (one PUT); anyone else reads first.
            lease = await self.api.get_lease(self.namespace, self.name)
            if lease is None:
                return await self._create()
            self._note(lease)
        observed = self._observed
        assert observed is not None
        if not may_acquire(observed, self.identity, self._clock()):
            return False
        body = lease_body(self.namespace, self.name, self.identity, self.timing,
                          previous=observed, address=self.address,
                          moment=datetime.now(UTC))
        try:
            written = await self.api.replace_lease(body)
        except ApiError as exc:
            if exc.status == 409:  # someone wrote it since: read it afresh next time
                self._observed = None
                return False
            raise
        self._note(written)
        return True

    async def _create(self) -> bool:
        body = lease_body(self.namespace, self.name, self.identity, self.timing,
                          previous=None, address=self.address, moment=datetime.now(UTC))
        try:
            created = await self.api.create_lease(body)
        except ApiError as exc:
            if exc.status == 409:  # another replica created it first
                return False
            raise
        self._note(created)
        return True

    def _note(self, lease: dict[str, Any]) -> None:
        before = self.leader_identity()
        self._observed = observe(self._observed, lease, self._clock())
        after = self.leader_identity()
        if after != before and after and self._on_leader_changed is not None:
            self._on_leader_changed(before or "", after)

    async def _stop_leading(self, why: str) -> None:
        self.fence.close()
        if not self._leading:
            return
        self._leading = False
        log = _log.info if why == _STOPPING else _log.warning
        log(f"Stopped leading ({why}): this replica writes nothing until it leads again.")
        task, self._leading_task = self._leading_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._on_stopped()

    async def release(self) -> None:
        """Give the Lease up (shutdown): stop acting first, then leave it without a holder,
        unless another replica took it meanwhile."""
        await self._stop_leading(_STOPPING)
        observed = self._observed
        if observed is None or observed.holder != self.identity:
            return  # not ours (a stale view is refused by the resourceVersion: 409)
        try:
            await self.api.replace_lease(released_body(observed, datetime.now(UTC)))
        except ApiError as exc:
            _log.warning(f"Could not release Lease {self.namespace}/{self.name}: {exc}")
            return
        _log.info(f"Released Lease {self.namespace}/{self.name}.")
