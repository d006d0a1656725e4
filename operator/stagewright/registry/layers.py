"""Where an image's bytes are: its layers paired with the instruction that made each. Pure.

An image config's ``history`` has one entry per Dockerfile instruction (base image's first);
entries marked ``empty_layer`` (ENV, WORKDIR, CMD ...) made no layer. The others pair, in
order, with the manifest's layers, which is how ``docker history`` and ``dive`` name them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from stagewright.registry.models import Layer

#: Instructions longer than this are cut: status stays small, and the start says what it was.
MAX_INSTRUCTION_CHARS = 200
#: Docker's classic prefix for metadata steps, and its shell prefix for RUN steps.
_NOP = re.compile(r"^/bin/sh -c #\(nop\)\s*")
_SHELL = re.compile(r"^/bin/sh -c\s+")
#: BuildKit's suffix on its history entries.
_BUILDKIT = re.compile(r"\s*# buildkit$")
_SPACES = re.compile(r"\s+")


def clean_instruction(created_by: str) -> str:
    """``created_by`` as the Dockerfile said it: shell and ``#(nop)`` noise removed.

    ``/bin/sh -c #(nop) COPY dir:abc in /app`` becomes ``COPY dir:abc in /app``;
    ``/bin/sh -c apk add curl`` becomes ``RUN apk add curl``; Kaniko's own ``RUN make``
    stays as it is.
    """
    text = _BUILDKIT.sub("", created_by.strip())
    if _NOP.match(text):
        text = _NOP.sub("", text)
    elif _SHELL.match(text):
        text = "RUN " + _SHELL.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > MAX_INSTRUCTION_CHARS:
        text = text[: MAX_INSTRUCTION_CHARS - 1] + "…"
    return text


def layer_instructions(config: dict[str, Any], layer_count: int) -> list[str | None]:
    """The instruction of each layer, in layer order; None where history does not say.

    History entries that made a layer pair with the layers in order. When their count
    differs from the layers' (a tool that wrote no history, or squashed layers), they pair
    from the end, where the image's own instructions are, and the first layers stay unnamed.
    """
    history = config.get("history")
    entries = [
        entry for entry in history if isinstance(entry, dict) and not entry.get("empty_layer")
    ] if isinstance(history, list) else []
    texts: list[str | None] = [
        clean_instruction(str(entry.get("created_by") or "")) or None for entry in entries
    ]
    if len(texts) >= layer_count:
        return texts[len(texts) - layer_count:] if layer_count else []
    return [None] * (layer_count - len(texts)) + texts


def pair_layers(config: dict[str, Any], layers: Sequence[tuple[str, int]]) -> tuple[Layer, ...]:
    """``(digest, compressed size)`` of each layer, named by the config's history."""
    instructions = layer_instructions(config, len(layers))
    return tuple(
        Layer(digest=digest, size=size, instruction=instruction)
        for (digest, size), instruction in zip(layers, instructions, strict=True)
    )


def largest_layers(layers: Iterable[Layer], count: int) -> list[Layer]:
    """The ``count`` largest layers, largest first (earlier layer first on ties)."""
    ordered = sorted(enumerate(layers), key=lambda item: (-item[1].size, item[0]))
    return [layer for _, layer in ordered[:count]]


def base_bytes(layers: Sequence[Layer], base_layers: Sequence[str]) -> int:
    """Compressed bytes of the leading layers the base image brought, unchanged.

    A layer counts when it is, by digest and position, one of the base image's layers: a
    build adds layers on top of its base and never alters the base's blobs, so the shared
    prefix is exactly what the base brought (an image re-pushed with recompressed layers
    shares none, and counts 0: nothing is claimed that the digests do not prove).
    """
    total = 0
    for layer, base_digest in zip(layers, base_layers, strict=False):
        if layer.digest != base_digest:
            break
        total += layer.size
    return total
