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
#: One of Kaniko's own log lines: ``INFO[0003] message`` (its default format; a timestamp
#: with --log-timestamp) or ``time="..." level=info msg="message"`` (--log-format=text).
_LINE = re.compile(r'^(?:(?P<level>[A-Z]{4})\[[^\]]*\]\s?(?P<msg>.*)'
                   r'|(?:time="[^"]*"\s+)?level=(?P<level2>\w+)\s+msg="(?P<msg2>.*?)"?)$')
#: Kaniko's words for a step served from the registry cache, and for one run again: one
#: definition for the operator's cache report and the command line's live progress.
CACHE_HIT = re.compile(r"^Using caching version of cmd: (.+)$")
CACHE_MISS = re.compile(r"^No cached layer found for cmd (.+)$")
#: The stage Kaniko starts: ``Building stage 'golang:1.22' [idx: '0', base-idx: '-1']``
#: (base-idx: the earlier stage this one is built ``FROM``, -1 for an external image).
STAGE = re.compile(r"^Building stage '?(?P<base>[^' ]+)'? \[idx: '?(?P<idx>-?\d+)'?"
                   r"(?:, base-idx: '?(?P<base_idx>-?\d+)'?)?")
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
    #: Every external image a built stage started from (``FROM image``, not an earlier
    #: stage, not scratch), in build order: the base images the build used.
    external_bases: tuple[str, ...] = ()


def kaniko_line(raw: str) -> tuple[str, str] | None:
    """The level and message of one of Kaniko's own log lines (``("INFO", "RUN make")``);
    None for any other line, such as the output of a ``RUN`` step."""
    return _split(_ANSI.sub("", raw).strip())


def _split(clean: str) -> tuple[str, str] | None:
    """``kaniko_line`` of a line already without colour codes and surrounding blanks."""
    match = _LINE.match(clean)
    if match is None:
        return None
    if match.group("level") is not None:
        return match.group("level"), match.group("msg").strip()
    return match.group("level2"), match.group("msg2").strip()


def _message(line: str) -> str:
    """A line's message without Kaniko's prefix (other lines as they are)."""
    clean = _ANSI.sub("", line).strip()
    parsed = _split(clean)
    return parsed[1] if parsed else clean


def parse_build_log(lines: Iterable[str]) -> BuildLog:
    """Read the cache report and the target's base image from Kaniko's log lines."""
    stages: list[_Stage] = []
    current = _Stage(base="", index=-1, base_index=-1)
    for line in lines:
        text = _message(line)
        if stage := STAGE.match(text):
            current = _Stage(stage["base"], int(stage["idx"]), int(stage["base_idx"] or -1))
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
    external = dict.fromkeys(stage.base for stage in stages
                             if stage.index >= 0 and stage.base_index < 0 and stage.base
                             and stage.base.lower() != "scratch")
    return BuildLog(cache=CacheReport(hits=hits, misses=misses), base_image=_base_of(stages),
                    external_bases=tuple(external))


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
