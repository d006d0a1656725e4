"""What a Dockerfile says, read without building it: its instructions, and the external images
a target depends on. Pure.

The base-image trigger watches exactly the images the built target needs: the ``FROM`` images
of the target's stage and of every stage it is built from or copies from (``COPY --from``),
with ARGs expanded as the builder expands them (global ``ARG`` defaults, overridden by
``spec.buildArgs``), stage names and ``scratch`` skipped. The command line's live progress
reads the same instructions (``instructions``) to count steps.

Cross-platform builds (``spec.platformMode: cross``) read the same stages for what would not
work without emulation (``cross_plan``: a RUN in a stage built for the target platform) and
for the ``FROM --platform=$BUILDPLATFORM`` stages Kaniko would pull for the wrong platform
(it ignores that flag), which the operator pins by digest (``pin_bases``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from stagewright.api.platforms import Platform

SCRATCH = "scratch"
#: ``$NAME``, ``${NAME}``, ``${NAME:-default}`` and ``${NAME:+alternative}``, as the builders
#: expand them in FROM lines (BuildKit's shell-lexer subset Kaniko follows).
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])"
                       r"(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Instruction:
    """One logical instruction and the lines (1-based, inclusive) it spans."""

    first: int
    last: int
    text: str


def numbered_instructions(text: str) -> list[Instruction]:
    """Logical instructions with their lines: comments dropped, backslash continuations
    joined."""
    result: list[Instruction] = []
    current, first = "", 0
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if not current:
            first = number
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        if stripped.startswith("#"):
            continue
        result.append(Instruction(first, number, (current + stripped).strip()))
        current = ""
    if current.strip():
        result.append(Instruction(first, len(lines), current.strip()))
    return result


def instructions(text: str) -> list[str]:
    """Logical instructions: comments dropped, backslash continuations joined."""
    return [instruction.text for instruction in numbered_instructions(text)]


@dataclass
class _Stage:
    base: str
    name: str | None
    index: int
    #: The FROM instruction, and its ``--platform`` flag as written (None without one).
    source: Instruction | None = None
    platform: str | None = None
    #: Stages or images named by ``COPY --from`` (and ``RUN --mount=from=``) in this stage.
    copies_from: list[str] = field(default_factory=list)
    #: The stage's RUN instructions.
    runs: list[Instruction] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How a person names the stage: its name, else its index as Kaniko counts them."""
        return self.name or f"#{self.index}"


def expand(word: str, values: dict[str, str]) -> str:
    """Expand ARG references in ``word``; an unset ARG expands to nothing, as in the
    builders."""
    def one(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        value = values.get(name)
        if match["op"] == ":-":
            return value if value else match["word"]
        if match["op"] == ":+":
            return match["word"] if value else ""
        return value or ""

    return _VARIABLE.sub(one, word)


def _arg_pairs(rest: str) -> list[tuple[str, str | None]]:
    """``ARG A=1 B "C=two words"``: each name with its default (None without one)."""
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        name, eq, value = word.partition("=")
        pairs.append((name, value if eq else None))
    return pairs


def _flags_and_words(rest: str) -> tuple[dict[str, str], list[str]]:
    """``--from=build /a /b`` -> ({"from": "build"}, ["/a", "/b"])."""
    flags: dict[str, str] = {}
    words: list[str] = []
    for word in rest.split():
        if word.startswith("--") and not words:
            name, _, value = word[2:].partition("=")
            flags[name.lower()] = value
        else:
            words.append(word)
    return flags, words


def _mount_sources(flags_text: str) -> list[str]:
    """``RUN --mount=type=cache,from=builder,...``: the ``from=`` of each mount."""
    found = []
    for word in flags_text.split():
        if word.startswith("--mount="):
            for option in word[len("--mount="):].split(","):
                key, _, value = option.partition("=")
                if key == "from" and value:
                    found.append(value)
    return found


def _parse(text: str, build_args: dict[str, str],
           predefined: dict[str, str] | None = None) -> tuple[list[_Stage], dict[str, str]]:
    """The stages with their bases expanded, and the global ARG values used in FROM lines.

    ``predefined``: the builder's automatic ARGs (``TARGETPLATFORM``, ``BUILDARCH`` ...),
    which FROM lines may use without declaring them.
    """
    values: dict[str, str] = dict(predefined or {})
    stages: list[_Stage] = []
    for instruction in numbered_instructions(text):
        keyword, _, rest = instruction.text.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            for arg, default in _arg_pairs(rest):
                value = build_args.get(arg, expand(default, values) if default else None)
                if value is not None:
                    values[arg] = value
        elif keyword == "FROM":
            flags, words = _flags_and_words(rest)
            if not words:
                continue
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(_Stage(expand(words[0], values), alias, len(stages), instruction,
                                 flags.get("platform")))
        elif stages and keyword in ("COPY", "ADD"):
            flags, _ = _flags_and_words(rest)
            if flags.get("from"):
                stages[-1].copies_from.append(flags["from"])
        elif stages and keyword == "RUN":
            stages[-1].copies_from += _mount_sources(rest)
            stages[-1].runs.append(instruction)
    return stages, values


def base_images(text: str, build_args: dict[str, str] | None = None,
                target: str | None = None) -> list[str]:
    """The external images the ``target`` stage (default: the last) depends on, in the order
    the Dockerfile names them; empty when the target is not found."""
    stages, _ = _parse(text, dict(build_args or {}))
    if not stages:
        return []
    by_name = {stage.name.lower(): stage for stage in stages if stage.name}
    wanted = by_name.get(target.lower()) if target else stages[-1]
    if wanted is None:
        return []
    needed = _needed(stages, by_name, wanted)
    images: list[str] = []
    for stage in stages:
        if stage.index not in needed:
            continue
        for reference in [stage.base, *stage.copies_from]:
            if (_stage_named(stages, by_name, reference, stage.index) is None and reference
                    and reference.lower() != SCRATCH and reference not in images):
                images.append(reference)
    return images


def _stage_named(stages: list[_Stage], by_name: dict[str, _Stage], reference: str,
                 before: int) -> _Stage | None:
    """The earlier stage ``reference`` names (by name or index), or None for an image."""
    found = by_name.get(reference.lower())
    if found is not None and found.index < before:
        return found
    if reference.isdigit() and int(reference) < before:
        return stages[int(reference)]
    return None


def _needed(stages: list[_Stage], by_name: dict[str, _Stage], wanted: _Stage) -> set[int]:
    """The indexes of ``wanted`` and every stage it is built from or copies from."""
    needed: set[int] = set()
    pending = [wanted]
    while pending:
        stage = pending.pop()
        if stage.index in needed:
            continue
        needed.add(stage.index)
        pending += [parent for reference in [stage.base, *stage.copies_from]
                    if (parent := _stage_named(stages, by_name, reference, stage.index))]
    return needed


# Cross-platform builds: what cannot run without emulation, and what Kaniko would pull wrong.

#: The stage runs on the build node's platform (its base pinned there), or on the target's.
_BUILD, _TARGET = "build", "target"


@dataclass(frozen=True)
class StageRun:
    """A RUN step of a stage that is built for the target platform."""

    stage: str
    line: int
    instruction: str
    #: The external image the stage's chain of FROMs starts from (None: scratch). A
    #: single-platform image of the build platform runs as it is (Kaniko uses a
    #: single-platform manifest whatever ``--custom-platform`` says), so the step may run.
    base: str | None


@dataclass(frozen=True)
class BuildStageBase:
    """``FROM --platform=$BUILDPLATFORM image``: a stage meant to run on the build platform.

    Kaniko ignores the flag and pulls the target platform's image; pinning the FROM to the
    build platform's image by digest makes the stage what the Dockerfile meant.
    """

    stage: str
    first: int
    last: int
    image: str
    alias: str | None


@dataclass(frozen=True)
class CrossPlan:
    """What a cross build for one target platform needs to know before it starts."""

    runs: list[StageRun] = field(default_factory=list)
    pins: list[BuildStageBase] = field(default_factory=list)


def predefined_args(build_platform: Platform, target_platform: Platform) -> dict[str, str]:
    """The platform ARGs Kaniko defines itself (from the node and ``--custom-platform``)."""
    values = {}
    for prefix, platform in (("BUILD", build_platform), ("TARGET", target_platform)):
        values.update({f"{prefix}PLATFORM": str(platform), f"{prefix}OS": platform.os,
                       f"{prefix}ARCH": platform.architecture,
                       f"{prefix}VARIANT": platform.variant})
    return values


def cross_plan(text: str, build_args: dict[str, str] | None, target: str | None,
               checks: list[str] | None = None, *, build_platform: Platform,
               target_platform: Platform) -> CrossPlan:
    """The RUN steps built for ``target_platform`` and the ``FROM --platform=$BUILDPLATFORM``
    images to pin, in the stages the target and the check stages need.

    A stage is built for the build platform when its FROM says ``--platform=`` that platform
    (``$BUILDPLATFORM``, or the same platform written out) and names an image, or when it
    starts from such a stage; every other stage is built for the target platform, which is
    what Kaniko does (it ignores the flag). Nothing is an obstacle when the target platform
    is the build platform.
    """
    if target_platform.matches(build_platform):
        return CrossPlan()
    stages, values = _parse(text, dict(build_args or {}),
                            predefined_args(build_platform, target_platform))
    by_name = {stage.name.lower(): stage for stage in stages if stage.name}
    needed: set[int] = set()
    for name in [target, *(checks or [])]:
        wanted = by_name.get(name.lower()) if name else (stages[-1] if stages else None)
        if wanted is not None:
            needed |= _needed(stages, by_name, wanted)
    plan = CrossPlan()
    kinds: dict[int, tuple[str, str | None]] = {}
    for stage in stages:
        parent = _stage_named(stages, by_name, stage.base, stage.index)
        if parent is not None:
            kinds[stage.index] = kinds[parent.index]
        elif _on_build_platform(stage, values, build_platform) and stage.base.lower() != SCRATCH:
            kinds[stage.index] = (_BUILD, stage.base)
            if stage.index in needed and stage.source is not None:
                plan.pins.append(BuildStageBase(stage.label, stage.source.first,
                                                stage.source.last, stage.base, stage.name))
        else:
            kinds[stage.index] = (_TARGET, None if stage.base.lower() == SCRATCH else stage.base)
        kind, root = kinds[stage.index]
        if kind == _TARGET and stage.index in needed:
            plan.runs.extend(StageRun(stage.label, run.first, run.text, root)
                             for run in stage.runs)
    return plan


def _on_build_platform(stage: _Stage, values: dict[str, str], build_platform: Platform) -> bool:
    """Whether the stage's ``--platform=`` flag names the build platform."""
    if not stage.platform:
        return False
    try:
        return Platform.parse(expand(stage.platform, values)).matches(build_platform)
    except ValueError:
        return False


def pin_bases(text: str, pins: dict[BuildStageBase, str]) -> str:
    """``text`` with each pinned stage's FROM replaced by ``FROM <image@digest> [AS name]``.

    The ``--platform`` flag goes (Kaniko ignores it; the digest now says the platform), and
    the lines a FROM spanned stay lines (blank), so every other instruction keeps its line
    number in the builder's messages.
    """
    lines = text.splitlines()
    for pin, image in pins.items():
        lines[pin.first - 1] = f"FROM {image}" + (f" AS {pin.alias}" if pin.alias else "")
        for number in range(pin.first, pin.last):
            lines[number] = ""
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")
