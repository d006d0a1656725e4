"""Which namespaces one operator serves: names, glob patterns and exclusions (pure).

``STAGEWRIGHT_NAMESPACES`` is a comma-separated list. Empty: every namespace. ``team-a``: that
namespace; ``team-*`` (``*``, ``?``, ``[...]``, as shell globs): every namespace matching;
``!name`` or ``!pattern``: not those, whatever else matches. A list of exclusions only, or
``*`` with exclusions, is a catch-all shard: every namespace the other shards do not take.

How it is watched (``watches``): a list of plain names is one list-and-watch per namespace,
as before (and namespaced RBAC suffices); anything with a pattern or an exclusion is one
cluster-wide list-and-watch per kind, excluded names left out by the API server (a
``metadata.namespace!=`` field selector) and patterns filtered on sight (``covers``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

#: One entry: an optional ``!`` and a namespace name, or a glob of one.
_ENTRY = re.compile(r"^!?[a-z0-9*?\[\]-]{1,63}$")
_GLOB = re.compile(r"[*?\[]")


def is_pattern(entry: str) -> bool:
    """Whether an entry (without its ``!``) is a glob rather than one namespace's name."""
    return bool(_GLOB.search(entry))


@dataclass(frozen=True)
class Scope:
    """The namespaces an operator serves."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Scope:
        """The scope of a ``STAGEWRIGHT_NAMESPACES`` list; ValueError names a bad entry."""
        include: list[str] = []
        exclude: list[str] = []
        for raw in entries:
            entry = raw.strip()
            if not _ENTRY.fullmatch(entry):
                raise ValueError(f"{entry!r} is not a namespace name, a glob of one, or either "
                                 "after '!'")
            (exclude if entry.startswith("!") else include).append(entry.lstrip("!"))
        if "*" in include:
            include = []  # every namespace (the exclusions still apply)
        return cls(tuple(include), tuple(exclude))

    @property
    def whole_cluster(self) -> bool:
        """Every namespace, none excluded."""
        return not self.include and not self.exclude

    @property
    def names_only(self) -> bool:
        """A list of plain namespace names: watched one by one."""
        return bool(self.include) and not self.exclude and not any(
            is_pattern(entry) for entry in self.include)

    def covers(self, namespace: str) -> bool:
        """Whether ``namespace`` is this operator's."""
        if any(fnmatchcase(namespace, entry) for entry in self.exclude):
            return False
        return not self.include or any(fnmatchcase(namespace, entry) for entry in self.include)

    def watches(self) -> list[tuple[str, str]]:
        """What to list and watch: (namespace, or "" for all; field selector, or "")."""
        if self.names_only:
            return [(namespace, "") for namespace in self.include]
        selector = ",".join(f"metadata.namespace!={name}" for name in self.exclude
                            if not is_pattern(name))
        return [("", selector)]
