"""When a trigger builds, and why. Pure: observations and status in, a decision out.

The truth a decision compares against is in status (``status.inputs``: the commit and base
image digests the last build was built from), so a restarted operator neither rebuilds what it
built nor misses what changed while it was down: its first look-ups are compared with status.
What the look-ups saw is kept in memory only, with when each value was first seen, so polls
that find nothing new cost no API write.

Storms are what users of other builders remember (kpack's rebuild loops on a digest that
never settles). Three rules bound them here: a change builds only once nothing else changed
for ``debounce`` (a burst of pushes is one build); at most ``maxBuildsPerHour`` triggered
builds per hour (counted in status, so a restart does not reset it); and a build is compared
against what it was built from, not against its outcome, so a failed build is not retried by
the trigger loop: only the next change builds again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stagewright.api.triggers import (
    BuildCause,
    BuildInputs,
    CauseType,
    ImageDigest,
    Triggers,
    TriggerStatus,
)
from stagewright.api.types import parse_duration
from stagewright.api.v1alpha1 import ImageBuildStatus

WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Observed:
    """A value a look-up returned (a commit, a digest), and since when it has been seen."""

    value: str
    since: datetime


@dataclass(frozen=True)
class Observations:
    """What the look-ups for one ImageBuild saw last; None or absent: not looked up yet."""

    commit: Observed | None = None
    ref: str | None = None
    images: dict[str, Observed] = field(default_factory=dict)


@dataclass(frozen=True)
class Start:
    """Why a build starts and what it builds from: written with its first status."""

    causes: list[BuildCause]
    #: A triggered build's token (what changed to what), short and deterministic: the
    #: build's key and pod name carry it, so an operator that crashed after creating the pod
    #: adopts it, never a second one. None for a spec change or a rebuild request.
    trigger: str | None = None
    inputs: BuildInputs | None = None
    #: status.triggers to merge in: a triggered build's hourly count (this one included), or
    #: the webhook's path with a requested build's first write.
    window: TriggerStatus | None = None

    def status_fields(self) -> dict[str, Any]:
        """The ImageBuildStatus fields (Python names) to merge-patch: every key explicit, so
        a value of the last build that no longer holds is removed, not merged."""
        fields: dict[str, Any] = {
            "trigger": self.trigger,
            "causes": [c.model_dump(mode="json", by_alias=True, exclude_none=True)
                       for c in self.causes],
            "inputs": _explicit(self.inputs.model_dump(mode="json", by_alias=True,
                                                       exclude_none=True))
                      if self.inputs else None,
        }
        if self.window is not None:
            fields["triggers"] = self.window.model_dump(mode="json", by_alias=True,
                                                        exclude_none=True)
        return fields


def _explicit(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"commit": None, "ref": None, "baseImages": None, "seenAt": None, **inputs}


def started(status: ImageBuildStatus, generation: int, rebuild: str | None) -> Start:
    """The build a status already records as started (waiting for a slot or a reference):
    the same causes, trigger token and inputs, so launching it later changes none of them."""
    causes = status.causes or requested(None, None, generation, rebuild)
    return Start(causes=list(causes), trigger=status.trigger, inputs=status.inputs)


def describe_causes(causes: list[BuildCause]) -> str:
    """For people: ``new commit a1b2c3d4e5f6 (was 0f9e8d7c6b5a)``, ``python:3.12-slim
    re-pushed (sha256:3f2a… was sha256:9c1d…)``, joined with ``; ``."""
    parts = []
    for cause in causes:
        old, new = _short(cause.old), _short(cause.new)
        if cause.type is CauseType.COMMIT:
            parts.append(f"new commit {new} (was {old})")
        elif cause.type is CauseType.BASE_IMAGE:
            parts.append(f"base image {cause.image} re-pushed ({new}, was {old})")
        elif cause.type is CauseType.REBUILD:
            parts.append(f"rebuild requested ({new})")
        else:
            parts.append(f"spec generation {new}")
    return "; ".join(parts)


def _short(value: str | None) -> str:
    if not value:
        return "unknown"
    algorithm, _, hexdigits = value.rpartition(":")
    return f"{algorithm}:{hexdigits[:12]}" if algorithm else value[:12]


def requested(observed_generation: int | None, observed_rebuild: str | None, generation: int,
              rebuild: str | None) -> list[BuildCause]:
    """The cause of a build a person asked for: a new spec generation, or a rebuild request."""
    if observed_generation and observed_generation == generation:
        return [BuildCause(type=CauseType.REBUILD, old=observed_rebuild, new=rebuild)]
    return [BuildCause(type=CauseType.SPEC, old=str(observed_generation or "") or None,
                       new=str(generation))]


@dataclass(frozen=True)
class Wait:
    """A change was seen; look again at ``until`` (debounce, or the hourly limit)."""

    until: datetime
    why: str


Decision = Start | Wait | None


def changes(inputs: BuildInputs | None, seen: Observations) -> list[BuildCause]:
    """What differs between what was built and what the look-ups see now.

    A value not recorded for the last build (unknown commit, an image it did not use or whose
    digest was not read) is no change: there is nothing to compare against.
    """
    built = inputs or BuildInputs()
    causes: list[BuildCause] = []
    if seen.commit is not None and built.commit and seen.commit.value != built.commit:
        causes.append(BuildCause(type=CauseType.COMMIT, old=built.commit, new=seen.commit.value))
    for image in built.base_images or []:
        now = seen.images.get(image.image)
        if now is not None and image.digest and now.value != image.digest:
            causes.append(BuildCause(type=CauseType.BASE_IMAGE, image=image.image,
                                     old=image.digest, new=now.value))
    return causes


def token(causes: list[BuildCause]) -> str:
    """``t`` and 7 hex digits naming what changed to what."""
    text = "|".join(f"{c.type.value}:{c.image or ''}:{c.new or ''}" for c in causes)
    return "t" + hashlib.sha256(text.encode()).hexdigest()[:7]


def decide(triggers: Triggers, inputs: BuildInputs | None, window: TriggerStatus | None,
           seen: Observations, now: datetime) -> Decision:
    """Build now, wait until a time, or nothing (no change)."""
    causes = changes(inputs, seen)
    if not causes:
        return None
    last_change = max(_since(cause, seen) for cause in causes)
    settled_at = last_change + parse_duration(triggers.debounce)
    if now < settled_at:
        return Wait(settled_at, f"waiting {triggers.debounce} for changes to settle")
    start, count = _window(window, now)
    if count >= triggers.max_builds_per_hour:
        return Wait(start + WINDOW, f"{count} triggered builds this hour, the limit "
                    f"(spec.triggers.maxBuildsPerHour)")
    return Start(causes=causes, trigger=token(causes), inputs=built_from(inputs, seen),
                 window=TriggerStatus(webhook_path=window.webhook_path if window else None,
                                      window_start=_iso(start), builds_in_window=count + 1))


def built_from(inputs: BuildInputs | None, seen: Observations) -> BuildInputs:
    """The inputs a build started now uses: what was seen, where something was seen."""
    built = inputs or BuildInputs()
    images = [ImageDigest(image=image.image,
                          digest=seen.images[image.image].value
                          if image.image in seen.images else image.digest)
              for image in built.base_images or []]
    moments = [o.since for o in (seen.commit, *seen.images.values()) if o is not None]
    return BuildInputs(commit=seen.commit.value if seen.commit else built.commit,
                       ref=seen.ref or built.ref, base_images=images or None,
                       seen_at=_iso(max(moments)) if moments else built.seen_at)


def _since(cause: BuildCause, seen: Observations) -> datetime:
    if cause.type is CauseType.COMMIT and seen.commit is not None:
        return seen.commit.since
    return seen.images[cause.image or ""].since


def _window(window: TriggerStatus | None, now: datetime) -> tuple[datetime, int]:
    """The current hour's start and the triggered builds in it (a new hour starts at 0)."""
    if window is not None and window.window_start:
        start = datetime.fromisoformat(window.window_start)
        if now - start < WINDOW:
            return start, window.builds_in_window or 0
    return now, 0


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
