"""A keyed work queue with bounded concurrent workers, as controller-runtime's workqueue.

Events for one ImageBuild are coalesced: while its key waits, a newer event's payload is merged
into the waiting one (the latest body wins), so a burst of writes to one object costs one
reconcile, not one per event. A key is never processed by two workers at once: an event that
arrives while its key is being processed is kept and the key is processed again afterwards.
Keys are served first come, first served by a fixed number of workers, so a burst of a
thousand ImageBuilds has a bounded number of reconciles (and API requests) in flight instead of
a task per object, and a finished key leaves no trace.

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
        #: Keys in line, in arrival order (each at most once).
        self._line: asyncio.Queue[Key] = asyncio.Queue()
        #: The payload of each key in line, or of a key processed now that must run again.
        self._pending: dict[Key, Item] = {}
        #: Keys a worker is processing now.
        self._active: set[Key] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, key: Key, item: Item) -> None:
        """Ask for ``key`` to be processed with ``item`` (merged into any payload waiting)."""
        waiting = key in self._pending
        self._pending[key] = self._merge(self._pending[key], item) if waiting else item
        if not waiting and key not in self._active:
            self._line.put_nowait(key)
        self._idle.clear()

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
            key = await self._line.get()
            self._active.add(key)
            try:
                for _ in range(1 + self._follow_ups):
                    await self._process_once(key, self._pending.pop(key))
                    if key not in self._pending:
                        break  # no event came meanwhile
            finally:
                self._active.discard(key)
                if key in self._pending:  # still more: again, from the back of the line
                    self._line.put_nowait(key)
                elif not self._pending and not self._active:
                    self._idle.set()

    async def _process_once(self, key: Key, item: Item) -> None:
        try:
            await self._process(key, item)
        except Exception:  # one broken object must not stop the worker for all others
            _log.exception(f"Processing {key} failed")
