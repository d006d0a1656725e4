"""Platforms as the API spells them (``linux/arm64``, ``linux/arm/v7``): parsing and naming. Pure.

``spec.platforms`` names each platform as ``docker buildx --platform`` does:
``os/architecture[/variant]``. Two spellings of one platform (``linux/arm64`` and
``linux/arm64/v8``: v8 is arm64's only variant; ``linux/arm`` and ``linux/arm/v7``) are the
same platform, as containerd's matcher and buildx treat them, so they are compared
normalised. Variants have no node label: ``kubernetes.io/arch`` says ``arm`` for v6 and v7.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

#: ``os/architecture[/variant]``, lower case, as image indexes and node labels spell them.
PLATFORM_PATTERN = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"
_PLATFORM = re.compile(PLATFORM_PATTERN)
#: The variant an architecture means when none is given (containerd's normalisation).
_DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}
#: Platforms at most in one ImageBuild (one build pod each).
MAX_PLATFORMS = 8
#: The node labels every kubelet sets, which native builds select on.
OS_LABEL = "kubernetes.io/os"
ARCH_LABEL = "kubernetes.io/arch"


class PlatformMode(StrEnum):
    """Where the build pod of each platform runs."""

    #: On nodes of that platform (node selectors ``kubernetes.io/os`` and ``/arch``).
    NATIVE = "native"
    #: On nodes of the operator's build platform, without emulation: for Dockerfiles whose
    #: stages built for the target platform only COPY (cross-compiled output, say).
    CROSS = "cross"


@dataclass(frozen=True)
class Platform:
    """One platform, parsed."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm/v7`` -> Platform("linux", "arm", "v7"); ValueError when malformed."""
        if not _PLATFORM.match(text):
            raise ValueError(f"invalid platform {text!r}: use os/architecture[/variant], "
                             "e.g. linux/amd64, linux/arm64, linux/arm/v7")
        os_, architecture, *variant = text.split("/")
        return cls(os_, architecture, variant[0] if variant else "")

    def __str__(self) -> str:
        return "/".join([self.os, self.architecture, *([self.variant] if self.variant else [])])

    @property
    def normalized(self) -> tuple[str, str, str]:
        """(os, architecture, variant) with the architecture's default variant filled in."""
        return (self.os, self.architecture,
                self.variant or _DEFAULT_VARIANTS.get(self.architecture, ""))

    def matches(self, other: Platform) -> bool:
        """The same platform, however each is spelled (``linux/arm64`` is ``linux/arm64/v8``)."""
        return self.normalized == other.normalized

    @property
    def slug(self) -> str:
        """A name part for pods, labels, tags and cache repositories: ``linux-arm64``,
        ``linux-arm-v7`` (lower case letters, digits, ``-`` and ``_`` only)."""
        return str(self).replace("/", "-")

    @property
    def node_selector(self) -> dict[str, str]:
        """The node labels of nodes that run this platform natively."""
        return {OS_LABEL: self.os, ARCH_LABEL: self.architecture}
