"""Resolve a pushed image to the registry's digest and size: the OCI distribution API on aiohttp.

Hand-written because what the operator needs is small but must be async and bounded:
python-dxf is synchronous (requests), and oras-py is built to push and pull artifacts, not
to size images. This is one manifest GET per single-platform image, the registry token
dance, and go-containerregistry's https-then-http fallback for insecure registries.

Why aiohttp: chosen by measurement (benchmarks/README.md), as for the API client. On httpx,
guarded by an httpcore network backend, the registry look-ups were a quarter of the
operator's CPU under a burst of a thousand builds; on aiohttp, one session for the operator's
life with the address guard as its resolver (registry.egress), a few percent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http
import json
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from stagewright.registry.credentials import Credentials, find_credentials
from stagewright.registry.egress import (
    ForbiddenAddressError,
    GuardedResolver,
    Resolver,
    host_allowed,
    refuse_forbidden_literal,
    system_resolver,
)
from stagewright.registry.errors import (
    ImageNotFound,
    InvalidManifest,
    RegistryAuthError,
    RegistryError,
    RegistryNotAllowed,
    RegistryTLSError,
    RegistryUnavailable,
)
from stagewright.registry.layers import pair_layers
from stagewright.registry.models import ImageInfo, Layer, PlatformImage
from stagewright.registry.reference import ImageReference

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_MEDIA_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_MEDIA_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
_ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: An image config is read for its history only; one larger than this is not a build's.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: Children of an index fetched at most; more is not a build's output.
MAX_INDEX_CHILDREN = 64
_CHILD_CONCURRENCY = 4
#: Image configs kept by digest (content-addressed, so never stale), each at most this big:
#: rebuilds of the same image, and images that share a config, read it once.
_CONFIG_CACHE_ENTRIES = 256
_CONFIG_CACHE_MAX_BYTES = 64 * 1024
#: Requests in flight per client at most (the rest wait in FIFO order): a burst of builds
#: asks each registry a bounded number of questions at a time.
MAX_CONCURRENT_REQUESTS = 32
#: Connections kept per client (aiohttp's default); one per request in flight is enough.
_MAX_CONNECTIONS = 100
_MAX_ERROR_BODY = 16 * 1024
#: Distribution's token spec: a token without expires_in lives 60 s, and none less.
_MIN_TOKEN_SECONDS = 60
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
_INSECURE_HINT = "set output.insecure: true on the ImageBuild"
#: Redirects followed per request (go-containerregistry follows 10; blob stores need 1-2).
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Platform(_Lenient):
    os: str
    architecture: str
    variant: str | None = None


class _Descriptor(_Lenient):
    media_type: str = Field("", alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    platform: _Platform | None = None
    annotations: dict[str, str] = Field(default_factory=dict)


class _ImageManifest(_Lenient):
    config: _Descriptor
    layers: list[_Descriptor]


class _Index(_Lenient):
    manifests: list[_Descriptor]


@dataclass(frozen=True)
class _Target:
    """One ``resolve`` call: which registry and repository, how to connect, as whom."""

    ref: ImageReference
    insecure: bool
    credentials: Credentials | None
    #: The ``auths`` keys of the docker config, to say what was there when nothing matched.
    config_keys: tuple[str, ...]
    #: Read config blobs too, to name each layer by its instruction.
    details: bool = False

    @property
    def host(self) -> str:
        return self.ref.api_host

    @property
    def default_scope(self) -> str:
        return f"repository:{self.ref.repository}:pull"

    @property
    def identity(self) -> str:
        """Who is asking: tokens are cached per identity, never shared between Secrets."""
        creds = self.credentials
        if creds is None:
            return "anonymous"
        raw = "\0".join(
            value or ""
            for value in (
                creds.username, creds.password, creds.identity_token, creds.registry_token
            )
        )
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    #: False when the body was longer than the limit (and was not read to the end).
    complete: bool


@dataclass
class _Manifest:
    digest: str
    media_type: str
    document: dict[str, Any]
    size_bytes: int
    #: The bytes as served: what a tag must point to, byte for byte, to keep the digest.
    body: bytes


@dataclass(frozen=True)
class _Call:
    """One request on a registry path: what to send, and how much of the answer to read."""

    method: str
    path: str
    limit: int
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class _Cache:
    """What the client learns about registries over its lifetime (no secrets but tokens)."""

    tokens: dict[tuple[str, str, str], _Token] = field(default_factory=dict)
    #: The scope a registry asked for, per (host, repository).
    scopes: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Hosts that asked for HTTP Basic: credentials are sent up front next time.
    basic_hosts: set[str] = field(default_factory=set)
    #: Insecure hosts found to speak plain HTTP.
    plain_http_hosts: set[str] = field(default_factory=set)
    #: Image config histories by config digest, most recently used last (see _config).
    histories: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)


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
        self._timeout = timeout
        self._ca_bundle = ca_bundle
        #: Host patterns the client may contact (egress.host_allowed); empty: any.
        self._allow = tuple(allow)
        self._resolver = resolver
        self._max_manifest_bytes = max_manifest_bytes
        self._session: aiohttp.ClientSession | None = None
        self._trust: ssl.SSLContext | None = None
        self._cache = _Cache()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        #: Told (status code or "error", seconds) of every request: metrics hook in here.
        self._observer = observer

    async def __aenter__(self) -> Self:
        self._trust = self.trust_context()
        # Redirects are followed by _send, which checks every hop (allow-list, no downgrade
        # to plain HTTP, no credentials to another host); every connection goes through the
        # address guard. No proxy from the environment (trust_env off): the guard checks the
        # addresses actually connected to. Certificates are checked per request (``ssl``), so
        # verified and unverified connections share the pool but never a connection.
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._resolver),
                                         limit=_MAX_CONNECTIONS, ssl=self._trust)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, headers={"User-Agent": "stagewright"},
            timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._session = None

    def trust_context(self) -> ssl.SSLContext:
        """The system's CAs plus the CA bundle, if any: added to the default trust, never
        replacing it (as ``SSL_CERT_FILE`` would)."""
        context = ssl.create_default_context()
        if self._ca_bundle is not None:
            context.load_verify_locations(cafile=str(self._ca_bundle))
        return context

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use RegistryClient as an async context manager")
        return self._session

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
        target = self._target(ref, insecure, docker_config, details)
        manifest = await self._manifest(target, ref.reference)  # checks a requested digest
        if manifest.media_type in IMAGE_MEDIA_TYPES:
            image = _image_manifest(target, manifest)
            return ImageInfo(
                digest=manifest.digest, media_type=manifest.media_type, size=_size(image),
                layers=len(image.layers), layer_details=await self._details(target, image),
            )
        platforms = await self._platforms(target, manifest)
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
        target = self._target(ref, insecure, docker_config)
        manifest = await self._manifest(target, ref.reference)
        if manifest.digest != ref.reference:
            raise InvalidManifest(f"tag() needs a reference by digest, got {ref}")
        for tag in tags:
            path = f"/v2/{target.ref.repository}/manifests/{tag}"
            headers = {"Content-Type": manifest.media_type}
            reply = await self._authorized("PUT", target, path, tag, limit=_MAX_ERROR_BODY,
                                           content=manifest.body, extra_headers=headers)
            given = reply.headers.get("docker-content-digest")
            if given and given != manifest.digest:
                raise InvalidManifest(
                    f"registry {target.host} stored {given} under tag {tag}, not "
                    f"{manifest.digest}"
                )

    def _target(self, ref: ImageReference, insecure: bool,
                docker_config: Mapping[str, object] | None, details: bool = False) -> _Target:
        try:
            credentials = find_credentials(docker_config, ref.registry)
        except ValueError as exc:
            raise RegistryAuthError(
                f"cannot use the credentials for registry {ref.registry}: {exc}"
            ) from None
        auths = (docker_config or {}).get("auths")
        keys = tuple(str(key) for key in auths) if isinstance(auths, Mapping) else ()
        return _Target(ref, insecure, credentials, keys, details)

    async def _platforms(self, target: _Target, index: _Manifest) -> list[PlatformImage]:
        """Fetch every platform image of an index, a few at a time, in index order."""
        try:
            children = _Index.model_validate(index.document).manifests
        except ValidationError as exc:
            raise _invalid(target, index.digest, "is not a valid image index", exc) from None
        images = [child for child in children if not _is_attestation(child)]
        if not images:
            raise InvalidManifest(
                f"image index {target.ref} ({index.digest}) lists no platform images"
            )
        if len(images) > MAX_INDEX_CHILDREN:
            raise InvalidManifest(
                f"image index {target.ref} lists {len(images)} platform images; "
                f"at most {MAX_INDEX_CHILDREN} are supported"
            )
        for child in images:
            if child.media_type not in IMAGE_MEDIA_TYPES:
                raise InvalidManifest(
                    f"image index {target.ref} lists {child.digest} of media type "
                    f"{child.media_type or '(none)'}; only image manifests can be sized"
                )
        semaphore = asyncio.Semaphore(_CHILD_CONCURRENCY)

        async def platform(child: _Descriptor) -> PlatformImage:
            async with semaphore:
                return await self._platform(target, child)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(platform(child)) for child in images]
        except* RegistryError as errors:
            raise errors.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _platform(self, target: _Target, child: _Descriptor) -> PlatformImage:
        manifest = await self._manifest(target, child.digest)
        if manifest.digest != child.digest or manifest.size_bytes != child.size:
            raise InvalidManifest(
                f"image index {target.ref} lists {child.digest} ({child.size} bytes) but the "
                f"registry served {manifest.digest} ({manifest.size_bytes} bytes)"
            )
        if manifest.media_type not in IMAGE_MEDIA_TYPES:
            raise InvalidManifest(
                f"{target.ref.name}@{child.digest} is a {manifest.media_type}, "
                "not an image manifest"
            )
        image = _image_manifest(target, manifest)
        platform = child.platform
        assert platform is not None  # attestations and platform-less entries were skipped
        return PlatformImage(
            os=platform.os,
            architecture=platform.architecture,
            variant=platform.variant or None,
            digest=manifest.digest,
            media_type=manifest.media_type,
            size=_size(image),
            layers=len(image.layers),
            layer_details=await self._details(target, image),
        )

    async def _details(self, target: _Target, image: _ImageManifest) -> tuple[Layer, ...]:
        """Each layer; named by the config's history when the caller asked (one more GET)."""
        layers = [(layer.digest, layer.size) for layer in image.layers]
        if not target.details:
            return tuple(Layer(digest=digest, size=size) for digest, size in layers)
        return pair_layers(await self._config(target, image.config), layers)

    async def _config(self, target: _Target, descriptor: _Descriptor) -> dict[str, Any]:
        """The image config blob: bounded, and checked against the manifest's digest and size.

        Only its history is used (to name layers), and that is kept by digest: a blob's
        content is fixed by its digest, so a config read once (and checked) is never read
        again while kept. The manifest that names it is still read every time: that is
        what proves the registry serves the image.
        """
        cached = self._cache.histories.get(descriptor.digest)
        if cached is not None:
            self._cache.histories.move_to_end(descriptor.digest)
            return cached
        config = await self._read_config(target, descriptor)
        if descriptor.size <= _CONFIG_CACHE_MAX_BYTES:
            self._cache.histories[descriptor.digest] = {"history": config.get("history")}
            while len(self._cache.histories) > _CONFIG_CACHE_ENTRIES:
                self._cache.histories.popitem(last=False)
        return config

    async def _read_config(self, target: _Target, descriptor: _Descriptor) -> dict[str, Any]:
        where = f"the config {descriptor.digest} of {target.ref.name}"
        if descriptor.size > MAX_CONFIG_BYTES:
            raise InvalidManifest(
                f"{where} is {descriptor.size} bytes, more than {MAX_CONFIG_BYTES}; "
                "refusing to read it"
            )
        reply = await self._authorized(
            "GET", target, f"/v2/{target.ref.repository}/blobs/{descriptor.digest}",
            descriptor.digest, limit=MAX_CONFIG_BYTES)
        algorithm, _, _ = descriptor.digest.partition(":")
        if algorithm not in ("sha256", "sha512"):
            raise InvalidManifest(f"{where} uses an unsupported digest algorithm")
        computed = f"{algorithm}:{hashlib.new(algorithm, reply.body).hexdigest()}"
        if not reply.complete or computed != descriptor.digest:
            raise InvalidManifest(
                f"registry {target.host} served {where} with content hashing to {computed} "
                f"({len(reply.body)} bytes, {descriptor.size} expected)"
            )
        try:
            config = json.loads(reply.body)
        except ValueError as exc:
            raise InvalidManifest(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise InvalidManifest(f"{where} is not a JSON object")
        return config

    async def _manifest(self, target: _Target, reference: str) -> _Manifest:
        """GET one manifest, authenticating if asked, and check it is what the registry says."""
        path = f"/v2/{target.ref.repository}/manifests/{reference}"
        reply = await self._authorized("GET", target, path, reference,
                                       limit=self._max_manifest_bytes)
        if not reply.complete:
            raise InvalidManifest(
                f"the manifest of {target.ref.name}:{reference} is larger than "
                f"{self._max_manifest_bytes} bytes; refusing to read it"
            )
        return _parse_manifest(target, reference, reply)

    async def _authorized(self, method: str, target: _Target, path: str, reference: str, *,
                          limit: int, content: bytes | None = None,
                          extra_headers: Mapping[str, str] | None = None) -> _Reply:
        """One call on a manifest or blob, answering one authentication challenge.

        Returns a 2xx reply, or raises the error class that says what to do.
        """
        call = _Call(method, path, limit, content, dict(extra_headers or {}))
        authorization = self._known_authorization(target)
        reply = await self._get(target, call, authorization)
        if reply.status == 401:
            self._forget_token(target)
            authorization = await self._answer_challenge(target, reply.headers)
            reply = await self._get(target, call, authorization)
            if reply.status == 401:
                raise _rejected(target, reply)
        if method != "GET" and reply.status in (200, 201, 202):
            return reply
        _raise_for_status(target, reference, reply)
        return reply

    async def _get(self, target: _Target, call: _Call, authorization: str | None) -> _Reply:
        """The call over https; for an insecure registry, unverified https then plain http."""
        path, limit = call.path, call.limit
        headers = {"Accept": _ACCEPT, **call.headers}
        if authorization:
            headers["Authorization"] = authorization
        host = target.host
        if not target.insecure:
            return await self._send(call.method, f"https://{host}{path}", True,
                                    headers=headers, limit=limit, content=call.content)
        if host not in self._cache.plain_http_hosts:
            try:
                return await self._send(
                    call.method, f"https://{host}{path}", False, headers=headers,
                    fallback=True, plain_http_host=host, limit=limit, content=call.content,
                )
            except _FallBack:
                pass
        try:
            reply = await self._send(call.method, f"http://{host}{path}", False,
                                     headers=headers, plain_http_host=host, limit=limit,
                                     content=call.content)
        except RegistryUnavailable:
            self._cache.plain_http_hosts.discard(host)  # try https again next time
            raise
        self._cache.plain_http_hosts.add(host)
        return reply

    async def _send(
        self,
        method: str,
        url: str,
        verify: bool,
        *,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None = None,
        fallback: bool = False,
        plain_http_host: str | None = None,
        limit: int | None = None,
        content: bytes | None = None,
    ) -> _Reply:
        """``_send_once`` with at most MAX_CONCURRENT_REQUESTS in flight, observed for metrics."""
        async with self._slots:  # waiting for a slot is not the registry's slowness: untimed
            started, code = time.monotonic(), "error"
            try:
                reply = await self._send_once(method, url, verify, headers=headers, data=data,
                                              fallback=fallback,
                                              plain_http_host=plain_http_host, limit=limit,
                                              content=content)
                code = str(reply.status)
                return reply
            finally:
                if self._observer is not None:
                    self._observer(code, time.monotonic() - started)

    async def _send_once(
        self,
        method: str,
        url: str,
        verify: bool,
        *,
        headers: Mapping[str, str],
        data: Mapping[str, str] | None = None,
        fallback: bool = False,
        plain_http_host: str | None = None,
        limit: int | None = None,
        content: bytes | None = None,
    ) -> _Reply:
        """One request within the timeout, redirects included; the body is read up to
        ``limit`` (default: the manifest limit).

        Each redirect hop must be allowed, may use plain HTTP only towards
        ``plain_http_host`` (an insecure registry), and loses the Authorization header when
        it leaves the host the credentials were meant for.
        """
        host = _netloc(URL(url, encoded=True))
        session = self._open()
        tls: ssl.SSLContext | bool = (self._trust or True) if verify else False
        try:
            async with asyncio.timeout(self._timeout):
                for _ in range(_MAX_REDIRECTS + 1):
                    target = URL(url, encoded=True)
                    self._check_destination(target, host, plain_http_host)
                    async with session.request(method, target, headers=headers,
                                               data=data if data is not None else content,
                                               allow_redirects=False, ssl=tls) as response:
                        location = response.headers.get("location")
                        if response.status in _REDIRECTS and location:
                            next_url = response.url.join(URL(location, encoded=True))
                            if _netloc(next_url) != _netloc(response.url):
                                headers = {k: v for k, v in headers.items()
                                           if k.lower() != "authorization"}
                            url = str(next_url)
                            continue
                        wanted = limit or self._max_manifest_bytes
                        body, complete = await _read_bounded(
                            response, wanted if 200 <= response.status < 300
                            else _MAX_ERROR_BODY)
                        return _Reply(response.status, response.headers, body, complete)
                raise RegistryUnavailable(f"registry {host}: more than {_MAX_REDIRECTS} "
                                          "redirects")
        except ForbiddenAddressError as exc:  # an IP literal, refused before connecting
            raise RegistryNotAllowed(f"registry {host}: {exc}") from None
        except aiohttp.ClientConnectorError as exc:  # resolving, connecting, TLS handshake
            if _caused_by(exc, ForbiddenAddressError):
                raise RegistryNotAllowed(f"registry {host}: {exc.os_error}") from None
            if fallback:
                raise _FallBack from exc
            raise _connect_error(host, exc) from None
        except TimeoutError:
            raise RegistryUnavailable(
                f"registry {host} did not answer within {self._timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise RegistryUnavailable(
                f"connection to registry {host} failed: {exc or type(exc).__name__}"
            ) from None

    def _check_destination(self, url: URL, origin: str,
                           plain_http_host: str | None) -> None:
        """Refuse a request (or redirect hop) the operator must not make."""
        host = _netloc(url)
        refuse_forbidden_literal(host)
        if not host_allowed(host, self._allow):
            raise RegistryNotAllowed(
                f"registry {origin} led to {host}, which is not in the operator's allowed "
                f"registries (STAGEWRIGHT_REGISTRY_ALLOW: {', '.join(self._allow)})"
                if host != origin else
                f"registry {host} is not in the operator's allowed registries "
                f"(STAGEWRIGHT_REGISTRY_ALLOW: {', '.join(self._allow)})")
        if url.scheme != "https" and host != plain_http_host:
            raise RegistryTLSError(
                f"registry {origin} redirected to plain-HTTP {url}; refusing to downgrade "
                f"({_INSECURE_HINT} only if that registry really speaks plain HTTP)")

    def _known_authorization(self, target: _Target) -> str | None:
        """An Authorization header from what earlier requests taught us, to save a 401."""
        scope = self._cache.scopes.get((target.host, target.ref.repository), target.default_scope)
        token = self._cache.tokens.get((target.host, scope, target.identity))
        if token is not None and token.expires > time.monotonic():
            return f"Bearer {token.value}"
        creds = target.credentials
        if target.host in self._cache.basic_hosts and creds is not None and creds.basic:
            return _basic_header(*creds.basic)
        return None

    def _forget_token(self, target: _Target) -> None:
        scope = self._cache.scopes.get((target.host, target.ref.repository), target.default_scope)
        self._cache.tokens.pop((target.host, scope, target.identity), None)

    async def _answer_challenge(self, target: _Target, headers: CIMultiDictProxy[str]) -> str:
        """Turn a 401's ``WWW-Authenticate`` into an Authorization header, or explain why not."""
        challenges = parse_challenges(headers.getall("www-authenticate", []))
        bearer = challenges.get("bearer")
        if bearer is not None and bearer.get("realm"):
            return f"Bearer {await self._token(target, bearer)}"
        if "basic" in challenges:
            creds = target.credentials
            if creds is None or creds.basic is None:
                raise RegistryAuthError(_no_credentials(target))
            self._cache.basic_hosts.add(target.host)
            return _basic_header(*creds.basic)
        offered = ", ".join(headers.getall("www-authenticate", [])) or (
            "no WWW-Authenticate header")
        raise RegistryAuthError(
            f"registry {target.host} requires authentication that is not supported ({offered})"
        )

    async def _token(self, target: _Target, challenge: Mapping[str, str]) -> str:
        """A bearer token from the challenge's realm (distribution's token protocol)."""
        creds = target.credentials
        if creds is not None and creds.registry_token:
            return creds.registry_token
        scope = challenge.get("scope") or target.default_scope
        self._cache.scopes[(target.host, target.ref.repository)] = scope
        key = (target.host, scope, target.identity)
        cached = self._cache.tokens.get(key)
        now = time.monotonic()
        if cached is not None and cached.expires > now:
            return cached.value

        realm_url = URL(challenge["realm"]) if _parsable(challenge["realm"]) else None
        if realm_url is not None and not _same_site(realm_url.host or "", target.ref.registry):
            # A registry may name any token service; the tenant's credentials for this
            # registry go only to this registry's own site (auth.docker.io for docker.io).
            creds = None
        realm = _realm(target, challenge["realm"], sends_secret=creds is not None)
        verify = not (target.insecure and _netloc(realm) == target.host)
        plain_http_host = target.host if target.insecure else None
        service = [("service", challenge["service"])] if challenge.get("service") else []
        params = [*service, *(("scope", part) for part in scope.split())]
        url = str(realm.update_query(params))
        reply: _Reply | None = None
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "stagewright", "scope": scope, **dict(service)}
            reply = await self._send("POST", str(realm), verify, headers={}, data=form,
                                     plain_http_host=plain_http_host)
            if reply.status in (400, 404, 405):  # no OAuth2 endpoint: Basic GET below
                reply = None
        if reply is None:
            basic = _token_basic(creds)
            headers = {"Authorization": _basic_header(*basic)} if basic else {}
            reply = await self._send("GET", url, verify, headers=headers,
                                     plain_http_host=plain_http_host)
        value, lifetime = _read_token(target, realm, reply)
        self._cache.tokens = {k: t for k, t in self._cache.tokens.items() if t.expires > now}
        self._cache.tokens[key] = _Token(value, now + lifetime * 0.9)
        return value


class _FallBack(Exception):  # noqa: N818 - control flow, never escapes this module
    """Unverified https could not connect: try plain http (insecure registries only)."""


_CHALLENGE_PART = re.compile(
    r"""\s*(?:
        (?P<key>[!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*
            (?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^\s,]*))
        |(?P<scheme>[!#$%&'*+.^_`|~0-9A-Za-z-]+)
    )\s*,?""",
    re.VERBOSE,
)


def parse_challenges(values: list[str]) -> dict[str, dict[str, str]]:
    """``WWW-Authenticate`` values -> {scheme (lowercase): {param (lowercase): value}}."""
    challenges: dict[str, dict[str, str]] = {}
    for value in values:
        current: dict[str, str] | None = None
        for match in _CHALLENGE_PART.finditer(value):
            if match["scheme"]:
                current = challenges.setdefault(match["scheme"].lower(), {})
            elif match["key"] and current is not None:
                raw = match["quoted"] if match["quoted"] is not None else match["token"]
                current[match["key"].lower()] = re.sub(r"\\(.)", r"\1", raw or "")
    return challenges


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, or its first ``limit`` bytes and False: a registry cannot make us buffer GBs."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return b"", False
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return b"".join(chunks)[:limit], False
    return b"".join(chunks), True


def _parse_manifest(target: _Target, reference: str, reply: _Reply) -> _Manifest:
    """Check the body against the registry's digest and parse it; the digest is the registry's."""
    where = f"{target.ref.name}:{reference}" if ":" not in reference else (
        f"{target.ref.name}@{reference}"
    )
    header = reply.headers.get("docker-content-digest")
    digest = "sha256:" + hashlib.sha256(reply.body).hexdigest()
    if header:
        algorithm, _, _hex = header.partition(":")
        if algorithm not in ("sha256", "sha512"):
            raise InvalidManifest(f"registry {target.host} uses unsupported digest {header}")
        computed = f"{algorithm}:{hashlib.new(algorithm, reply.body).hexdigest()}"
        if computed != header:
            raise InvalidManifest(
                f"registry {target.host} says the manifest of {where} has digest {header}, "
                f"but its content hashes to {computed}: it was altered in transit or storage"
            )
        digest = header
    if reference.startswith("sha") and ":" in reference and digest != reference:
        raise InvalidManifest(
            f"registry {target.host} served {digest} when asked for {where}"
        )
    try:
        document = json.loads(reply.body)
    except ValueError as exc:
        raise InvalidManifest(f"the manifest of {where} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidManifest(f"the manifest of {where} is not a JSON object")
    media_type = _media_type(where, reply.headers.get("content-type"), document)
    return _Manifest(digest, media_type, document, len(reply.body), reply.body)


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


def _image_manifest(target: _Target, manifest: _Manifest) -> _ImageManifest:
    try:
        return _ImageManifest.model_validate(manifest.document)
    except ValidationError as exc:
        raise _invalid(target, manifest.digest, "is not a valid image manifest", exc) from None


def _size(image: _ImageManifest) -> int:
    """Compressed bytes as served: config + layers."""
    return image.config.size + sum(layer.size for layer in image.layers)


def _is_attestation(child: _Descriptor) -> bool:
    """Entries that are no platform's image: attestations, signatures, platform-less artifacts."""
    platform = child.platform
    return (
        _ATTESTATION_ANNOTATION in child.annotations
        or platform is None
        or (platform.os == "unknown" and platform.architecture == "unknown")
    )


def _invalid(target: _Target, digest: str, what: str, exc: ValidationError) -> InvalidManifest:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return InvalidManifest(
        f"{target.ref.name}@{digest} {what}: {location}: {first['msg']} "
        f"({exc.error_count()} problem(s))"
    )


def _raise_for_status(target: _Target, reference: str, reply: _Reply) -> None:
    """Map a non-200 answer to the error class that tells the operator what to do."""
    status = reply.status
    if status == 200:
        return
    codes, detail = _error_detail(reply)
    image = target.ref if reference == target.ref.reference else (
        f"{target.ref.name}@{reference}"
    )
    if status == 404 or codes & _NOT_FOUND_CODES:
        raise ImageNotFound(
            f"image {image} not found in registry {target.host} ({detail}); check the "
            "repository and tag, and that the push succeeded"
        )
    if status == 403:
        raise _rejected(target, reply)
    if status == 429:
        retry = reply.headers.get("retry-after")
        raise RegistryUnavailable(
            f"registry {target.host} is rate-limiting requests (429"
            f"{f', retry after {retry} s' if retry else ''})"
        )
    if status >= 500:
        raise RegistryUnavailable(f"registry {target.host} answered {status} ({detail})")
    raise RegistryError(
        f"registry {target.host} answered {status} for image {image} ({detail})"
    )


def _error_detail(reply: _Reply) -> tuple[set[str], str]:
    """Distribution's ``{"errors": [{code, message}]}``, else the status's reason."""
    try:
        errors = json.loads(reply.body).get("errors") or []
        codes = {str(e.get("code")) for e in errors if isinstance(e, dict)}
        detail = "; ".join(
            f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)
        )
    except (ValueError, AttributeError):
        codes, detail = set(), ""
    return codes, detail or f"HTTP {reply.status} {_reason_phrase(reply.status)}"


def _reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _netloc(url: URL) -> str:
    """``host[:port]`` as written (the port only when explicit), IPv6 in brackets."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.explicit_port}" if url.explicit_port is not None else host


def _rejected(target: _Target, reply: _Reply) -> RegistryAuthError:
    _, detail = _error_detail(reply)
    if target.credentials is None:
        return RegistryAuthError(_no_credentials(target, detail))
    return RegistryAuthError(
        f"registry {target.host} refused the credentials found under "
        f"auths[{target.credentials.key!r}] of the docker config ({detail}); check the user, "
        f"password or token, and that they may pull {target.ref.repository}"
    )


def _no_credentials(target: _Target, detail: str = "authentication required") -> str:
    found = (
        f"the docker config has entries for {', '.join(target.config_keys)}"
        if target.config_keys else "no docker config was given"
    )
    return (
        f"registry {target.host} requires authentication ({detail}) and no credentials for "
        f"{target.ref.registry} were found ({found}); add them to the push Secret "
        "(a kubernetes.io/dockerconfigjson Secret)"
    )


def _realm(target: _Target, realm: str, *, sends_secret: bool) -> URL:
    """The token service URL; credentials go over plain http only to an insecure registry."""
    try:
        url: URL | None = URL(realm)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise RegistryAuthError(
            f"registry {target.host} named an unusable token service realm {realm!r}"
        )
    if url.scheme == "http" and sends_secret and not target.insecure:
        raise RegistryAuthError(
            f"registry {target.host} asks for credentials at plain-HTTP {realm}; refusing "
            f"to send them unencrypted ({_INSECURE_HINT} only if that is intended)"
        )
    return url


def _parsable(url: str) -> bool:
    try:
        URL(url)
    except ValueError:
        return False
    return True


def _same_site(realm_host: str, registry: str) -> bool:
    """Whether a token realm belongs to the registry's own site.

    The same host, or a host under the registry's parent domain (``auth.docker.io`` for
    ``registry-1.docker.io``); IP addresses only match themselves.
    """
    realm_host = realm_host.lower().strip("[]")
    registry_host = registry.lower().rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    registry_host = registry_host.strip("[]")
    if realm_host == registry_host:
        return True
    labels = registry_host.split(".")
    if len(labels) < 3 or registry_host.replace(".", "").isdigit():
        return realm_host.endswith("." + registry_host)
    return realm_host.endswith("." + ".".join(labels[1:]))


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _token_basic(creds: Credentials | None) -> tuple[str, str] | None:
    if creds is None:
        return None
    if creds.identity_token:
        return creds.username or "<token>", creds.identity_token
    return creds.basic


def _read_token(target: _Target, realm: URL, reply: _Reply) -> tuple[str, float]:
    """``token`` (or OAuth2's ``access_token``) and its lifetime in seconds."""
    service = _netloc(realm)
    if reply.status in (401, 403):
        _, detail = _error_detail(reply)
        if target.credentials is None:
            raise RegistryAuthError(_no_credentials(target, f"token service {service}: {detail}"))
        raise RegistryAuthError(
            f"token service {service} of registry {target.host} refused the credentials "
            f"found under auths[{target.credentials.key!r}] of the docker config ({detail})"
        )
    if reply.status == 429 or reply.status >= 500:
        raise RegistryUnavailable(
            f"token service {service} of registry {target.host} answered {reply.status}"
        )
    try:
        if reply.status != 200 or not reply.complete:
            raise ValueError(f"HTTP {reply.status}")
        answer = json.loads(reply.body)
        value = answer.get("token") or answer.get("access_token")
        if not isinstance(value, str) or not value:
            raise ValueError("no token in the answer")
        lifetime = answer.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else 0.0
    except (ValueError, AttributeError) as exc:
        raise RegistryAuthError(
            f"token service {service} of registry {target.host} gave no usable token: {exc}"
        ) from None
    return value, max(seconds, _MIN_TOKEN_SECONDS)


def _basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _connect_error(host: str, exc: aiohttp.ClientConnectorError) -> RegistryError:
    """A TLS failure is a configuration problem; anything else is worth retrying."""
    # aiohttp's error wraps the ssl or OS error it met (its TLS errors are ssl.SSLErrors
    # themselves, without the details): start from the one it wraps.
    cause: BaseException | None = (exc.certificate_error
                                   if isinstance(exc, aiohttp.ClientConnectorCertificateError)
                                   else exc.os_error)
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return RegistryTLSError(
            f"the TLS certificate of registry {host} is not trusted "
            f"({cause.verify_message}); if the registry uses a self-signed or private-CA "
            f"certificate, {_INSECURE_HINT}"
        )
    if isinstance(cause, ssl.SSLError):
        return RegistryTLSError(
            f"TLS handshake with registry {host} failed ({cause.reason or cause}); if the "
            f"registry serves plain HTTP, {_INSECURE_HINT}"
        )
    return RegistryUnavailable(f"cannot connect to registry {host}: {exc or 'connect error'}")
