"""What a finished build's status says beyond its digest: where the bytes are, and the cache.

Pure: registry facts and build-log facts in, ImageBuildStatus fields out (by Python name, as
``status.status_patch`` takes them). A layer of its own, above ``registry``, ``status`` and
``build_log`` (which do not know each other), so the operator and ``stagewright inspect``
share it without the CLI importing kopf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stagewright.api.v1alpha1 import ImageBuildStatus
from stagewright.build_log import BuildLog
from stagewright.registry import ImageInfo, Layer, base_bytes, largest_layers
from stagewright.status import human_size, signed_size, size_delta

#: A base image that is no image: ``FROM scratch`` brings no bytes.
SCRATCH = "scratch"


def _platform_layers(info: ImageInfo) -> list[tuple[str | None, tuple[Layer, ...]]]:
    if info.platforms:
        return [(p.platform, p.layer_details) for p in info.platforms]
    return [(None, info.layer_details)]


def largest_layer_fields(info: ImageInfo, count: int) -> list[dict[str, Any]]:
    """status.largestLayers: the ``count`` largest layers (of every platform, for an index)."""
    tagged = [(platform, layer) for platform, layers in _platform_layers(info)
              for layer in layers]
    top = largest_layers((layer for _, layer in tagged), count)
    platform_of = {id(layer): platform for platform, layer in tagged}
    entries = []
    for layer in top:
        entry: dict[str, Any] = {"size": layer.size, "digest": layer.digest}
        if layer.instruction:
            entry["instruction"] = layer.instruction
        if platform_of[id(layer)]:
            entry["platform"] = platform_of[id(layer)]
        entries.append(entry)
    return entries


def base_size(info: ImageInfo, base_image: str | None,
              base_layers: Sequence[Sequence[str]]) -> int | None:
    """Bytes the base image brought (summed over platforms for an index); None if unknown.

    ``base_layers`` are the base image's layer digests, one list per platform it has: each
    of our platforms counts against the base platform it shares the most bytes with.
    """
    if base_image == SCRATCH:
        return 0
    if not base_layers:
        return None
    return sum(max(base_bytes(layers, base) for base in base_layers)
               for _, layers in _platform_layers(info))


#: Entries status.largestLayers holds at most (its schema's maxItems).
MAX_LARGEST_LAYERS = 16


def largest_layers_per_platform(info: ImageInfo, count: int) -> list[dict[str, Any]]:
    """status.largestLayers of an image index: each platform's largest layers, platform by
    platform, ``count`` each, or fewer so that all fit in the field's 16."""
    each = max(1, min(count, MAX_LARGEST_LAYERS // max(1, len(info.platforms))))
    return [entry for platform in info.platforms
            for entry in largest_layer_fields(
                ImageInfo(digest=info.digest, media_type=info.media_type, size=info.size,
                          layers=info.layers, platforms=(platform,)), each)]


def cache_fields(reports: Sequence[BuildLog | None]) -> dict[str, Any] | None:
    """status.cache summed over builds (one per platform), from the logs that were read."""
    read = [facts.cache for facts in reports if facts is not None]
    if not read:
        return None
    hits, misses = sum(c.hits for c in read), sum(c.misses for c in read)
    return {"hits": hits, "misses": misses, "summary": f"{hits}/{hits + misses}"}


def index_insight(previous: ImageBuildStatus, info: ImageInfo,
                  facts: Sequence[BuildLog | None], base_layers: Sequence[Sequence[str]], *,
                  largest: int, cache_enabled: bool) -> dict[str, Any]:
    """The insight fields of a successful multi-platform build: ``info`` is its image index
    (with each platform's layers), ``facts`` each platform's build log, in the same order."""
    base = next((f.base_image for f in facts if f is not None and f.base_image), None)
    return {
        "largest_layers": largest_layers_per_platform(info, largest),
        "size_delta": size_delta(previous, info.size),
        "base_image": base,
        "base_size": base_size(info, base, base_layers),
        "cache": cache_fields(facts) if cache_enabled else None,
    }


def build_insight(previous: ImageBuildStatus, info: ImageInfo, facts: BuildLog | None,
                  base_layers: Sequence[Sequence[str]], *, largest: int,
                  cache_enabled: bool) -> dict[str, Any]:
    """The insight fields of a successful build's status."""
    fields: dict[str, Any] = {
        "largest_layers": largest_layer_fields(info, largest),
        "size_delta": size_delta(previous, info.size),
        "base_image": facts.base_image if facts else None,
        "base_size": base_size(info, facts.base_image if facts else None, base_layers),
        "cache": None,
    }
    if facts is not None and cache_enabled:
        cache = facts.cache
        fields["cache"] = {"hits": cache.hits, "misses": cache.misses, "summary": cache.summary}
    return fields


def success_message(tags: int, info: ImageInfo, fields: dict[str, Any]) -> str:
    """``Pushed 2 tag(s), 12.3MiB (+1.0MiB); cache 5/7.``; for an image index, ``Pushed 2
    tag(s): an image index of linux/amd64 (1.0MiB), linux/arm64 (1.1MiB), 2.1MiB ...``"""
    text = f"Pushed {tags} tag(s), {human_size(info.size)}"
    if info.platforms:
        each = ", ".join(f"{p.platform} ({human_size(p.size)})" for p in info.platforms)
        text = f"Pushed {tags} tag(s): an image index of {each}, {human_size(info.size)}"
    if fields.get("size_delta") is not None:
        text += f" ({signed_size(fields['size_delta'])} since the last build)"
    if fields.get("cache"):
        text += f"; cache {fields['cache']['summary']}"
    return text + "."


def over_budget_message(info: ImageInfo, budget: int, largest: list[dict[str, Any]]) -> str:
    """Why a build failed its size budget: size, budget, and where the bytes are."""
    layers = "; ".join(
        f"{human_size(entry['size'])} {entry.get('instruction') or entry['digest'][:19]}"
        for entry in largest[:3]
    )
    return (f"The image is {human_size(info.size)} ({info.size} bytes), over its "
            f"spec.output.maxSize budget of {human_size(budget)} ({budget} bytes) by "
            f"{human_size(info.size - budget)}; it was not given the output tags. "
            f"Largest layers: {layers or 'none'}.")
