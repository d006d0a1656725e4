"""How the registry client talks to registries: one aiohttp session, bounded and guarded.

Every request goes through the egress guard (allow-list, no metadata addresses, no
downgrade on redirects), is bounded in time and in the bytes read, and fails with the
error class that says what to do. For an insecure registry it follows go-containerregistry:
unverified https first, then plain http.

Why aiohttp: chosen by measurement (benchmarks/README.md), as for the API client. On httpx,
guarded by an httpcore network backend, the registry look-ups were a quarter of the
operator's CPU under a burst of a thousand builds; on aiohttp, one session for the operator's
life with the address guard as its resolver (registry.egress), a few percent.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import math
import re
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from stagewright.registry.egress import (
    ForbiddenAddressError,
    GuardedResolver,
    Resolver,
    host_allowed,
    refuse_forbidden_literal,
)
from stagewright.registry.errors import (
    ImageNotFound,
    RegistryError,
    RegistryNotAllowed,
    RegistryRateLimited,
    RegistryTLSError,
    RegistryUnavailable,
)
from stagewright.registry.manifests import ACCEPT
from stagewright.registry.reference import ImageReference

#: Requests in flight per client at most (the rest wait in FIFO order): a burst of builds
#: asks each registry a bounded number of questions at a time.
MAX_CONCURRENT_REQUESTS = 32
#: Connections kept per client (aiohttp's default); one per request in flight is enough.
_MAX_CONNECTIONS = 100
MAX_ERROR_BODY = 16 * 1024
_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
INSECURE_HINT = "set output.insecure: true on the ImageBuild"
#: Redirects followed per request (go-containerregistry follows 10; blob stores need 1-2).
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Retry-After as a number of seconds (RFC 9110 says whole; a fraction is read too).
_DELAY_SECONDS = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    #: False when the body was longer than the limit (and was not read to the end).
    complete: bool


@dataclass(frozen=True)
class Call:
    """One request on a registry path: what to send, and how much of the answer to read."""

    method: str
    path: str
    limit: int
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Transport:
    """The session and every request made on it; ``open`` before use, ``aclose`` after.

    ``max_body`` bounds a 2xx body read without a limit of its own (the manifest limit).
    """

    def __init__(self, timeout: float, max_body: int, ca_bundle: Path | None,
                 allow: Sequence[str], resolver: Resolver,
                 observer: Callable[[str, float], None] | None) -> None:
        self._timeout = timeout
        self._ca_bundle = ca_bundle
        #: Host patterns the client may contact (egress.host_allowed); empty: any.
        self._allow = tuple(allow)
        self._resolver = resolver
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None
        self._trust: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        #: Told (status code or "error", seconds) of every request: metrics hook in here.
        self._observer = observer
        #: Insecure hosts found to speak plain HTTP.
        self._plain_http_hosts: set[str] = set()

    async def open(self) -> None:
        self._trust = self.trust_context()
        # Redirects are followed by send, which checks every hop (allow-list, no downgrade
        # to plain HTTP, no credentials to another host); every connection goes through the
        # address guard. No proxy from the environment (trust_env off): the guard checks the
        # addresses actually connected to. Certificates are checked per request (``ssl``), so
        # verified and unverified connections share the pool but never a connection.
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._resolver),
                                         limit=_MAX_CONNECTIONS, ssl=self._trust)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, headers={"User-Agent": "stagewright"},
            timeout=aiohttp.ClientTimeout(total=self._timeout))

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

    async def request(self, host: str, insecure: bool, call: Call,
                      authorization: str | None) -> Reply:
        """The call over https; for an insecure registry, unverified https then plain http."""
        path, limit = call.path, call.limit
        headers = {"Accept": ACCEPT, **call.headers}
        if authorization:
            headers["Authorization"] = authorization
        if not insecure:
            return await self.send(call.method, f"https://{host}{path}", True,
                                   headers=headers, limit=limit, content=call.content)
        if host not in self._plain_http_hosts:
            try:
                return await self.send(
                    call.method, f"https://{host}{path}", False, headers=headers,
                    fallback=True, plain_http_host=host, limit=limit, content=call.content,
                )
            except _FallBack:
                pass
        try:
            reply = await self.send(call.method, f"http://{host}{path}", False,
                                    headers=headers, plain_http_host=host, limit=limit,
                                    content=call.content)
        except RegistryUnavailable:
            self._plain_http_hosts.discard(host)  # try https again next time
            raise
        self._plain_http_hosts.add(host)
        return reply

    async def send(
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
    ) -> Reply:
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
    ) -> Reply:
        """One request within the timeout, redirects included; the body is read up to
        ``limit`` (default: the manifest limit).

        Each redirect hop must be allowed, may use plain HTTP only towards
        ``plain_http_host`` (an insecure registry), and loses the Authorization header when
        it leaves the host the credentials were meant for.
        """
        host = netloc(URL(url, encoded=True))
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
                            if netloc(next_url) != netloc(response.url):
                                headers = {k: v for k, v in headers.items()
                                           if k.lower() != "authorization"}
                            url = str(next_url)
                            continue
                        wanted = limit or self._max_body
                        body, complete = await _read_bounded(
                            response, wanted if 200 <= response.status < 300
                            else MAX_ERROR_BODY)
                        return Reply(response.status, response.headers, body, complete)
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
        host = netloc(url)
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
                f"({INSECURE_HINT} only if that registry really speaks plain HTTP)")


class _FallBack(Exception):  # noqa: N818 - control flow, never escapes this module
    """Unverified https could not connect: try plain http (insecure registries only)."""


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


def raise_for_status(reply: Reply, ref: ImageReference, reference: str,
                     refused: Callable[[Reply], RegistryError]) -> None:
    """Map a non-200 answer to the error class that tells the operator what to do.

    ``refused`` words a 403: what to say depends on whose credentials were sent.
    """
    status = reply.status
    if status == 200:
        return
    host = ref.api_host
    codes, detail = error_detail(reply)
    image = ref if reference == ref.reference else (
        f"{ref.name}@{reference}"
    )
    if status == 404 or codes & _NOT_FOUND_CODES:
        raise ImageNotFound(
            f"image {image} not found in registry {host} ({detail}); check the "
            "repository and tag, and that the push succeeded"
        )
    if status == 403:
        raise refused(reply)
    if status == 429:
        retry = parse_retry_after(reply.headers.get("retry-after"), datetime.now(UTC))
        raise RegistryRateLimited(
            f"registry {host} is rate-limiting requests (429"
            f"{f', retry after {retry:g} s' if retry is not None else ''})",
            retry_after=retry,
        )
    if status >= 500:
        raise RegistryUnavailable(f"registry {host} answered {status} ({detail})")
    raise RegistryError(
        f"registry {host} answered {status} for image {image} ({detail})"
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` in seconds from ``now``: delay-seconds, or an HTTP-date (RFC 9110),
    rounded up to whole seconds and never negative; None if absent or unreadable."""
    value = (value or "").strip()
    if _DELAY_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None  # "9" * 400 is no wait at all
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by another name
        when = when.replace(tzinfo=UTC)
    return float(max(0, math.ceil((when - now).total_seconds())))


def error_detail(reply: Reply) -> tuple[set[str], str]:
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


def netloc(url: URL) -> str:
    """``host[:port]`` as written (the port only when explicit), IPv6 in brackets."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.explicit_port}" if url.explicit_port is not None else host


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


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
            f"certificate, {INSECURE_HINT}"
        )
    if isinstance(cause, ssl.SSLError):
        return RegistryTLSError(
            f"TLS handshake with registry {host} failed ({cause.reason or cause}); if the "
            f"registry serves plain HTTP, {INSECURE_HINT}"
        )
    return RegistryUnavailable(f"cannot connect to registry {host}: {exc or 'connect error'}")


def upload_path(location: str | None, digest: str) -> str:
    """Where to PUT an upload's bytes: the path and query of the ``Location`` a POST to
    ``/blobs/uploads/`` answered (absolute or relative, with its own state in the query),
    plus the digest the registry checks them against."""
    if not location:
        raise RegistryError("the registry started a blob upload without a Location")
    url = URL(location, encoded=True)
    separator = "&" if url.raw_query_string else "?"
    return f"{url.raw_path_qs}{separator}digest={digest.replace(':', '%3A')}"
