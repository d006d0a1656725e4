"""What a multi-platform build does next, and what its status says. Pure.

Each platform has its own build pod. The build goes on while every platform's pod builds or
waits; a platform that failed (its build, or its retries after infrastructure failures) fails
the whole build, stops its siblings and moves no tag; a platform whose pod was evicted or
lost is built again, alone, up to ``spec.retries`` times; when every platform succeeded the
operator assembles the image index (``handlers.platforms``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from stagewright.api.platforms import Platform, PlatformMode
from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import ImageBuild, Phase, PlatformStatus
from stagewright.dockerfile import StageRun
from stagewright.resources.platform_pods import platform_key
from stagewright.resources.pod_common import pod_name
from stagewright.status import (
    DEADLINE_GRACE,
    PodOutcome,
    builder_image,
    check_results,
    parse_iso,
)

#: Characters of a platform's own message kept in status.platforms (the build's message has
#: the failing platform's whole log tail).
ENTRY_MESSAGE_LIMIT = 300
#: Offending RUN steps named in a cross build's refusal; the rest are counted.
_RUNS_NAMED = 3
#: What the kernel says when a node runs a binary of another architecture.
EXEC_FORMAT_ERROR = "exec format error"


@dataclass(frozen=True)
class Observed:
    """One platform as a reconcile found it: what status said, its pod, what the pod says."""

    entry: PlatformStatus
    pod: dict[str, Any] | None
    outcome: PodOutcome


@dataclass(frozen=True)
class Waiting:
    """Still building: the status to show, written only when it ``changed``."""

    phase: Phase
    reason: Reason
    message: str
    platforms: list[PlatformStatus]
    changed: bool


@dataclass(frozen=True)
class Retrying:
    """Build these platforms again (infrastructure failures with retries left)."""

    retry: list[PlatformStatus]
    message: str
    platforms: list[PlatformStatus]


@dataclass(frozen=True)
class Failing:
    """A platform failed: stop ``stop`` (its siblings' pods), fail the build, move no tag."""

    reason: Reason
    message: str
    platforms: list[PlatformStatus]
    stop: list[str] = field(default_factory=list)
    #: status.checks, merged over the platforms (None without spec.checks).
    checks: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Built:
    """Every platform built its image: assemble the index."""

    platforms: list[PlatformStatus]
    #: When the last platform's builder exited (the registry's patience counts from it).
    finished_at: str | None
    checks: list[dict[str, Any]] | None = None
    #: The builder image as the first platform's pod ran it (for provenance).
    builder_image: str | None = None


Step = Waiting | Retrying | Failing | Built


def platforms_of(build: ImageBuild) -> list[Platform]:
    """``spec.platforms``, parsed, in order."""
    return [Platform.parse(text) for text in build.spec.platforms or []]


def launched(build: ImageBuild, key: str, attempt: int = 1) -> list[PlatformStatus]:
    """status.platforms of a build whose pods were just created."""
    return [PlatformStatus(platform=str(platform), phase=Phase.BUILDING,
                           reason=Reason.BUILDING.value,
                           pod=pod_name(build.name, platform_key(key, platform), attempt),
                           attempt=attempt)
            for platform in platforms_of(build)]


def summary(entries: Sequence[PlatformStatus]) -> str:
    """status.platformSummary: platforms built of those asked (``1/2``)."""
    built = sum(1 for entry in entries if entry.phase is Phase.SUCCEEDED)
    return f"{built}/{len(entries)}"


def status_fields(entries: Sequence[PlatformStatus]) -> dict[str, Any]:
    """The status fields (by Python name) that show the platforms, and the first one's pod
    as ``podName`` (what ``kubectl logs`` and older clients read)."""
    return {"platforms": [entry.model_dump(mode="json", by_alias=True, exclude_none=True)
                          for entry in entries],
            "platform_summary": summary(entries), "pod_name": entries[0].pod if entries else None}


def building_message(build: ImageBuild, entries: Sequence[PlatformStatus],
                     build_platform: str, pinned: Sequence[str] = ()) -> str:
    """The Building message of a multi-platform build just launched."""
    where = (f"on {build_platform} nodes, without emulation"
             if build.spec.platform_mode is PlatformMode.CROSS else "each on its own nodes")
    pods = ", ".join(entry.pod or "?" for entry in entries)
    text = (f"Building target {build.spec.target or '(last stage)'} for "
            f"{', '.join(entry.platform for entry in entries)} ({build.spec.platform_mode.value}"
            f", {where}) in pods {pods}.")
    if pinned:
        text += (f" Pinned for {build_platform} (FROM --platform=$BUILDPLATFORM, which Kaniko "
                 f"ignores): {'; '.join(pinned)}; the pods build that Dockerfile, kept in "
                 "their stagewright.dev/dockerfile annotation.")
    return text


def decide(build: ImageBuild, key: str, observed: Sequence[Observed], *, now: datetime,
           deadline: timedelta, build_platform: str) -> Step:
    """The build's next step from each platform's pod (``key``: the build's, as in its pods'
    names)."""
    entries: list[PlatformStatus] = []
    fatal: list[tuple[PlatformStatus, Observed]] = []
    retry: list[PlatformStatus] = []
    for seen in observed:
        entry = _entry(seen)
        timed_out = _timed_out(seen, now, deadline)
        if timed_out is not None:
            entry = _ended(entry, Reason.TIMEOUT, timed_out)
        entries.append(entry)
        if entry.phase is not Phase.FAILED:
            continue
        if entry.reason != Reason.TIMEOUT.value and seen.outcome.infrastructure_failure and (
                seen.entry.attempt or 1) <= build.spec.retries:
            retry.append(entry)
        else:
            fatal.append((entry, seen))
    pods = [seen.pod for seen in observed if seen.pod is not None]
    checks = merged_checks([check_results(pod) for pod in pods]) if build.spec.checks else None
    if fatal:
        failing = _failing(build, observed, entries, *fatal[0], build_platform)
        return replace(failing, checks=checks)
    if retry:
        return _retrying(build, key, entries, retry)
    if all(entry.phase is Phase.SUCCEEDED for entry in entries):
        finished = [seen.outcome.finished_at for seen in observed if seen.outcome.finished_at]
        return Built(entries, max(finished) if finished else None, checks,
                     builder_image(pods[0]) if pods else None)
    return _waiting(build, entries)


def _entry(seen: Observed) -> PlatformStatus:
    """The platform's status from what its pod says now."""
    entry, outcome = seen.entry, seen.outcome
    if entry.phase is Phase.SUCCEEDED:
        return entry  # built earlier: its pod need not be read again
    if not outcome.finished:
        if outcome.waiting:
            return entry.model_copy(update={"phase": Phase.PENDING,
                                            "reason": outcome.waiting_reason.value,
                                            "message": _first_line(outcome.waiting)})
        return entry.model_copy(update={"phase": Phase.BUILDING,
                                        "reason": Reason.BUILDING.value, "message": None})
    if outcome.succeeded and outcome.digest:
        return entry.model_copy(update={"phase": Phase.SUCCEEDED,
                                        "reason": Reason.SUCCEEDED.value, "message": None,
                                        "digest": outcome.digest})
    reason = outcome.reason or Reason.BUILD_FAILED
    return _ended(entry, reason, outcome.message)


def _ended(entry: PlatformStatus, reason: Reason, message: str) -> PlatformStatus:
    return entry.model_copy(update={"phase": Phase.FAILED, "reason": reason.value,
                                    "message": _first_line(message)})


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= ENTRY_MESSAGE_LIMIT else line[: ENTRY_MESSAGE_LIMIT - 1] + "…"


def _timed_out(seen: Observed, now: datetime, deadline: timedelta) -> str | None:
    """Why an unfinished pod is past its deadline, or None.

    The kubelet enforces ``activeDeadlineSeconds`` from the pod's start; a pod no node took
    (Unschedulable) is never started, so the operator ends it at the deadline counted from
    its creation, and one a node took but never started after a grace, as for one pod.
    """
    if seen.pod is None or seen.outcome.finished or seen.entry.phase is Phase.SUCCEEDED:
        return None
    created = parse_iso(seen.pod["metadata"].get("creationTimestamp"))
    scheduled = bool((seen.pod.get("spec") or {}).get("nodeName"))
    if created is None or now - created <= deadline + (DEADLINE_GRACE if scheduled else
                                                       timedelta()):
        return None
    name = seen.pod["metadata"]["name"]
    why = seen.outcome.waiting or ("it never started" if scheduled else "no node took it")
    return f"The build did not finish within {deadline} (pod {name} never completed: {why})."


def _failing(build: ImageBuild, observed: Sequence[Observed], entries: list[PlatformStatus],
             failed: PlatformStatus, seen: Observed, build_platform: str) -> Failing:
    reason = Reason(failed.reason or Reason.BUILD_FAILED.value)
    if reason is Reason.TIMEOUT:
        message = failed.message or ""
    else:
        message = seen.outcome.message or failed.message or ""
        if build.spec.platform_mode is PlatformMode.CROSS:
            message = explain_cross_failure(message, failed.platform, build_platform)
    # Every pod still running or waiting is stopped, a timed-out one included.
    stop = [other.pod["metadata"]["name"] for other in observed
            if other.pod is not None and not other.outcome.finished
            and other.entry.phase is not Phase.SUCCEEDED]
    cancelled = f"Stopped: platform {failed.platform} failed."
    final = [entry if entry.phase in (Phase.SUCCEEDED, Phase.FAILED) else entry.model_copy(
        update={"phase": Phase.FAILED, "reason": Reason.CANCELLED.value, "message": cancelled})
        for entry in entries]
    return Failing(reason, f"Platform {failed.platform}: {message} No output tag was moved.",
                   final, stop)


def _retrying(build: ImageBuild, key: str, entries: list[PlatformStatus],
              failed: list[PlatformStatus]) -> Retrying:
    again = {entry.platform for entry in failed}
    notes = [f"{entry.platform}: attempt {entry.attempt or 1} failed ({entry.reason}: "
             f"{entry.message})" for entry in failed]
    updated = []
    for entry in entries:
        if entry.platform in again:
            attempt = (entry.attempt or 1) + 1
            platform = Platform.parse(entry.platform)
            updated.append(entry.model_copy(update={
                "phase": Phase.BUILDING, "reason": Reason.RETRYING.value,
                "message": f"Attempt {attempt - 1} failed ({entry.reason}); retrying.",
                "attempt": attempt,
                "pod": pod_name(build.name, platform_key(key, platform), attempt)}))
        else:
            updated.append(entry)
    retried = [entry for entry in updated if entry.platform in again]
    return Retrying(retried, "; ".join(notes) + ". Retrying.", updated)


def _waiting(build: ImageBuild, entries: list[PlatformStatus]) -> Waiting:
    status = build.status
    pending = [entry for entry in entries if entry.phase is Phase.PENDING]
    if pending:
        first = pending[0]
        phase, reason = Phase.PENDING, Reason(first.reason or Reason.WAITING.value)
        message = f"Platform {first.platform}: {first.message}"
        if len(pending) > 1:
            message += f" (and {len(pending) - 1} more platform(s) waiting)"
    else:
        phase, reason = Phase.BUILDING, Reason.BUILDING
        building = [entry.platform for entry in entries if entry.phase is Phase.BUILDING]
        message = (f"Building {', '.join(building)}; {summary(entries)} platforms built."
                   if status.phase is Phase.PENDING or any(
                       entry.phase is Phase.SUCCEEDED for entry in entries)
                   else status.message or "")
    changed = (status.phase, status.reason, status.message, _dumped(status.platforms)) != (
        phase, reason.value, message, _dumped(entries))
    return Waiting(phase, reason, message, entries, changed)


def _dumped(entries: Sequence[PlatformStatus] | None) -> list[dict[str, Any]]:
    return [entry.model_dump(mode="json", exclude_none=True) for entry in entries or []]


def explain_cross_failure(message: str, platform: str, build_platform: str) -> str:
    """A cross build's failure, explained when the log says ``exec format error``: a RUN ran
    in a stage built for the target platform, on a node of another architecture."""
    if EXEC_FORMAT_ERROR not in message:
        return message
    return (f"A RUN step ran in a stage built for {platform} on a {build_platform} node "
            f"({EXEC_FORMAT_ERROR}): platformMode cross has no emulation. Build in a stage "
            "FROM --platform=$BUILDPLATFORM and COPY its output into the target stage "
            "(a Dockerfile in a ConfigMap is checked before the build), or use platformMode "
            f"native with {platform} nodes. {message}")


def cross_refusal(runs: Sequence[tuple[str, StageRun]], build_platform: str) -> str:
    """InvalidSpec's message for RUN steps that cannot run in a cross build, each named by
    platform, stage and line."""
    named = "; ".join(f"stage {run.stage}, line {run.line}, for {platform}: "
                      f"{_first_line(run.instruction)}"
                      for platform, run in runs[:_RUNS_NAMED])
    more = f" (and {len(runs) - _RUNS_NAMED} more)" if len(runs) > _RUNS_NAMED else ""
    return (f"platformMode cross builds every platform on {build_platform} nodes without "
            f"emulation, so a RUN step in a stage built for another platform cannot run: "
            f"{named}{more}. Move RUN steps to a stage FROM --platform=$BUILDPLATFORM and "
            "COPY their output into the target stage, or use platformMode native with nodes "
            "of each platform.")


def merged_checks(per_platform: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """status.checks of a multi-platform build: each check stage ran once per platform;
    Failed if it failed on one, NotRun if it did not run on one, else Passed (the longest
    duration)."""
    if not per_platform or not per_platform[0]:
        return None
    merged = []
    for index, first in enumerate(per_platform[0]):
        results = [checks[index] for checks in per_platform if index < len(checks)]
        outcomes = {result.get("result") for result in results}
        entry: dict[str, Any] = {"stage": first["stage"], "result": next(
            (r for r in ("Failed", "NotRun") if r in outcomes), "Passed")}
        durations = [r["durationSeconds"] for r in results if "durationSeconds" in r]
        if durations:
            entry["durationSeconds"] = max(durations)
        merged.append(entry)
    return merged
