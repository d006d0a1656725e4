"""The registry token dance: who is asking, and how a 401 is answered.

Distribution's token protocol (a ``WWW-Authenticate: Bearer realm=...`` challenge, a token
from the realm, cached for its lifetime per registry, scope and credentials) and HTTP Basic.
A tenant's credentials go only to the registry they were given for and its own token
service, and over plain HTTP only to a registry the ImageBuild calls insecure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDictProxy
from yarl import URL

from stagewright.registry.credentials import Credentials, find_credentials
from stagewright.registry.errors import RegistryAuthError, RegistryUnavailable
from stagewright.registry.reference import ImageReference
from stagewright.registry.transport import (
    INSECURE_HINT,
    Call,
    Reply,
    Transport,
    error_detail,
    netloc,
    raise_for_status,
)

#: Distribution's token spec: a token without expires_in lives 60 s, and none less.
_MIN_TOKEN_SECONDS = 60


@dataclass(frozen=True)
class Target:
    """One client call: which registry and repository, how to connect, as whom."""

    ref: ImageReference
    insecure: bool
    credentials: Credentials | None
    #: The ``auths`` keys of the docker config, to say what was there when nothing matched.
    config_keys: tuple[str, ...]

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


def target_for(ref: ImageReference, insecure: bool,
               docker_config: Mapping[str, object] | None) -> Target:
    """``ref`` as the credentials ``docker_config`` holds for its registry would ask for it."""
    try:
        credentials = find_credentials(docker_config, ref.registry)
    except ValueError as exc:
        raise RegistryAuthError(
            f"cannot use the credentials for registry {ref.registry}: {exc}"
        ) from None
    auths = (docker_config or {}).get("auths")
    keys = tuple(str(key) for key in auths) if isinstance(auths, Mapping) else ()
    return Target(ref, insecure, credentials, keys)


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class _Cache:
    """What the client learns about registries' auth over its lifetime (no secrets but
    tokens)."""

    tokens: dict[tuple[str, str, str], _Token] = field(default_factory=dict)
    #: The scope a registry asked for, per (host, repository).
    scopes: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Hosts that asked for HTTP Basic: credentials are sent up front next time.
    basic_hosts: set[str] = field(default_factory=set)


class Authenticator:
    """Calls on a registry with the right Authorization, learnt once and reused."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._cache = _Cache()

    async def authorized(self, method: str, target: Target, path: str, reference: str, *,
                         limit: int, content: bytes | None = None,
                         extra_headers: Mapping[str, str] | None = None) -> Reply:
        """One call on a manifest or blob, answering one authentication challenge.

        Returns a 2xx reply, or raises the error class that says what to do.
        """
        call = Call(method, path, limit, content, dict(extra_headers or {}))
        authorization = self._known_authorization(target)
        reply = await self._transport.request(target.host, target.insecure, call,
                                              authorization)
        if reply.status == 401:
            self._forget_token(target)
            authorization = await self._answer_challenge(target, reply.headers)
            reply = await self._transport.request(target.host, target.insecure, call,
                                                  authorization)
            if reply.status == 401:
                raise rejected(target, reply)
        if method not in ("GET", "HEAD") and reply.status in (200, 201, 202):
            return reply
        raise_for_status(reply, target.ref, reference, lambda r: rejected(target, r))
        return reply

    def _known_authorization(self, target: Target) -> str | None:
        """An Authorization header from what earlier requests taught us, to save a 401."""
        scope = self._cache.scopes.get((target.host, target.ref.repository), target.default_scope)
        token = self._cache.tokens.get((target.host, scope, target.identity))
        if token is not None and token.expires > time.monotonic():
            return f"Bearer {token.value}"
        creds = target.credentials
        if target.host in self._cache.basic_hosts and creds is not None and creds.basic:
            return _basic_header(*creds.basic)
        return None

    def _forget_token(self, target: Target) -> None:
        scope = self._cache.scopes.get((target.host, target.ref.repository), target.default_scope)
        self._cache.tokens.pop((target.host, scope, target.identity), None)

    async def _answer_challenge(self, target: Target, headers: CIMultiDictProxy[str]) -> str:
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

    async def _token(self, target: Target, challenge: Mapping[str, str]) -> str:
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
        verify = not (target.insecure and netloc(realm) == target.host)
        plain_http_host = target.host if target.insecure else None
        service = [("service", challenge["service"])] if challenge.get("service") else []
        params = [*service, *(("scope", part) for part in scope.split())]
        url = str(realm.update_query(params))
        reply: Reply | None = None
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "stagewright", "scope": scope, **dict(service)}
            reply = await self._transport.send("POST", str(realm), verify, headers={},
                                               data=form, plain_http_host=plain_http_host)
            if reply.status in (400, 404, 405):  # no OAuth2 endpoint: Basic GET below
                reply = None
        if reply is None:
            basic = _token_basic(creds)
            headers = {"Authorization": _basic_header(*basic)} if basic else {}
            reply = await self._transport.send("GET", url, verify, headers=headers,
                                               plain_http_host=plain_http_host)
        value, lifetime = _read_token(target, realm, reply)
        self._cache.tokens = {k: t for k, t in self._cache.tokens.items() if t.expires > now}
        self._cache.tokens[key] = _Token(value, now + lifetime * 0.9)
        return value


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


def rejected(target: Target, reply: Reply) -> RegistryAuthError:
    """The registry refused this caller: no credentials were found, or these were wrong."""
    _, detail = error_detail(reply)
    if target.credentials is None:
        return RegistryAuthError(_no_credentials(target, detail))
    return RegistryAuthError(
        f"registry {target.host} refused the credentials found under "
        f"auths[{target.credentials.key!r}] of the docker config ({detail}); check the user, "
        f"password or token, and that they may pull {target.ref.repository}"
    )


def _no_credentials(target: Target, detail: str = "authentication required") -> str:
    found = (
        f"the docker config has entries for {', '.join(target.config_keys)}"
        if target.config_keys else "no docker config was given"
    )
    return (
        f"registry {target.host} requires authentication ({detail}) and no credentials for "
        f"{target.ref.registry} were found ({found}); add them to the push Secret "
        "(a kubernetes.io/dockerconfigjson Secret)"
    )


def _realm(target: Target, realm: str, *, sends_secret: bool) -> URL:
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
            f"to send them unencrypted ({INSECURE_HINT} only if that is intended)"
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


def _token_basic(creds: Credentials | None) -> tuple[str, str] | None:
    if creds is None:
        return None
    if creds.identity_token:
        return creds.username or "<token>", creds.identity_token
    return creds.basic


def _read_token(target: Target, realm: URL, reply: Reply) -> tuple[str, float]:
    """``token`` (or OAuth2's ``access_token``) and its lifetime in seconds."""
    service = netloc(realm)
    if reply.status in (401, 403):
        _, detail = error_detail(reply)
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
