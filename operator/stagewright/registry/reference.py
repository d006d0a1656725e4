"""Parse image references the way docker and Kaniko do: ``[host[:port]/]path[:tag][@digest]``.

Pure. The operator must look up exactly the image Kaniko pushed, so the defaults are
docker's: no registry part means Docker Hub, and a one-part Docker Hub name is in
``library/``. Grammar after distribution's ``reference`` package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: The name docker gives Docker Hub in references (``docker.io`` is normalised to it).
DOCKER_HUB = "index.docker.io"
#: Where Docker Hub actually serves the distribution API.
DOCKER_HUB_API = "registry-1.docker.io"
#: The key ``docker login`` writes for Docker Hub in a docker config's ``auths``.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_ALIASES = frozenset({"docker.io", DOCKER_HUB, DOCKER_HUB_API})

DEFAULT_TAG = "latest"
_MAX_NAME = 255

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_PATH_PART = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
#: Any whitespace, as str.isspace() defines it (the same Unicode table).
_SPACE = re.compile(r"\s")


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalised image reference.

    ``tag`` is ``latest`` when neither tag nor digest is given; when a digest is given it
    wins (the tag is kept for display only), as in docker.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse ``text``; raise ValueError saying what is wrong and what is expected."""
        if not text:
            raise ValueError("image reference is empty")
        if _SPACE.search(text):
            raise ValueError(f"image reference {text!r} contains whitespace")
        name, at, digest = text.partition("@")
        if "@" in digest:
            raise ValueError(f"image reference {text!r} has more than one '@'")
        if at and not _DIGEST.fullmatch(digest):
            raise ValueError(
                f"image reference {text!r}: digest {digest!r} is not sha256:<64 lowercase hex>"
            )
        registry, remainder = _split_registry(name)
        path, colon, tag = remainder.rpartition(":") if ":" in remainder else (remainder, "", "")
        if colon and not _TAG.fullmatch(tag):
            raise ValueError(
                f"image reference {text!r}: tag {tag!r} is invalid "
                "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
            )
        _check_registry(text, registry)
        _check_path(text, path)
        if registry in DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in path:
                path = f"library/{path}"
        if len(registry) + 1 + len(path) > _MAX_NAME:
            raise ValueError(f"image reference {text!r}: name longer than {_MAX_NAME} characters")
        return cls(
            registry=registry,
            repository=path,
            tag=tag if colon else (None if digest else DEFAULT_TAG),
            digest=digest or None,
        )

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` that serves the distribution API for this registry."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes in ``/v2/<repo>/manifests/<reference>``: the digest if any, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> ImageReference:
        """This image pinned to ``digest`` (tag dropped): ``registry/repo@sha256:...``."""
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"digest {digest!r} is not sha256:<64 lowercase hex>")
        return replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"


def _split_registry(name: str) -> tuple[str, str]:
    """Docker's rule: the first part is a host if it has '.' or ':', is localhost, or has caps."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, rest
    return DOCKER_HUB, name


def _check_registry(text: str, registry: str) -> None:
    if not _DOMAIN.fullmatch(registry):
        raise ValueError(
            f"image reference {text!r}: registry {registry!r} is not a valid host[:port]"
        )


def _check_path(text: str, path: str) -> None:
    if not path:
        raise ValueError(f"image reference {text!r} has no repository name")
    for part in path.split("/"):
        if _PATH_PART.fullmatch(part):
            continue
        if _PATH_PART.fullmatch(part.lower()):
            raise ValueError(f"image reference {text!r}: repository name must be lowercase")
        raise ValueError(
            f"image reference {text!r}: repository path component {part!r} is invalid "
            "(lowercase letters and digits, separated by '.', '_', '__' or '-')"
        )
