"""A keyed work queue with bounded concurrent workers, as controller-runtime's workqueue.

Events for one ImageBuild are coalesced: while its key waits, a newer event's payload is merged
into the waiting one (the latest body wins), so a burst of writes to one object costs one
reconcile, not one per event. A key is never processed by two workers at once: an event that
arrives while its key is being processed is kept and the key is processed again afterwards.
Keys are served first come, first served by a fixed number of workers, so a burst of a
thousand ImageBuilds has a bounded number of reconciles (and API requests) in flight instead of
a task per object, and a finished key leaves no trace.

Two lines, as controller-runtime's priority queue has: what an informer's list (the start of a
term, a relist) and the periodic resync bring is low priority, served only when no watch event
waits. An operator that starts on a backlog of a thousand pending ImageBuilds therefore records
the end of its first builds (a pod event) as soon as they end, instead of after launching the
whole backlog, and a new ImageBuild created meanwhile is not put behind it. A key waiting in the
low line that gets an event of its own moves to the normal line.

One exception to first come, first served: a key whose event came while it was processed is
processed again at once by the same worker, up to ``follow_ups`` times in a row, before it
goes to the back of the line. Such an event is usually the answer to the step just taken
(the build pod ended while its "Building" status was written); sending it behind every key
that arrived meanwhile made a burst's builds wait in line twice. The bound keeps a key with
a stream of events from holding a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")

#: Merges a newer payload into the one already waiting for the same key.
Merge = Callable[[Item, Item], Item]
#: Processes one key with its (coalesced) payload.
Process = Callable[[Key, Item], Awaitable[None]]

_log = logging.getLogger("stagewright")


def latest(_older: Item, newer: Item) -> Item:
    """The default merge: the newer payload replaces the older one."""
    return newer


class WorkQueue(Generic[Key, Item]):
    """Keys waiting to be processed, each once at a time, by ``workers`` concurrent workers."""

    def __init__(self, process: Process[Key, Item], workers: int,
                 merge: Merge[Item] = latest, follow_ups: int = 2) -> None:
        if workers < 1 or follow_ups < 0:
            raise ValueError("a work queue needs at least one worker, and follow_ups >= 0")
        self._process = process
        self._merge = merge
        self._workers = workers
        self._follow_ups = follow_ups
        #: Keys in line, in arrival order: the normal line and the low one. A key promoted
        #: from low to normal stays in the low deque too, skipped there (``_queued`` says
        #: which line holds it).
        self._lines: tuple[deque[Key], deque[Key]] = (deque(), deque())
        #: Each key in line (each at most once): True while it waits in the low line.
        self._queued: dict[Key, bool] = {}
        #: Counts the keys in line, for the workers to wait on.
        self._available = asyncio.Semaphore(0)
        #: The payload of each key in line, or of a key processed now that must run again.
        self._pending: dict[Key, Item] = {}
        #: Keys a worker is processing now.
        self._active: set[Key] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, key: Key, item: Item, *, low: bool = False) -> None:
        """Ask for ``key`` to be processed with ``item`` (merged into any payload waiting);
        ``low``: after every key of normal priority (a listed object, a resync)."""
        waiting = key in self._pending
        self._pending[key] = self._merge(self._pending[key], item) if waiting else item
        if key in self._queued:
            if self._queued[key] and not low:  # promoted: served with the normal line
                self._queued[key] = False
                self._lines[0].append(key)
        elif key not in self._active:
            self._enter(key, low)
        self._idle.clear()

    def _enter(self, key: Key, low: bool) -> None:
        self._queued[key] = low
        self._lines[1 if low else 0].append(key)
        self._available.release()

    def _next(self) -> Key:
        """The first key of the normal line, else of the low one (stale entries skipped)."""
        for low, line in ((False, self._lines[0]), (True, self._lines[1])):
            while line:
                key = line.popleft()
                if self._queued.get(key) is low:
                    del self._queued[key]
                    return key
        raise RuntimeError("the work queue's count and lines disagree")

    def __len__(self) -> int:
        """Keys waiting or being processed."""
        return len(self._pending.keys() | self._active)

    def waiting(self, key: Key) -> Item | None:
        """The payload waiting for ``key``, if any."""
        return self._pending.get(key)

    def active(self, key: Key) -> bool:
        """Whether a worker is processing ``key`` now."""
        return key in self._active

    def __contains__(self, key: object) -> bool:
        return key in self._pending or key in self._active

    def start(self) -> None:
        """Start the workers (keys added before this wait for them)."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"stagewright-worker-{i}")
                           for i in range(self._workers)]

    async def stop(self) -> None:
        """Stop the workers; keys still waiting are dropped (a restart relists them)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def join(self) -> None:
        """Wait until no key waits or is being processed (for tests and shutdown)."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            await self._available.acquire()
            key = self._next()
            self._active.add(key)
            try:
                for _ in range(1 + self._follow_ups):
                    await self._process_once(key, self._pending.pop(key))
                    if key not in self._pending:
                        break  # no event came meanwhile
            finally:
                self._active.discard(key)
                if key in self._pending:  # still more: again, from the back of the line
                    self._enter(key, False)
                elif not self._pending and not self._active:
                    self._idle.set()

    async def _process_once(self, key: Key, item: Item) -> None:
        try:
            await self._process(key, item)
        except Exception:  # one broken object must not stop the worker for all others
            _log.exception(f"Processing {key} failed")
