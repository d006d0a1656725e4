"""What the registry says about a pushed image: the facts an ImageBuild's status records.

Frozen pydantic models with camelCase aliases like the API models, so
``ImageInfo.model_dump(mode="json", by_alias=True)`` reads like the rest of the project.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Layer(_Model):
    """One layer blob: its digest, compressed size, and the instruction that made it."""

    digest: str
    #: Compressed bytes as served.
    size: int = Field(ge=0)
    #: The config history's ``created_by``, cleaned (``RUN make``); None when unknown.
    instruction: str | None = None


class PlatformImage(_Model):
    """One platform's image inside an image index / manifest list."""

    os: str
    architecture: str
    variant: str | None = None
    #: Digest of this platform's image manifest.
    digest: str
    media_type: str
    #: Compressed bytes as served: config blob + layer blobs.
    size: int = Field(ge=0)
    #: Number of layer blobs.
    layers: int = Field(ge=0)
    #: Each layer in order; named by its instruction only when asked (one config GET).
    layer_details: tuple[Layer, ...] = ()

    @property
    def platform(self) -> str:
        """``os/architecture[/variant]``, as ``docker buildx --platform`` spells it."""
        parts = [self.os, self.architecture, *([self.variant] if self.variant else [])]
        return "/".join(parts)


class ImageInfo(_Model):
    """An image as the registry serves it, identified by the registry's own digest.

    For an index, ``size`` and ``layers`` are totals over ``platforms`` (what the registry
    stores for this image); for a single image ``platforms`` is empty.
    """

    #: The registry's digest of the top-level manifest (index or image): what to pin.
    digest: str
    media_type: str
    #: Compressed bytes as served (config + layers; summed over platforms for an index).
    size: int = Field(ge=0)
    layers: int = Field(ge=0)
    platforms: tuple[PlatformImage, ...] = ()
    #: A single image's layers in order (instructions only when asked); empty for an index.
    layer_details: tuple[Layer, ...] = ()
