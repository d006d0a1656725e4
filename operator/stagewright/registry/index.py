"""Image indexes the operator writes, and which platform an image is: pure.

A multi-platform build's platforms each push their own image (to a staging tag); the
operator then writes one OCI image index naming each image by digest, with the platform its
config says, and puts that index under the output tags. The index's bytes are built here,
deterministically (the same children give the same digest), and an image's platform is read
from its config as containerd reads it (``os``, ``architecture``, ``variant``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stagewright.api.platforms import Platform
from stagewright.registry.errors import InvalidManifest
from stagewright.registry.manifests import OCI_INDEX, Descriptor


@dataclass(frozen=True)
class IndexChild:
    """One platform's image as an index names it."""

    platform: Platform
    digest: str
    media_type: str
    #: Bytes of the image manifest (the descriptor's size).
    size: int


def config_platform(config: dict[str, Any], where: str) -> Platform:
    """The platform an image config says (``os``, ``architecture``, ``variant``)."""
    os_, architecture = config.get("os"), config.get("architecture")
    if not isinstance(os_, str) or not isinstance(architecture, str) or not os_ or not (
            architecture):
        raise InvalidManifest(f"{where} names no os and architecture in its config")
    variant = config.get("variant")
    return Platform(os_, architecture, variant if isinstance(variant, str) else "")


def descriptor_platform(child: Descriptor) -> Platform | None:
    """The platform an index entry names, if any."""
    if child.platform is None:
        return None
    return Platform(child.platform.os, child.platform.architecture, child.platform.variant or "")


def match_child(children: Sequence[Descriptor], wanted: Platform) -> Descriptor | None:
    """The entry of an index for ``wanted`` (``linux/arm64`` matches ``linux/arm64/v8``), as a
    builder picks it; None when the index has none."""
    for child in children:
        platform = descriptor_platform(child)
        if platform is not None and platform.matches(wanted):
            return child
    return None


def image_index(children: Sequence[IndexChild]) -> bytes:
    """An OCI image index of ``children``, in their order, as compact JSON bytes."""
    manifests = []
    for child in children:
        platform: dict[str, str] = {"architecture": child.platform.architecture,
                                    "os": child.platform.os}
        if child.platform.variant:
            platform["variant"] = child.platform.variant
        manifests.append({"mediaType": child.media_type, "digest": child.digest,
                          "size": child.size, "platform": platform})
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return json.dumps(document, separators=(",", ":")).encode()


def digest_of(body: bytes) -> str:
    """The sha256 digest a registry gives ``body``."""
    return "sha256:" + hashlib.sha256(body).hexdigest()
