"""Read a build's progress from Kaniko's log lines: pure, so every line shape is unit-tested.

Kaniko says which stage it builds (``Building stage 'golang:1.22' [idx: '0', base-idx:
'-1']``), logs each instruction as it runs it (``INFO[0003] RUN make``), and, with the layer
cache on, whether each cacheable step was found (``Using caching version of cmd: RUN make``)
or not (``No cached layer found for cmd RUN make``). Kaniko never says how many steps a stage
has; when the Dockerfile is at hand (a ConfigMap context), :func:`dockerfile_stages` counts them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from stagewright.build_log import CACHE_HIT, CACHE_MISS, STAGE, kaniko_line
from stagewright.dockerfile import instructions

_PUSHING = re.compile(r"^Pushing image to (?P<ref>\S+)")
#: Kaniko announces a layer for the cache repo before pushing it as an image of its own.
_CACHE_PUSH = re.compile(r"^Pushing layer \S+ to cache now")
_PUSHED = re.compile(r"^Pushed (?P<ref>\S+)")
#: Dockerfile instructions Kaniko logs when it runs them (FROM starts a stage instead).
INSTRUCTIONS = frozenset({
    "RUN", "COPY", "ADD", "WORKDIR", "ENV", "ARG", "USER", "LABEL", "EXPOSE", "VOLUME", "CMD",
    "ENTRYPOINT", "SHELL", "STOPSIGNAL", "HEALTHCHECK", "ONBUILD", "MAINTAINER",
})
_ERROR_LEVELS = frozenset({"ERRO", "FATA", "error", "fatal"})


@dataclass(frozen=True)
class Stage:
    """One ``FROM`` of a Dockerfile: its base, its ``AS`` name and its instruction count."""

    base: str
    name: str | None
    steps: int


@dataclass
class Progress:
    """What a build pod has done so far, as far as its log tells."""

    stage: str | None = None
    step: int = 0
    steps: int | None = None
    instruction: str | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    pushing: str | None = None
    pushed: list[str] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        """One line for a person: stage, step i of n, cache hits so far, push state."""
        parts = []
        if self.stage:
            parts.append(f"stage {self.stage}")
        if self.step:
            of = f"/{self.steps}" if self.steps else ""
            parts.append(f"step {self.step}{of}" + (f" {self.instruction}" if self.instruction
                                                       else ""))
        if self.cache_hits or self.cache_misses:
            parts.append(f"cache {self.cache_hits} hit{'s' * (self.cache_hits != 1)}, "
                         f"{self.cache_misses} miss{'es' * (self.cache_misses != 1)}")
        if self.pushed:
            parts.append(f"pushed {len(self.pushed)}")
        elif self.pushing:
            parts.append("pushing")
        return " · ".join(parts) or "starting"


class ProgressParser:
    """Feed log lines in order; ``progress`` is what they said so far."""

    def __init__(self, stages: Sequence[Stage] = ()) -> None:
        self.stages = list(stages)
        self.progress = Progress()
        self._caching = False

    def feed(self, raw: str) -> bool:
        """Take one log line; True when it changed the progress."""
        parsed = kaniko_line(raw)
        if parsed is None:
            return False
        level, message = parsed
        if level in _ERROR_LEVELS:
            self.progress.error = message
            return True
        return self._info(message)

    def _info(self, message: str) -> bool:
        progress = self.progress
        if stage := STAGE.match(message):
            self._start_stage(stage.group("base"), int(stage.group("idx")))
        elif CACHE_HIT.match(message):
            progress.cache_hits += 1
        elif CACHE_MISS.match(message):
            progress.cache_misses += 1
        elif _CACHE_PUSH.match(message):
            self._caching = True
        elif pushing := _PUSHING.match(message):
            if not self._caching:
                progress.pushing = pushing.group("ref")
        elif pushed := _PUSHED.match(message):
            if not self._caching:
                progress.pushed.append(pushed.group("ref"))
            self._caching = False
        elif message.split(" ", 1)[0] in INSTRUCTIONS:
            progress.step += 1
            progress.instruction = _shorten(message, 60)
        else:
            return False
        return True

    def _start_stage(self, base: str, index: int) -> None:
        known = self._stage_at(base, index)
        self.progress.stage = (known.name or known.base) if known else base
        self.progress.steps = known.steps if known else None
        self.progress.step = 0
        self.progress.instruction = None

    def _stage_at(self, base: str, index: int) -> Stage | None:
        """The Dockerfile stage Kaniko names, when the Dockerfile agrees with the log.

        The index is trusted only when that stage's base matches (or is an ARG Kaniko
        resolved); otherwise the first stage with that base, else nothing.
        """
        if index < len(self.stages):
            candidate = self.stages[index]
            if candidate.base == base or "$" in candidate.base:
                return candidate
        return next((s for s in self.stages if s.base == base), None)


def dockerfile_stages(text: str) -> list[Stage]:
    """Each stage of a Dockerfile with the number of instructions Kaniko will log for it."""
    stages: list[Stage] = []
    base, name, steps = "", None, 0
    for instruction in instructions(text):
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            if base:
                stages.append(Stage(base, name, steps))
            words = [w for w in rest.split() if not w.startswith("--")]
            base = words[0] if words else ""
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            steps = 0
        elif base and keyword in INSTRUCTIONS:
            steps += 1
    if base:
        stages.append(Stage(base, name, steps))
    return stages


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
