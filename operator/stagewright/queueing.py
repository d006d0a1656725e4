"""Pure build-queue ordering: which waiting builds may start now, and each one's place in line.

No I/O and no clock: the handlers pass in who waits and how many builds run per namespace
(derived from the cluster's unfinished build pods, so an operator restart decides the same).
Fairness: a free slot goes to the namespace with the fewest running builds, and within a
namespace to the oldest ImageBuild, so one busy namespace never starves another.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Waiting:
    """An ImageBuild waiting for a slot; ordered by creation (RFC 3339 to the second, then name)."""

    created: str
    namespace: str
    name: str

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name)."""
        return self.namespace, self.name


@dataclass(frozen=True)
class Limits:
    """Running builds allowed at once; None means unlimited."""

    total: int | None = None
    per_namespace: int | None = None

    @property
    def unlimited(self) -> bool:
        """No limit at all: every build starts at once."""
        return self.total is None and self.per_namespace is None


def _line_order(entry: Waiting) -> tuple[str, str]:
    """Creation time, then name: a plain tuple, so sorting stays in C (queues reach thousands)."""
    return entry.created, entry.name


def admit(waiting: Iterable[Waiting], running: Mapping[str, int], limits: Limits) -> list[Waiting]:
    """The waiting builds that start now, in the order they take the free slots."""
    counts = Counter(running)
    total = sum(counts.values())
    if limits.total is not None and total >= limits.total:
        return []  # the common case while a queue waits: nothing to sort
    queues: dict[str, list[Waiting]] = {}
    for entry in waiting:
        if limits.per_namespace is None or counts[entry.namespace] < limits.per_namespace:
            queues.setdefault(entry.namespace, []).append(entry)
    for line in queues.values():
        line.sort(key=_line_order, reverse=True)  # each line pops its oldest from the end
    started: list[Waiting] = []
    while queues and (limits.total is None or total < limits.total):
        open_namespaces = [ns for ns in queues
                           if limits.per_namespace is None or counts[ns] < limits.per_namespace]
        if not open_namespaces:
            break
        namespace = min(open_namespaces,
                        key=lambda ns: (counts[ns], _line_order(queues[ns][-1]), ns))
        entry = queues[namespace].pop()
        if not queues[namespace]:
            del queues[namespace]
        counts[namespace] += 1
        total += 1
        started.append(entry)
    return started


def place_in_line(waiting: Iterable[Waiting], entry: Waiting) -> int:
    """``entry``'s place in its namespace's line, 1 for the next to start (one pass, no sort)."""
    mine = _line_order(entry)
    return 1 + sum(1 for other in waiting
                   if other.namespace == entry.namespace and _line_order(other) < mine)


def places(waiting: Iterable[Waiting]) -> dict[tuple[str, str], int]:
    """Each waiting build's place in its namespace's line, 1 for the next to start."""
    result: dict[tuple[str, str], int] = {}
    seen: Counter[str] = Counter()
    for entry in sorted(waiting, key=_line_order):
        seen[entry.namespace] += 1
        result[entry.key] = seen[entry.namespace]
    return result


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st."""
    if 10 <= number % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def queued_message(place: int, namespace: str) -> str:
    """The status message of a queued build, e.g. ``3rd in line for namespace team-a``."""
    return f"{ordinal(place)} in line for namespace {namespace}"
