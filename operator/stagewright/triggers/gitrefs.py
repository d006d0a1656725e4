"""Resolve a git branch or tag to its commit as ``git ls-remote`` does, over smart HTTP.

The source trigger polls this, so it must be cheap for the git host and for us: protocol v2's
``ls-refs`` with ``ref-prefix`` asks for the one ref (two requests: the capability
advertisement, then the command), where v0 would send every ref of the repository (on GitHub,
every pull request's too). A server that does not speak v2 answers the first request with the
whole v0 advertisement, which is read (bounded) instead. No clone, no objects: refs only.

The URL is the tenant's, fetched from the operator's own network position, so it goes through
the registry client's address guard (no link-local or metadata addresses, IP literals
included) and never follows a redirect (credentials stay with the host they were given for).
"""

from __future__ import annotations

import base64
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
from yarl import URL

from stagewright.registry.egress import (
    ForbiddenAddressError,
    GuardedResolver,
    refuse_forbidden_literal,
    system_resolver,
)

#: The most an advertisement may weigh (a v0 server sends every ref).
MAX_ADVERTISEMENT_BYTES = 8 * 1024 * 1024
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_FLUSH, _DELIM = b"0000", b"0001"


class GitRefError(Exception):
    """The ref could not be resolved; ``temporary`` when trying later may help."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


@dataclass(frozen=True)
class ResolvedRef:
    """A revision resolved: the full ref name and the commit it points at (peeled)."""

    ref: str
    commit: str


def is_commit(revision: str | None) -> bool:
    """A full 40-digit commit id: fixed, never moves, never triggers."""
    return bool(revision and _COMMIT.match(revision))


def candidates(revision: str | None) -> list[str]:
    """The refs ``revision`` may name, in the order they are preferred: ``HEAD`` for the
    default branch, a full ``refs/...`` name as it is, else a branch, then a tag."""
    if not revision:
        return ["HEAD"]
    if revision.startswith("refs/"):
        return [revision]
    return [f"refs/heads/{revision}", f"refs/tags/{revision}"]


def pkt_line(payload: bytes) -> bytes:
    """One pkt-line: four hex digits of length (themselves included), then the payload."""
    return f"{len(payload) + 4:04x}".encode() + payload


def pkt_lines(data: bytes) -> list[bytes | None]:
    """Split a pkt-line stream; flush and delimiter packets are None."""
    lines: list[bytes | None] = []
    position = 0
    while position + 4 <= len(data):
        try:
            length = int(data[position:position + 4], 16)
        except ValueError:
            raise GitRefError("the server's answer is not git's pkt-line format (is the URL "
                              "a git repository?)", temporary=False) from None
        if length < 4:
            lines.append(None)
            position += 4
            continue
        lines.append(data[position + 4:position + length])
        position += length
    return lines


def parse_refs(lines: list[bytes | None]) -> dict[str, str]:
    """Ref name -> commit from v0 advertisement or v2 ``ls-refs`` lines, tags peeled and
    ``HEAD`` included (a v2 ``symref-target`` also maps the target branch)."""
    refs: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for raw in lines:
        if raw is None or raw.startswith(b"#"):
            continue
        text = raw.split(b"\0", 1)[0].decode(errors="replace").rstrip("\n")
        oid, _, rest = text.partition(" ")
        if not _COMMIT.match(oid):
            continue
        name, *attributes = rest.split(" ")
        if name.endswith("^{}"):  # v0: the commit an annotated tag points at
            peeled[name[:-3]] = oid
            continue
        refs[name] = oid
        for attribute in attributes:
            key, _, value = attribute.partition(":")
            if key == "peeled" and _COMMIT.match(value):
                peeled[name] = value
            elif key == "symref-target" and value:
                refs.setdefault(value, oid)
    return {name: peeled.get(name, oid) for name, oid in refs.items()}


def choose(refs: dict[str, str], revision: str | None) -> ResolvedRef:
    """The first of ``candidates(revision)`` the server has."""
    for name in candidates(revision):
        if name in refs:
            return ResolvedRef(name, refs[name])
    raise GitRefError(f"the repository has no branch or tag {revision or 'HEAD'!r}",
                      temporary=False)


def ls_refs_request(revision: str | None) -> bytes:
    """A protocol v2 ``ls-refs`` command asking for ``revision``'s candidate refs only."""
    arguments = [b"peel\n", b"symrefs\n"] + [
        f"ref-prefix {name}\n".encode() for name in candidates(revision)]
    return (pkt_line(b"command=ls-refs\n") + pkt_line(b"agent=stagewright\n") + _DELIM
            + b"".join(pkt_line(argument) for argument in arguments) + _FLUSH)


class GitRefs:
    """``async with GitRefs(timeout) as refs: await refs.resolve(url, revision, auth)``."""

    def __init__(self, timeout: float, ca_bundle: Path | None = None) -> None:
        self._timeout = timeout
        self._ca_bundle = ca_bundle
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        trust = ssl.create_default_context()
        if self._ca_bundle is not None:
            trust.load_verify_locations(cafile=str(self._ca_bundle))
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(system_resolver), ssl=trust)
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, headers={"User-Agent": "git/stagewright"},
            timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def resolve(self, url: str, revision: str | None,
                      basic_auth: tuple[str, str] | None = None) -> ResolvedRef:
        """The commit ``revision`` (branch, tag, full ref, or None for the default branch)
        points at now in the repository at ``url``."""
        base = url.rstrip("/")
        headers = {"Git-Protocol": "version=2"}
        if basic_auth is not None:
            token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        advertisement = await self._fetch(
            "GET", f"{base}/info/refs?service=git-upload-pack", headers, None)
        lines = pkt_lines(advertisement)
        if b"version 2\n" not in lines:
            return choose(parse_refs(lines), revision)  # a v0 server: every ref is here
        answer = await self._fetch(
            "POST", f"{base}/git-upload-pack",
            {**headers, "Content-Type": "application/x-git-upload-pack-request",
             "Accept": "application/x-git-upload-pack-result"}, ls_refs_request(revision))
        return choose(parse_refs(pkt_lines(answer)), revision)

    async def _fetch(self, method: str, url: str, headers: dict[str, str],
                     body: bytes | None) -> bytes:
        if self._session is None:
            raise RuntimeError("use GitRefs as an async context manager")
        target = URL(url)
        try:
            refuse_forbidden_literal(target.host or "")
            async with self._session.request(method, target, headers=headers, data=body,
                                             allow_redirects=False) as response:
                _raise_for_status(response, url)
                data = await response.content.read(MAX_ADVERTISEMENT_BYTES + 1)
        except ForbiddenAddressError as exc:
            raise GitRefError(f"{target.host} is a link-local or metadata address: never "
                              "contacted", temporary=False) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc.__cause__, ForbiddenAddressError):
                raise GitRefError(f"{target.host} resolves to a link-local or metadata "
                                  "address: never contacted", temporary=False) from exc
            raise GitRefError(f"{target.host} cannot be reached: {exc or type(exc).__name__}",
                              temporary=True) from exc
        if len(data) > MAX_ADVERTISEMENT_BYTES:
            raise GitRefError(f"the server's ref advertisement is over "
                              f"{MAX_ADVERTISEMENT_BYTES} bytes", temporary=False)
        return data


def _raise_for_status(response: aiohttp.ClientResponse, url: str) -> None:
    status = response.status
    if status == 200:
        return
    where = URL(url).with_query(None)
    if status in (301, 302, 303, 307, 308):
        raise GitRefError(f"{where} redirects to {response.headers.get('Location')}: use that "
                          "URL in source.git.url", temporary=False)
    if status in (401, 403):
        raise GitRefError(f"{where} refused the credentials ({status}): check "
                          "source.git.secretRef", temporary=False)
    if status == 404:
        raise GitRefError(f"{where} was not found (404): check source.git.url",
                          temporary=False)
    raise GitRefError(f"{where} answered {status}", temporary=status >= 500 or status == 429)
