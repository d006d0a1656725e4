"""What a Dockerfile says, read without building it: its instructions, and the external images
a target depends on. Pure.

The base-image trigger watches exactly the images the built target needs: the ``FROM`` images
of the target's stage and of every stage it is built from or copies from (``COPY --from``),
with ARGs expanded as the builder expands them (global ``ARG`` defaults, overridden by
``spec.buildArgs``), stage names and ``scratch`` skipped. The command line's live progress
reads the same instructions (``instructions``) to count steps.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

SCRATCH = "scratch"
#: ``$NAME``, ``${NAME}``, ``${NAME:-default}`` and ``${NAME:+alternative}``, as the builders
#: expand them in FROM lines (BuildKit's shell-lexer subset Kaniko follows).
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])"
                       r"(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def instructions(text: str) -> list[str]:
    """Logical instructions: comments dropped, backslash continuations joined."""
    result: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        if stripped.startswith("#"):
            continue
        result.append((current + stripped).strip())
        current = ""
    if current.strip():
        result.append(current.strip())
    return result


@dataclass
class _Stage:
    base: str
    name: str | None
    index: int
    #: Stages or images named by ``COPY --from`` (and ``RUN --mount=from=``) in this stage.
    copies_from: list[str] = field(default_factory=list)


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


def _parse(text: str, build_args: dict[str, str]) -> tuple[list[_Stage], dict[str, str]]:
    """The stages with their bases expanded, and the global ARG values used in FROM lines."""
    values: dict[str, str] = {}
    stages: list[_Stage] = []
    for instruction in instructions(text):
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            for arg, default in _arg_pairs(rest):
                value = build_args.get(arg, expand(default, values) if default else None)
                if value is not None:
                    values[arg] = value
        elif keyword == "FROM":
            _, words = _flags_and_words(rest)
            if not words:
                continue
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(_Stage(expand(words[0], values), alias, len(stages)))
        elif stages and keyword in ("COPY", "ADD"):
            flags, _ = _flags_and_words(rest)
            if flags.get("from"):
                stages[-1].copies_from.append(flags["from"])
        elif stages and keyword == "RUN":
            stages[-1].copies_from += _mount_sources(rest)
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
