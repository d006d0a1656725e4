"""Find a registry's credentials in a ``kubernetes.io/dockerconfigjson`` Secret's config.

Pure. Kaniko reads the same file, so the lookup follows docker's: ``auths`` keys may be a
bare ``host[:port]``, a URL such as ``https://host/v1/`` (what ``docker login`` writes for
Docker Hub), in any case; an entry holds ``auth`` (base64 ``user:password``) or
``username``/``password``, and may hold an ``identitytoken`` (an OAuth2 refresh token for
the registry's token service) or a ``registrytoken`` (a bearer token used as is).
``credsStore``/``credHelpers`` name programs on a workstation and cannot work in a pod.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from stagewright.registry.reference import DOCKER_HUB, DOCKER_HUB_ALIASES


@dataclass(frozen=True)
class Credentials:
    """What one ``auths`` entry offers; secrets are kept out of ``repr``."""

    #: The ``auths`` key the entry was found under, for messages.
    key: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)

    @property
    def basic(self) -> tuple[str, str] | None:
        """``(user, password)`` for HTTP Basic, if the entry has both."""
        if self.username is not None and self.password is not None:
            return self.username, self.password
        return None


def normalize_host(key: str) -> str:
    """``https://Index.Docker.io/v1/`` -> ``index.docker.io``: scheme and path dropped."""
    host = key.strip().lower()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme):]
            break
    host = host.split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


def find_credentials(
    docker_config: Mapping[str, object] | None, registry: str
) -> Credentials | None:
    """The credentials for ``registry`` (``host[:port]``), or None when there are none.

    An exact key wins over a normalised match; the port must match. Raises ValueError,
    naming the entry, when the matching entry is malformed.
    """
    if not docker_config:
        return None
    auths = docker_config.get("auths")
    if auths is None:
        return None
    if not isinstance(auths, Mapping):
        raise ValueError("docker config: 'auths' must be an object keyed by registry host")
    wanted = normalize_host(registry)
    keys = [key for key in auths if isinstance(key, str)]
    for key in sorted(keys, key=lambda k: k != registry):
        if key == registry or normalize_host(key) == wanted:
            return _decode_entry(key, auths[key])
    return None


def _decode_entry(key: str, entry: object) -> Credentials | None:
    if not isinstance(entry, Mapping):
        raise ValueError(f"docker config: auths[{key!r}] must be an object")
    username = _string(entry, key, "username")
    password = _string(entry, key, "password")
    auth = _string(entry, key, "auth")
    if auth is not None:  # docker lets `auth` win over username/password
        username, password = _decode_auth(key, auth)
    identity_token = _string(entry, key, "identitytoken")
    registry_token = _string(entry, key, "registrytoken")
    if not (username or password or identity_token or registry_token):
        return None  # e.g. `{}` left by `docker login` with a credsStore
    return Credentials(
        key=key,
        username=username,
        password=password,
        identity_token=identity_token,
        registry_token=registry_token,
    )


def _string(entry: Mapping[object, object], key: str, name: str) -> str | None:
    """A string field of an entry; empty counts as absent (docker writes empty fields)."""
    value = entry.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"docker config: auths[{key!r}].{name} must be a string")
    return value


def _decode_auth(key: str, auth: str) -> tuple[str, str]:
    """``auth`` is base64 of ``user:password`` (padding optional, as some tools omit it)."""
    padded = auth.strip() + "=" * (-len(auth.strip()) % 4)
    try:
        decoded = base64.b64decode(padded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError(
            f"docker config: auths[{key!r}].auth is not base64 of 'user:password'"
        ) from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise ValueError(
            f"docker config: auths[{key!r}].auth decodes to no 'user:password' pair"
        )
    return username, password
