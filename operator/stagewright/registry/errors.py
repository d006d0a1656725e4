"""What can go wrong when asking a registry about an image, as the operator must react to it.

The class says what to do (retry later, fix the spec or the Secret, rebuild); the message
says it to a person reading ``kubectl get imagebuild -o yaml``, so it names the registry and
image and the likely fix.
"""

from __future__ import annotations

from typing import ClassVar


class RegistryError(Exception):
    """Any failure to resolve an image; ``temporary`` says whether retrying may help."""

    temporary: ClassVar[bool] = False


class RegistryUnavailable(RegistryError):  # noqa: N818 - name is the API
    """The registry could not be reached or is overloaded (connect error, timeout, 429, 5xx).

    Temporary: the operator retries later.
    """

    temporary: ClassVar[bool] = True


class RegistryRateLimited(RegistryUnavailable):
    """The registry answered 429 Too Many Requests (Docker Hub's pull limit, for one).

    Temporary, and a RegistryUnavailable as every 429 was before it had a class of its own.
    ``retry_after``: the seconds the registry asked us to wait (its ``Retry-After``, as
    seconds or an HTTP-date), or None if it did not say; a poller waits at least that long.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryTLSError(RegistryError):
    """The TLS handshake failed: an untrusted certificate, or a plain-HTTP registry.

    Not temporary: the fix is the registry's certificate or the ImageBuild's
    ``output.insecure``, which the message says.
    """


class ImageNotFound(RegistryError):  # noqa: N818 - name is the API
    """The registry has no such repository, tag or digest (404, MANIFEST_UNKNOWN, NAME_UNKNOWN)."""


class RegistryAuthError(RegistryError):
    """The registry refused us after authentication was tried (401/403)."""


class InvalidManifest(RegistryError):  # noqa: N818 - name is the API
    """The manifest is unusable: digest mismatch, bad JSON, unsupported media type, too large."""


class RegistryNotAllowed(RegistryError):  # noqa: N818 - name is the API
    """A host the operator must not contact: outside STAGEWRIGHT_REGISTRY_ALLOW, or one that
    resolves to a link-local or cloud metadata address. Not temporary: never retried."""
