"""Resolve a pushed image to the registry's digest and size: the OCI distribution API on aiohttp.

Hand-written because what the operator needs is small but must be async and bounded:
python-dxf is synchronous (requests), and oras-py is built to push and pull artifacts, not
to size images. This is one manifest GET per single-platform image, the registry token
dance (registry.auth), and go-containerregistry's https-then-http fallback for insecure
registries (registry.transport); what a manifest means is registry.manifests.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from stagewright.api.platforms import Platform
from stagewright.registry.auth import Authenticator, Target, target_for
from stagewright.registry.egress import Resolver, system_resolver
from stagewright.registry.errors import ImageNotFound, InvalidManifest, RegistryError
from stagewright.registry.index import (
    IndexChild,
    config_platform,
    descriptor_platform,
    match_child,
)
from stagewright.registry.layers import pair_layers
from stagewright.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MEDIA_TYPES,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    Manifest,
    announced_digest,
    check_config_size,
    image_manifest,
    image_size,
    parse_config,
    parse_manifest,
    platform_image,
    platform_images,
)
from stagewright.registry.models import ImageInfo, Layer, PlatformImage
from stagewright.registry.reference import ImageReference
from stagewright.registry.transport import MAX_ERROR_BODY, Transport, upload_path

# The media types and the manifest limit were defined here before the split; tests and tools
# import them from this module.
__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "MAX_MANIFEST_BYTES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "RegistryClient",
]

_CHILD_CONCURRENCY = 4
#: Image configs kept by digest (content-addressed, so never stale), each at most this big:
#: rebuilds of the same image, and images that share a config, read it once.
_CONFIG_CACHE_ENTRIES = 256
_CONFIG_CACHE_MAX_BYTES = 64 * 1024
#: What else of a config is kept: the platform it says.
_PLATFORM_KEYS = ("os", "architecture", "variant")


class RegistryClient:
    """``async with RegistryClient(timeout=10) as c: info = await c.resolve(ref)``.

    Safe to share between concurrent resolves; tokens are cached per registry, scope and
    credentials for their lifetime. Every request is bounded by ``timeout`` seconds in
    total, and manifest bodies by ``max_manifest_bytes``.
    """

    def __init__(self, timeout: float, max_manifest_bytes: int = MAX_MANIFEST_BYTES,
                 ca_bundle: Path | None = None, allow: Sequence[str] = (),
                 resolver: Resolver = system_resolver,
                 observer: Callable[[str, float], None] | None = None) -> None:
        if timeout <= 0 or max_manifest_bytes <= 0:
            raise ValueError("timeout and max_manifest_bytes must be positive")
        self._max_manifest_bytes = max_manifest_bytes
        self._transport = Transport(timeout, max_manifest_bytes, ca_bundle, allow, resolver,
                                    observer)
        self._auth = Authenticator(self._transport)
        #: Image config histories by config digest, most recently used last (see _config).
        self._histories: OrderedDict[str, dict[str, Any]] = OrderedDict()

    async def __aenter__(self) -> Self:
        await self._transport.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def trust_context(self) -> ssl.SSLContext:
        """The system's CAs plus the CA bundle, if any: added to the default trust, never
        replacing it (as ``SSL_CERT_FILE`` would)."""
        return self._transport.trust_context()

    async def resolve(
        self,
        ref: ImageReference,
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
        details: bool = False,
    ) -> ImageInfo:
        """The image ``ref`` names, as the registry serves it now.

        ``insecure``: the registry may have an untrusted certificate or speak plain HTTP.
        ``docker_config``: a parsed ``.dockerconfigjson``, searched for this registry.
        ``details``: also read each image's config blob (one more GET per platform) to name
        each of ``layer_details`` by the instruction that made it.
        """
        target = target_for(ref, insecure, docker_config)
        manifest = await self._manifest(target, ref.reference)  # checks a requested digest
        if manifest.media_type in IMAGE_MEDIA_TYPES:
            image = image_manifest(target.ref, manifest)
            return ImageInfo(
                digest=manifest.digest, media_type=manifest.media_type, size=image_size(image),
                layers=len(image.layers),
                layer_details=await self._details(target, image, details),
            )
        platforms = await self._platforms(target, manifest, details)
        return ImageInfo(
            digest=manifest.digest,
            media_type=manifest.media_type,
            size=sum(p.size for p in platforms),
            layers=sum(p.layers for p in platforms),
            platforms=tuple(platforms),
        )

    async def tag(
        self,
        ref: ImageReference,
        tags: list[str],
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
    ) -> None:
        """Point each of ``tags`` at the manifest ``ref`` names by digest, in its repository.

        The manifest's exact bytes are PUT under each tag (the distribution API's way to
        tag; no blob moves, the digest stays), so each tag switches atomically from its old
        image to this one. Needs push access, as the credentials that pushed it have.
        """
        target = target_for(ref, insecure, docker_config)
        manifest = await self._manifest(target, ref.reference)
        if manifest.digest != ref.reference:
            raise InvalidManifest(f"tag() needs a reference by digest, got {ref}")
        for tag in tags:
            path = f"/v2/{target.ref.repository}/manifests/{tag}"
            headers = {"Content-Type": manifest.media_type}
            reply = await self._auth.authorized("PUT", target, path, tag, limit=MAX_ERROR_BODY,
                                                content=manifest.body, extra_headers=headers)
            given = reply.headers.get("docker-content-digest")
            if given and given != manifest.digest:
                raise InvalidManifest(
                    f"registry {target.host} stored {given} under tag {tag}, not "
                    f"{manifest.digest}"
                )

    async def manifest(
        self,
        reference: ImageReference,
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
    ) -> Manifest | None:
        """A manifest as stored (its exact bytes, media type and digest), or None when the
        registry has none under ``reference``: what a signature or attestation is added to."""
        target = target_for(reference, insecure, docker_config)
        try:
            return await self._manifest(target, reference.reference)
        except ImageNotFound:
            return None

    async def push_blob(
        self,
        repository: ImageReference,
        data: bytes,
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
    ) -> str:
        """Upload ``data`` as a blob of ``repository`` (one monolithic upload, skipped when
        the registry has it already); returns its digest."""
        target = target_for(repository, insecure, docker_config)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob = f"/v2/{target.ref.repository}/blobs/{digest}"
        try:
            await self._auth.authorized("HEAD", target, blob, digest, limit=MAX_ERROR_BODY)
            return digest
        except ImageNotFound:
            pass
        started = await self._auth.authorized(
            "POST", target, f"/v2/{target.ref.repository}/blobs/uploads/", digest,
            limit=MAX_ERROR_BODY)
        await self._auth.authorized(
            "PUT", target, upload_path(started.headers.get("location"), digest), digest,
            limit=MAX_ERROR_BODY, content=data,
            extra_headers={"Content-Type": "application/octet-stream"})
        return digest

    async def push_manifest(
        self,
        repository: ImageReference,
        tag: str,
        body: bytes,
        media_type: str,
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
    ) -> str:
        """PUT a manifest under ``tag``; its digest, checked against what the registry says
        it stored."""
        target = target_for(repository, insecure, docker_config)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        reply = await self._auth.authorized(
            "PUT", target, f"/v2/{target.ref.repository}/manifests/{tag}", tag,
            limit=MAX_ERROR_BODY, content=body, extra_headers={"Content-Type": media_type})
        given = reply.headers.get("docker-content-digest")
        if given and given != digest:
            raise InvalidManifest(f"registry {target.host} stored {given} under tag {tag}, "
                                  f"not {digest}")
        return digest

    async def image_child(
        self,
        ref: ImageReference,
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
    ) -> IndexChild:
        """The image manifest ``ref`` names by digest, as an image index would list it: its
        media type, size in bytes, and the platform its config says (one more GET)."""
        target = target_for(ref, insecure, docker_config)
        manifest = await self._manifest(target, ref.reference)
        if manifest.media_type not in IMAGE_MEDIA_TYPES:
            raise InvalidManifest(f"{ref} is a {manifest.media_type}, not an image manifest")
        image = image_manifest(target.ref, manifest)
        config = await self._config(target, image.config)
        return IndexChild(config_platform(config, str(ref)), manifest.digest,
                          manifest.media_type, manifest.size_bytes)

    async def select_platform(
        self,
        ref: ImageReference,
        platform: Platform,
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
    ) -> tuple[str, Platform]:
        """The image a builder asked for ``platform`` gets from ``ref``, by digest, and the
        platform that image really is.

        From an index: the entry for ``platform`` (InvalidManifest when there is none). A
        single image is used as it is, whatever platform was asked (as Kaniko and docker
        do), so its config says what it is.
        """
        target = target_for(ref, insecure, docker_config)
        manifest = await self._manifest(target, ref.reference)
        if manifest.media_type in IMAGE_MEDIA_TYPES:
            image = image_manifest(target.ref, manifest)
            config = await self._config(target, image.config)
            return manifest.digest, config_platform(config, str(ref))
        child = match_child(platform_images(target.ref, manifest), platform)
        found = descriptor_platform(child) if child is not None else None
        if child is None or found is None:
            raise InvalidManifest(f"{ref} has no image for {platform}")
        return child.digest, found

    async def head_digest(
        self,
        reference: ImageReference,
        *,
        insecure: bool = False,
        docker_config: Mapping[str, object] | None = None,
    ) -> str:
        """The digest of the manifest ``reference`` names, from one HEAD and never a GET.

        For polling base images: a HEAD moves no manifest, and Docker Hub counts it as a
        version check, not a pull. The digest is the registry's Docker-Content-Digest (the
        same Accept header as ``resolve``, so an index's digest for an index); a registry
        that sends none is an InvalidManifest. A 429 is RegistryRateLimited.
        """
        target = target_for(reference, insecure, docker_config)
        path = f"/v2/{target.ref.repository}/manifests/{reference.reference}"
        reply = await self._auth.authorized("HEAD", target, path, reference.reference,
                                            limit=MAX_ERROR_BODY)  # a HEAD has no body
        return announced_digest(target.ref, reference.reference,
                                reply.headers.get("docker-content-digest"))

    async def _platforms(self, target: Target, index: Manifest,
                         details: bool) -> list[PlatformImage]:
        """Fetch every platform image of an index, a few at a time, in index order."""
        images = platform_images(target.ref, index)
        semaphore = asyncio.Semaphore(_CHILD_CONCURRENCY)

        async def platform(child: Descriptor) -> PlatformImage:
            async with semaphore:
                return await self._platform(target, child, details)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(platform(child)) for child in images]
        except* RegistryError as errors:
            raise errors.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _platform(self, target: Target, child: Descriptor,
                        details: bool) -> PlatformImage:
        manifest = await self._manifest(target, child.digest)
        image = platform_image(target.ref, child, manifest)
        platform = child.platform
        assert platform is not None  # attestations and platform-less entries were skipped
        return PlatformImage(
            os=platform.os,
            architecture=platform.architecture,
            variant=platform.variant or None,
            digest=manifest.digest,
            media_type=manifest.media_type,
            size=image_size(image),
            layers=len(image.layers),
            layer_details=await self._details(target, image, details),
        )

    async def _details(self, target: Target, image: ImageManifest,
                       details: bool) -> tuple[Layer, ...]:
        """Each layer; named by the config's history when the caller asked (one more GET)."""
        layers = [(layer.digest, layer.size) for layer in image.layers]
        if not details:
            return tuple(Layer(digest=digest, size=size) for digest, size in layers)
        return pair_layers(await self._config(target, image.config), layers)

    async def _config(self, target: Target, descriptor: Descriptor) -> dict[str, Any]:
        """The image config blob: bounded, and checked against the manifest's digest and size.

        Only its history (to name layers) and platform are used, and those are kept by
        digest: a blob's content is fixed by its digest, so a config read once (and checked)
        is never read again while kept. The manifest that names it is still read every time: that is
        what proves the registry serves the image.
        """
        cached = self._histories.get(descriptor.digest)
        if cached is not None:
            self._histories.move_to_end(descriptor.digest)
            return cached
        check_config_size(target.ref, descriptor)
        reply = await self._auth.authorized(
            "GET", target, f"/v2/{target.ref.repository}/blobs/{descriptor.digest}",
            descriptor.digest, limit=MAX_CONFIG_BYTES)
        config = parse_config(target.ref, descriptor, reply.body, reply.complete)
        if descriptor.size <= _CONFIG_CACHE_MAX_BYTES:
            self._histories[descriptor.digest] = {
                key: config.get(key) for key in ("history", *_PLATFORM_KEYS)}
            while len(self._histories) > _CONFIG_CACHE_ENTRIES:
                self._histories.popitem(last=False)
        return config

    async def _manifest(self, target: Target, reference: str) -> Manifest:
        """GET one manifest, authenticating if asked, and check it is what the registry says."""
        path = f"/v2/{target.ref.repository}/manifests/{reference}"
        reply = await self._auth.authorized("GET", target, path, reference,
                                            limit=self._max_manifest_bytes)
        if not reply.complete:
            raise InvalidManifest(
                f"the manifest of {target.ref.name}:{reference} is larger than "
                f"{self._max_manifest_bytes} bytes; refusing to read it"
            )
        return parse_manifest(target.ref, reference, reply.body,
                              reply.headers.get("docker-content-digest"),
                              reply.headers.get("content-type"))
