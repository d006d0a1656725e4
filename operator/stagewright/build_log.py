"""What Kaniko's own log says about a build: cache hits and misses, and the target's base. Pure.

Kaniko checks the registry cache for each cacheable step (RUN; COPY too with
``--cache-copy-layers``) before it runs a stage, logging ``Using caching version of cmd: X``
for a hit and ``No cached layer found for cmd X`` for the first miss. After a miss it stops
checking that stage: every later step runs, and is logged by its own name (``RUN make``)
when it runs. So a stage's misses are its executed RUN steps that no hit line served; this
counts them exactly as Kaniko ran them, whatever the Dockerfile says.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
#: ``INFO[0003] message`` (Kaniko's default format; a timestamp with --log-timestamp) or
#: ``time="..." level=info msg="message"`` (--log-format=text).
_PREFIX = re.compile(r'^(?:[A-Z]{4}\[[^\]]*\]\s?|(?:time="[^"]*"\s+)?level=\w+\s+msg=")')
#: Kaniko's words for a step served from the registry cache, and for one run again: one
#: definition for the operator's cache report and the command line's live progress.
CACHE_HIT = re.compile(r"^Using caching version of cmd: (.+)$")
CACHE_MISS = re.compile(r"^No cached layer found for cmd (.+)$")
_STAGE = re.compile(r"^Building stage '(.+)' \[idx: '(-?\d+)', base-idx: '(-?\d+)'\]")
_RUN = re.compile(r"^RUN\s.*$")


@dataclass(frozen=True)
class CacheReport:
    """Cacheable steps served from the registry cache (hits) and run again (misses)."""

    hits: int
    misses: int

    @property
    def summary(self) -> str:
        """``hits/steps``, as the Cache printer column shows it (``5/7``)."""
        return f"{self.hits}/{self.hits + self.misses}"


@dataclass
class _Stage:
    base: str
    index: int
    base_index: int
    hits: Counter[str] = field(default_factory=Counter)
    hit_count: int = 0
    misses: int = 0
    checked_miss: bool = False


@dataclass(frozen=True)
class BuildLog:
    """The facts read from one build's log."""

    cache: CacheReport
    #: The external image the last stage built (the target) starts from, following
    #: ``FROM <earlier stage>`` back to the first external image; None when not logged.
    base_image: str | None


def _message(line: str) -> str:
    text = _ANSI.sub("", line).strip()
    text = _PREFIX.sub("", text)
    return text.removesuffix('"').strip()


def parse_build_log(lines: Iterable[str]) -> BuildLog:
    """Read the cache report and the target's base image from Kaniko's log lines."""
    stages: list[_Stage] = []
    current = _Stage(base="", index=-1, base_index=-1)
    for line in lines:
        text = _message(line)
        if stage := _STAGE.match(text):
            current = _Stage(stage[1], int(stage[2]), int(stage[3]))
            stages.append(current)
        elif hit := CACHE_HIT.match(text):
            current.hits[hit[1].strip()] += 1
            current.hit_count += 1
        elif CACHE_MISS.match(text):
            current.checked_miss = True
        elif _RUN.match(text):
            step = text.strip()
            if current.hits[step] > 0:
                current.hits[step] -= 1  # a cached step being applied
            else:
                current.misses += 1
    if not stages:
        stages = [current]
    hits = sum(stage.hit_count for stage in stages)
    misses = sum(max(stage.misses, int(stage.checked_miss)) for stage in stages)
    return BuildLog(cache=CacheReport(hits=hits, misses=misses), base_image=_base_of(stages))


def _base_of(stages: list[_Stage]) -> str | None:
    """Follow the last stage's ``base-idx`` back to a stage built on an external image."""
    if not stages or stages[-1].index < 0:
        return None
    by_index = {stage.index: stage for stage in stages}
    stage = stages[-1]
    seen: set[int] = set()
    while stage.base_index >= 0:
        if stage.base_index in seen or stage.base_index not in by_index:
            return None
        seen.add(stage.base_index)
        stage = by_index[stage.base_index]
    return stage.base or None
