"""The ImageBuild API's triggers: rebuild when the branch moves, a base image is patched, or a
verified webhook says to check (spec.triggers), and why each build ran (status).

Part of v1alpha1 (``api/v1alpha1.py`` embeds these models); kept apart so the build's own
models stay readable. All triggers are off unless named: an ImageBuild without
``spec.triggers`` builds once per spec generation or rebuild request, as before.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from stagewright.api.types import ApiModel, Duration, LocalObjectReference


class SourceTrigger(ApiModel):
    """Poll the git source's branch or tag; a moved head builds that exact commit."""

    poll_interval: Duration = Field(
        default="5m",
        description="How often the ref is resolved (git ls-remote over smart HTTP), jittered. "
        "At least the operator's minimum (1m by default); one look-up per repository, ref "
        "and credentials, shared by every ImageBuild that tracks them.",
    )


class BaseImageTrigger(ApiModel):
    """Poll the FROM images the built target depends on; a re-pushed tag rebuilds."""

    poll_interval: Duration = Field(
        default="15m",
        description="How often each base image's tag is resolved (one HEAD of its manifest, "
        "never a GET), jittered; one look-up per image and credentials, shared by every "
        "ImageBuild that uses it.",
    )
    exclude: list[Annotated[str, StringConstraints(min_length=1, max_length=512)]] = Field(
        default_factory=list, max_length=32,
        description="Image patterns not watched (shell-style, e.g. registry.internal/*, "
        "*/toolchain:*), matched against the image as written after ARG expansion.",
    )


class WebhookTrigger(ApiModel):
    """Accept signed push notifications as a hint to check the source now."""

    secret_ref: LocalObjectReference = Field(
        description="A Secret in the ImageBuild's namespace whose key `token` is the "
        "webhook secret (GitHub's HMAC key, GitLab's token, or the generic HMAC key).",
    )


class Triggers(ApiModel):
    """What rebuilds this ImageBuild besides a spec change or a rebuild request."""

    source: SourceTrigger | None = Field(
        default=None, description="Rebuild when the git branch or tag moves (git sources).",
    )
    base_images: BaseImageTrigger | None = Field(
        default=None, description="Rebuild when a FROM image of the target is re-pushed.",
    )
    webhook: WebhookTrigger | None = Field(
        default=None, description="Check the source at once when a signed push notification "
        "arrives (git sources); the operator resolves the head itself.",
    )
    debounce: Duration = Field(
        default="30s",
        description="A change builds once nothing else changed for this long, so a burst of "
        "pushes is one build.",
    )
    max_builds_per_hour: int = Field(
        default=6, ge=1, le=60,
        description="Triggered builds at most per hour; changes beyond it wait.",
    )


class CauseType(StrEnum):
    """Why a build ran."""

    SPEC = "Spec"
    REBUILD = "Rebuild"
    COMMIT = "Commit"
    BASE_IMAGE = "BaseImage"


class BuildCause(ApiModel):
    """One reason for a build, with what changed."""

    type: CauseType = Field(description="Spec, Rebuild, Commit or BaseImage.")
    image: str | None = Field(default=None, description="The base image (BaseImage only).")
    old: str | None = Field(default=None, description="The value before (commit, digest).")
    new: str | None = Field(default=None, description="The value built (commit, digest).")


class ImageDigest(ApiModel):
    """An image as a Dockerfile names it, and the digest it resolved to."""

    image: str = Field(description="The image as written, after ARG expansion.")
    digest: str | None = Field(default=None, description="sha256:..., when known.")


class BuildInputs(ApiModel):
    """What a build was built from, so a trigger compares against it."""

    commit: str | None = Field(default=None, description="The git commit built.")
    ref: str | None = Field(default=None, description="The ref it was resolved from.")
    base_images: list[ImageDigest] | None = Field(
        default=None, max_length=32,
        description="The FROM images of the target and the digest each had for this build.",
    )
    seen_at: str | None = Field(
        default=None, description="When the newest of these values was first seen: the "
        "change that started a triggered build, or the start of a requested one.",
    )


class TriggerStatus(ApiModel):
    """What the triggers saw, written only when it changes (polls that find nothing new cost
    no API write)."""

    webhook_path: str | None = Field(
        default=None, description="The webhook's path on the operator's webhook port: a hash "
        "that names neither namespace nor ImageBuild.",
    )
    window_start: str | None = Field(
        default=None, description="Start of the current hour of triggered builds.",
    )
    builds_in_window: int | None = Field(
        default=None, description="Triggered builds started since windowStart.",
    )
