"""What every part of the ImageBuild API shares: the model base and common string types.

Separate from ``v1alpha1`` so the API's sub-models (``triggers``) use the same rules without
an import cycle.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
#: A DNS-1123 subdomain: the names of Secrets, ConfigMaps and ServiceAccounts.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

Duration = Annotated[str, StringConstraints(pattern=_DURATION_PATTERN)]
ObjectName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]


def parse_duration(value: str) -> timedelta:
    """Parse a Go-style duration (``20m``, ``1h30m``), the format users know from kubectl."""
    if not re.fullmatch(_DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: use Go-style units such as 90s, 20m, 72h")
    seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    return timedelta(seconds=seconds)


class ApiModel(BaseModel):
    """Base: camelCase on the wire, unknown fields rejected (the CRD prunes them anyway)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
    )


class LocalObjectReference(ApiModel):
    """A reference to an object in the ImageBuild's own namespace."""

    name: ObjectName = Field(description="Name of the object, in the ImageBuild's namespace.")
