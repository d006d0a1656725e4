"""What a registry's manifests mean: media types, image manifests and indexes, sizes, configs.

Pure: bytes and headers in, checked values or ``InvalidManifest`` out. The client fetches;
this decides whether what was fetched is what the registry says it is, and what it holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stagewright.registry.errors import InvalidManifest
from stagewright.registry.reference import ImageReference

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MEDIA_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
#: The Accept header of every request: each manifest kind the client can read.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: An image config is read for its history only; one larger than this is not a build's.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: Children of an index fetched at most; more is not a build's output.
MAX_INDEX_CHILDREN = 64
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
#: The digests a registry may name (the algorithms parse_manifest can check).
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Platform(_Lenient):
    os: str
    architecture: str
    variant: str | None = None


class Descriptor(_Lenient):
    media_type: str = Field("", alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    platform: Platform | None = None
    annotations: dict[str, str] = Field(default_factory=dict)


class ImageManifest(_Lenient):
    config: Descriptor
    layers: list[Descriptor]


class _Index(_Lenient):
    manifests: list[Descriptor]


@dataclass
class Manifest:
    digest: str
    media_type: str
    document: dict[str, Any]
    size_bytes: int
    #: The bytes as served: what a tag must point to, byte for byte, to keep the digest.
    body: bytes


def parse_manifest(ref: ImageReference, reference: str, body: bytes,
                   header: str | None, content_type: str | None) -> Manifest:
    """Check the body against the registry's digest and parse it; the digest is the registry's.

    ``header``: the answer's Docker-Content-Digest, if any.
    """
    where = f"{ref.name}:{reference}" if ":" not in reference else (
        f"{ref.name}@{reference}"
    )
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if header:
        algorithm, _, _hex = header.partition(":")
        if algorithm not in ("sha256", "sha512"):
            raise InvalidManifest(f"registry {ref.api_host} uses unsupported digest {header}")
        computed = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if computed != header:
            raise InvalidManifest(
                f"registry {ref.api_host} says the manifest of {where} has digest {header}, "
                f"but its content hashes to {computed}: it was altered in transit or storage"
            )
        digest = header
    if reference.startswith("sha") and ":" in reference and digest != reference:
        raise InvalidManifest(
            f"registry {ref.api_host} served {digest} when asked for {where}"
        )
    document = _json_object(body, f"the manifest of {where}")
    media_type = _media_type(where, content_type, document)
    return Manifest(digest, media_type, document, len(body), body)


def _media_type(where: str, content_type: str | None, document: dict[str, Any]) -> str:
    """The manifest's own mediaType, else the response's Content-Type, else its shape."""
    declared = document.get("mediaType")
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if isinstance(declared, str) and declared:
        media_type = declared
    elif header in IMAGE_MEDIA_TYPES | INDEX_MEDIA_TYPES:
        media_type = header
    elif document.get("schemaVersion") == 2 and "manifests" in document:
        media_type = OCI_INDEX
    elif document.get("schemaVersion") == 2 and "config" in document:
        media_type = OCI_MANIFEST
    else:
        media_type = header or "(none)"
    if document.get("schemaVersion") == 1 or "prettyjws" in media_type:
        raise InvalidManifest(
            f"{where} is a Docker schema 1 manifest, which is deprecated and has no sizes; "
            "push it again with a current client"
        )
    if media_type not in IMAGE_MEDIA_TYPES | INDEX_MEDIA_TYPES:
        raise InvalidManifest(
            f"{where} has unsupported media type {media_type}; expected a Docker v2 or OCI "
            "image manifest, image index or manifest list"
        )
    return media_type


def announced_digest(ref: ImageReference, reference: str, header: str | None) -> str:
    """The digest a HEAD answer names (its Docker-Content-Digest), which no body confirms:
    it must be there, well formed, and the one asked for when asked by digest."""
    where = f"{ref.name}:{reference}" if ":" not in reference else f"{ref.name}@{reference}"
    if not header:
        raise InvalidManifest(
            f"registry {ref.api_host} answered HEAD for {where} without a "
            "Docker-Content-Digest header; its digest cannot be known without a GET"
        )
    if not _DIGEST.fullmatch(header):
        raise InvalidManifest(f"registry {ref.api_host} named unsupported digest {header!r} "
                              f"for {where}")
    if reference.startswith("sha") and ":" in reference and header != reference:
        raise InvalidManifest(f"registry {ref.api_host} named {header} when asked for {where}")
    return header


def image_manifest(ref: ImageReference, manifest: Manifest) -> ImageManifest:
    try:
        return ImageManifest.model_validate(manifest.document)
    except ValidationError as exc:
        raise _invalid(ref, manifest.digest, "is not a valid image manifest", exc) from None


def platform_images(ref: ImageReference, index: Manifest) -> list[Descriptor]:
    """The platform images an index lists, in index order, attestations left out."""
    try:
        children = _Index.model_validate(index.document).manifests
    except ValidationError as exc:
        raise _invalid(ref, index.digest, "is not a valid image index", exc) from None
    images = [child for child in children if not _is_attestation(child)]
    if not images:
        raise InvalidManifest(
            f"image index {ref} ({index.digest}) lists no platform images"
        )
    if len(images) > MAX_INDEX_CHILDREN:
        raise InvalidManifest(
            f"image index {ref} lists {len(images)} platform images; "
            f"at most {MAX_INDEX_CHILDREN} are supported"
        )
    for child in images:
        if child.media_type not in IMAGE_MEDIA_TYPES:
            raise InvalidManifest(
                f"image index {ref} lists {child.digest} of media type "
                f"{child.media_type or '(none)'}; only image manifests can be sized"
            )
    return images


def platform_image(ref: ImageReference, child: Descriptor, manifest: Manifest) -> ImageManifest:
    """The image an index entry names, if the registry served exactly that entry."""
    if manifest.digest != child.digest or manifest.size_bytes != child.size:
        raise InvalidManifest(
            f"image index {ref} lists {child.digest} ({child.size} bytes) but the "
            f"registry served {manifest.digest} ({manifest.size_bytes} bytes)"
        )
    if manifest.media_type not in IMAGE_MEDIA_TYPES:
        raise InvalidManifest(
            f"{ref.name}@{child.digest} is a {manifest.media_type}, "
            "not an image manifest"
        )
    return image_manifest(ref, manifest)


def image_size(image: ImageManifest) -> int:
    """Compressed bytes as served: config + layers."""
    return image.config.size + sum(layer.size for layer in image.layers)


def check_config_size(ref: ImageReference, descriptor: Descriptor) -> None:
    """Refuse, before reading it, a config too large to be a build's."""
    if descriptor.size > MAX_CONFIG_BYTES:
        raise InvalidManifest(
            f"{_config_where(ref, descriptor)} is {descriptor.size} bytes, more than "
            f"{MAX_CONFIG_BYTES}; refusing to read it"
        )


def parse_config(ref: ImageReference, descriptor: Descriptor, body: bytes,
                 complete: bool) -> dict[str, Any]:
    """The image config blob, checked against the manifest's digest and size."""
    where = _config_where(ref, descriptor)
    algorithm, _, _ = descriptor.digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        raise InvalidManifest(f"{where} uses an unsupported digest algorithm")
    computed = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
    if not complete or computed != descriptor.digest:
        raise InvalidManifest(
            f"registry {ref.api_host} served {where} with content hashing to {computed} "
            f"({len(body)} bytes, {descriptor.size} expected)"
        )
    return _json_object(body, where)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """``body`` as a JSON object, or InvalidManifest saying what was not one."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidManifest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidManifest(f"{what} is not a JSON object")
    return document


def _config_where(ref: ImageReference, descriptor: Descriptor) -> str:
    return f"the config {descriptor.digest} of {ref.name}"


def _is_attestation(child: Descriptor) -> bool:
    """Entries that are no platform's image: attestations, signatures, platform-less artifacts."""
    platform = child.platform
    return (
        _ATTESTATION_ANNOTATION in child.annotations
        or platform is None
        or (platform.os == "unknown" and platform.architecture == "unknown")
    )


def _invalid(ref: ImageReference, digest: str, what: str, exc: ValidationError) -> InvalidManifest:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return InvalidManifest(
        f"{ref.name}@{digest} {what}: {location}: {first['msg']} "
        f"({exc.error_count()} problem(s))"
    )
