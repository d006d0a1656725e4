"""The build queue's live state: who runs (from the cluster), who waits, and waking the next.

Running builds are the owners of unfinished build pods, as the operator's pod informer reports
them (``registration.Tracked``), filled from its first list before any reconcile runs: after a
restart the operator counts the same builds as before it, so a limit is never exceeded. Builds
admitted but whose pod has not been seen yet are held as reservations. Waiting builds are
seeded from the ImageBuilds listed (those queued or not yet started), so the order survives a
restart too. The ordering is pure
(``stagewright.queueing``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from stagewright.queueing import Limits, Waiting, admit, place_in_line

#: Called for a build that may start now: re-run its reconciliation.
Wake = Callable[[str, str], None]
#: Told the queue's figures after each change: namespace -> (waiting, running).
Observer = Callable[[Mapping[str, tuple[int, int]]], None]


class BuildQueue:
    """Admission of builds under ``limits``; unlimited limits admit everything at once."""

    def __init__(self, limits: Limits, running_pods: Callable[[], Iterable[tuple[str, str]]],
                 wake: Wake, observer: Observer | None = None) -> None:
        self.limits = limits
        self._running_pods = running_pods
        self._wake = wake
        self._observer = observer
        self._waiting: dict[tuple[str, str], Waiting] = {}
        self._reserved: set[tuple[str, str]] = set()
        self._seeded = False

    def seed(self, entries: Iterable[Waiting]) -> None:
        """Builds waiting at start-up (queued before a restart, or never started)."""
        if self._seeded or self.limits.unlimited:
            return
        self._seeded = True
        for entry in entries:
            self._waiting.setdefault(entry.key, entry)
        if self._waiting:
            self._admit()  # free slots go to the oldest at once, before any event arrives

    def request(self, entry: Waiting) -> int | None:
        """Ask to start ``entry`` now: None if it may, else its place in its namespace's line."""
        if self.limits.unlimited:
            return None
        if entry.key in self._reserved:
            return None  # admitted earlier and woken for it
        self._waiting[entry.key] = entry
        self._admit(asking=entry.key)
        if entry.key in self._reserved:
            return None
        return place_in_line(self._waiting.values(), entry)

    def waiting(self) -> list[tuple[str, str]]:
        """The builds waiting for a slot now."""
        return list(self._waiting)

    def waits(self, namespace: str, name: str) -> bool:
        """Whether the build waits in line for a slot."""
        return (namespace, name) in self._waiting

    def holds(self, namespace: str, name: str) -> bool:
        """Whether the build waits in line or holds a slot it has not shown a pod for."""
        key = (namespace, name)
        return key in self._waiting or key in self._reserved

    def release(self, namespace: str, name: str) -> None:
        """A build's pod finished, or it will not start after all: its slot goes to the next."""
        key = (namespace, name)
        self._waiting.pop(key, None)
        self._reserved.discard(key)
        if self._waiting:
            self._admit()

    def _running(self) -> Counter[str]:
        owners = set(self._running_pods()) | self._reserved
        return Counter(namespace for namespace, _ in owners)

    def _admit(self, asking: tuple[str, str] | None = None) -> None:
        """Give free slots to the next in line; wake those who asked earlier than ``asking``."""
        running = self._running()
        for entry in admit(self._waiting.values(), running, self.limits):
            del self._waiting[entry.key]
            self._reserved.add(entry.key)
            running[entry.namespace] += 1
            if entry.key != asking:
                self._wake(*entry.key)
        if self._observer is not None:
            waiting = Counter(namespace for namespace, _ in self._waiting)
            namespaces = set(waiting) | set(running)
            self._observer({ns: (waiting[ns], running[ns]) for ns in namespaces})
