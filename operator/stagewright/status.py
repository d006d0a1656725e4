"""Pure status logic: what a build pod says, and the ImageBuild status that follows from it.

No I/O here: handlers feed in a Pod dict and registry facts, and get back the outcome and the
status patch to write. Conditions follow kstatus, so ``kubectl wait --for=condition=Ready``,
Flux's health checks and Argo CD read an ImageBuild without custom code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from stagewright.api.reasons import INFRASTRUCTURE_FAILURES, Reason
from stagewright.api.v1alpha1 import (
    BUILDER_LABEL,
    CHECKS_ANNOTATION,
    Builder,
    BuildRecord,
    Condition,
    ImageBuildStatus,
    Phase,
    check_container_name,
)

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: The builder's own words when the image was built but could not be pushed (Kaniko's final
#: error line or the push-permission check it makes before building; the line the Buildah
#: pod's script prints when a push fails). Registry error codes alone (UNAUTHORIZED, DENIED)
#: are not enough: pulling a private base image fails with them too.
_PUSH_ERRORS = re.compile(
    r"error pushing image|failed to push to destination|error checking push permissions",
)
#: Pod-level reasons a kubelet or the control plane gives when the node, not the build, failed.
_LOST_POD_REASONS = frozenset({"NodeLost", "Shutdown", "NodeShutdown", "Terminated",
                               "UnexpectedAdmissionError", "NodeAffinity", "OutOfcpu",
                               "OutOfmemory", "OutOfephemeral-storage"})
#: Terminal control sequences (colours, cursor moves): Kaniko logs in colour by default, and
#: escape codes would make status messages unreadable and waste the termination message.
_ANSI_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
#: A line of the build log that says what failed: Kaniko's final error, or a logged error.
_ERROR_LINE = re.compile(r"^(error|ERRO|FATA|Error:)", re.IGNORECASE)
#: The builder's log line for the step it is running: Kaniko's ``INFO[0001] RUN make``,
#: Buildah's ``[1/2] STEP 3/5: RUN make`` (the stage prefix only in multi-stage builds).
_STEP_LINE = re.compile(r"^(?:INFO\[\d+\]\s+|level=info msg=\"|(?:\[\d+/\d+\] )?STEP \d+/\d+: )?"
                        r"((?:RUN|COPY|ADD)\s.*?)\"?$")
#: The last line of a command-line usage text (cobra's), which Kaniko prints after a fatal
#: error such as a refused git clone.
_USAGE_FOOTER = re.compile(r'Use "\S+ \[command\] --help" for more information')
#: Container waiting reasons that will not clear up by themselves.
_STUCK_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                            "CreateContainerConfigError", "CreateContainerError"})


#: Finished builds kept in status.history: enough to see a trend, small enough for etcd.
HISTORY_LIMIT = 5
#: How long past its deadline a pod that never started is given before the operator gives up
#: on it (activeDeadlineSeconds only counts once a kubelet has started the pod).
DEADLINE_GRACE = timedelta(minutes=2)


def now_iso() -> str:
    """The current time as Kubernetes writes it (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> datetime | None:
    """An RFC 3339 time as the API server writes it (``2026-11-30T07:37:09Z``), aware."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PodOutcome:
    """What a build pod says about its build."""

    finished: bool
    succeeded: bool = False
    digest: str | None = None
    reason: Reason | None = None
    message: str = ""
    waiting: str | None = None
    #: The termination message cannot say what failed, the log can: it held a digest (Kaniko
    #: also writes its digest file when it pushes cache layers, so only the log tells a failed
    #: push from a failed step), or only the end of Kaniko's usage text after a fatal error.
    log_needed: bool = False
    #: Why the pod is waiting, when ``waiting`` is set (PodWaiting or Unschedulable).
    waiting_reason: Reason = Reason.WAITING
    finished_at: str | None = None

    @property
    def infrastructure_failure(self) -> bool:
        """True when a retry might succeed: the build itself never failed."""
        return self.reason in INFRASTRUCTURE_FAILURES


def pod_builder(pod: dict[str, Any]) -> Builder:
    """The builder a pod's label names; pods made before the label existed ran Kaniko."""
    value = ((pod.get("metadata") or {}).get("labels") or {}).get(BUILDER_LABEL)
    return Builder(value) if value in set(Builder) else Builder.KANIKO


def build_terminated(pod: dict[str, Any]) -> dict[str, Any]:
    """The build container's ``terminated`` state, or {} while it has none."""
    return dict(_build_state(pod, pod_builder(pod)).get("terminated") or {})


def _build_state(pod: dict[str, Any], builder: Builder) -> dict[str, Any]:
    """The state of the build container, which is named after its builder."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == builder.value:
            return dict(status.get("state") or {})
    return {}


def classify_pod(pod: dict[str, Any], *, message_limit: int = 2048) -> PodOutcome:
    """Read a build pod's outcome; success is trusted only from the container's exit code."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    builder = pod_builder(pod)
    state = _build_state(pod, builder)
    meta = pod.get("metadata") or {}
    ended = (_ended_outcome(status, state.get("terminated"), builder, message_limit,
                            meta.get("annotations") or {})
             if phase in ("Succeeded", "Failed") else None)
    if meta.get("deletionTimestamp") and not (ended and ended.succeeded):
        # Deleted from outside before it finished: the Eviction API (a drain) and a deletion
        # by hand, which 1.20 cannot tell apart, both end here. The builder then dies of
        # SIGTERM, which would read as a failed build; it is the infrastructure's doing:
        # retried.
        return PodOutcome(finished=True, reason=Reason.EVICTED, message=(
            f"Build pod {meta.get('name', '')} was deleted before it finished (evicted, e.g. "
            "by a node drain, or deleted by hand)."))
    if ended is not None:
        return ended
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in _STUCK_WAITING:
        text = f"{waiting['reason']}: {waiting.get('message') or ''}".strip()
        return PodOutcome(finished=False, waiting=_tail(text, message_limit))
    unschedulable = _unschedulable(status)
    if unschedulable is not None:
        text = f"The scheduler cannot place the build pod: {unschedulable}"
        return PodOutcome(finished=False, waiting=_tail(text, message_limit),
                          waiting_reason=Reason.UNSCHEDULABLE)
    return PodOutcome(finished=False)


def _check_stages(annotations: dict[str, str]) -> list[str]:
    value = annotations.get(CHECKS_ANNOTATION) or ""
    return [stage for stage in value.split(",") if stage]


def _failed_check(status: dict[str, Any], annotations: dict[str, str],
                  message_limit: int) -> PodOutcome | None:
    """A check stage (init container) that exited non-zero: CheckFailed, naming the stage."""
    stages = _check_stages(annotations)
    for index, stage in enumerate(stages):
        terminated = _init_state(status, check_container_name(index)).get("terminated") or {}
        if int(terminated.get("exitCode", 0)) != 0:
            text = strip_ansi(terminated.get("message") or "")
            headline = f"Check stage {stage} failed (exit code {terminated['exitCode']})"
            return PodOutcome(finished=True, reason=Reason.CHECK_FAILED, message=failure_message(
                headline + "; the target was not built and nothing was pushed", text,
                message_limit))
    return None


def _init_state(status: dict[str, Any], name: str) -> dict[str, Any]:
    for container in status.get("initContainerStatuses") or []:
        if container.get("name") == name:
            return dict(container.get("state") or {})
    return {}


def check_results(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """status.checks from the pod: each check stage's result and duration, in order."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    status = pod.get("status") or {}
    results = []
    for index, stage in enumerate(_check_stages(annotations)):
        terminated = _init_state(status, check_container_name(index)).get("terminated")
        entry: dict[str, Any] = {"stage": stage, "result": "NotRun"}
        if terminated:
            entry["result"] = "Passed" if int(terminated.get("exitCode", -1)) == 0 else "Failed"
            started = _parse_time(terminated.get("startedAt"))
            finished = _parse_time(terminated.get("finishedAt"))
            if started and finished:
                entry["durationSeconds"] = int((finished - started).total_seconds())
        results.append(entry)
    return results


def _parse_time(value: str | None) -> datetime | None:
    try:
        return datetime.strptime(value or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _unschedulable(status: dict[str, Any]) -> str | None:
    """The scheduler's words when it cannot place the pod (PodScheduled=False/Unschedulable)."""
    for condition in status.get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"):
            return str(condition.get("message") or "no node fits the pod's requests")
    return None


def _ended_outcome(status: dict[str, Any], terminated: dict[str, Any] | None,
                   builder: Builder, message_limit: int,
                   pod_annotations: dict[str, str]) -> PodOutcome:
    """A pod in a final phase: the pod-level reason first, then the container's exit."""
    pod_reason, pod_message = status.get("reason"), status.get("message") or ""
    if status.get("phase") == "Failed" and pod_reason == "DeadlineExceeded":
        text = f"The build ran past its timeout and was stopped. {pod_message}"
        return PodOutcome(finished=True, reason=Reason.TIMEOUT, message=_tail(text, message_limit))
    if status.get("phase") == "Failed" and pod_reason == "Evicted":
        text = pod_message or "The pod was evicted."
        return PodOutcome(finished=True, reason=Reason.EVICTED, message=_tail(text, message_limit))
    if status.get("phase") == "Failed" and pod_reason in _LOST_POD_REASONS:
        text = f"{pod_reason}: {pod_message or 'the node lost the pod'}"
        return PodOutcome(finished=True, reason=Reason.POD_LOST, message=_tail(text, message_limit))
    failed_check = _failed_check(status, pod_annotations, message_limit)
    if failed_check is not None:
        return failed_check
    if terminated:
        return _terminated_outcome(terminated, builder, message_limit)
    text = f"The pod ended ({status.get('phase')}) without a container status. {pod_message}"
    return PodOutcome(finished=True, reason=Reason.POD_LOST, message=_tail(text, message_limit))


def _terminated_outcome(terminated: dict[str, Any], builder: Builder,
                        message_limit: int) -> PodOutcome:
    exit_code = int(terminated.get("exitCode", -1))
    name = builder.title()
    text = strip_ansi(terminated.get("message") or "").strip()
    if exit_code == 0:
        if _DIGEST.match(text):
            return PodOutcome(finished=True, succeeded=True, digest=text,
                              finished_at=terminated.get("finishedAt"))
        return PodOutcome(finished=True, reason=Reason.DIGEST_UNVERIFIED, message=_tail(
            f"{name} exited 0 but wrote no digest to the termination log "
            f"(got {text[:100]!r}).", message_limit))
    if terminated.get("reason") == "OOMKilled":
        return PodOutcome(finished=True, reason=Reason.OUT_OF_MEMORY, message=(
            "The build ran out of memory (OOMKilled); raise spec.resources.limits.memory."))
    if _USAGE_FOOTER.search(text) and "Usage:" not in text.splitlines()[1:]:
        # A fatal error followed by Kaniko's whole usage text: the kubelet's 2,048-byte
        # termination message holds only the usage's end, so the log must say the error.
        outcome = classify_log(exit_code, text, message_limit, builder)
        return PodOutcome(finished=True, reason=outcome.reason, message=outcome.message,
                          log_needed=True)
    if _DIGEST.match(text):
        # Kaniko writes the digest file before its final push, and also while it pushes
        # cache layers, so a digest with a failure may be a failed push or a failed step
        # after a cached one: the log decides (classify_log), this is the fallback.
        return PodOutcome(finished=True, reason=Reason.PUSH_FAILED, log_needed=True, message=(
            f"{name} exited with code {exit_code} after writing digest {text}; its log could "
            "not be read to say why. A failed push is likely: check output.pushSecretRef and "
            "the registry's permissions."))
    return classify_log(exit_code, text, message_limit, builder)


def classify_log(exit_code: int, log: str, message_limit: int,
                 builder: Builder = Builder.KANIKO) -> PodOutcome:
    """A failed build's outcome from its log: a push failure or a build failure."""
    name = builder.title()
    text = strip_ansi(log).strip()
    reason = Reason.PUSH_FAILED if _PUSH_ERRORS.search(text) else Reason.BUILD_FAILED
    return PodOutcome(finished=True, reason=reason,
                      message=failure_message(f"{name} exited with code {exit_code}", text,
                                              message_limit))


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape codes."""
    return _ANSI_ESCAPES.sub("", text)


def failure_message(headline: str, log: str, limit: int) -> str:
    """A failed build's message: what failed on the first line, then as much log tail as fits.

    The first line names the error and the step that failed, read from the log; the headline
    is never cut, however long the log (the kubelet's termination message alone can fill
    ``limit``).
    """
    lines = [line.strip() for line in strip_ansi(log).splitlines() if line.strip()]
    if "Usage:" in lines[1:]:
        # Kaniko's command line prints its whole usage (~100 lines) after a fatal error: it
        # would push the error itself out of the tail.
        lines = lines[: lines.index("Usage:", 1)]
    error = next((line for line in reversed(lines) if _ERROR_LINE.match(line)), None)
    step = next((m.group(1) for m in map(_STEP_LINE.match, reversed(lines)) if m), None)
    first = headline + (f" at step {step}" if step else "") + (f": {error}" if error else ".")
    first = first if len(first) <= limit // 2 else first[: limit // 2 - 1] + "…"
    if not lines:
        return first
    room = limit - len(first) - len("\nLog tail:\n")
    return f"{first}\nLog tail:\n{_tail(chr(10).join(lines), max(room, 1))}"


def _tail(text: str, limit: int) -> str:
    """Keep the end of a message: the failing command is at the bottom of a build log."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def human_size(size: int) -> str:
    """Bytes in binary units with one decimal, as ``kubectl get`` shows them (12.3MiB)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _condition(previous: list[Condition], type_: str, status: str, reason: str, message: str,
               generation: int, now: str) -> Condition:
    """A condition that keeps its lastTransitionTime while its status does not change."""
    old = next((c for c in previous if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition.model_validate({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": since,
    })


def conditions_for(phase: Phase, reason: Reason, message: str, generation: int,
                   previous: list[Condition], now: str) -> list[Condition]:
    """kstatus conditions: Reconciling while building, Stalled on failure, Ready on success.

    Stalled's message starts with the reason: kstatus clients (Helm 4 ``--wait``, Flux) print
    a failed object's message and not its reason, and "BuildFailed: ..." is what a person
    reading a failed ``helm install`` needs first.
    """
    active = phase in (Phase.PENDING, Phase.BUILDING)
    failed = phase is Phase.FAILED
    done = phase is Phase.SUCCEEDED
    return [
        _condition(previous, "Ready", "True" if done else "False", reason, message,
                   generation, now),
        _condition(previous, "Reconciling", "True" if active else "False", reason,
                   message if active else "", generation, now),
        _condition(previous, "Stalled", "True" if failed else "False", reason,
                   f"{reason}: {message}" if failed else "", generation, now),
    ]


#: The conditions every status write sets (kstatus's); others, such as TriggersHealthy, are
#: carried over as they are.
KSTATUS_CONDITIONS = ("Ready", "Reconciling", "Stalled")
#: Whether the triggers' look-ups work (True/False with the error); written only on change.
TRIGGERS_HEALTHY = "TriggersHealthy"


def _dump(conditions: list[Condition]) -> list[dict[str, Any]]:
    # Empty messages are left out: the API server's merge patch turns "" in a list into null.
    return [c.model_dump(mode="json", by_alias=True, exclude_defaults=True) for c in conditions]


@dataclass(frozen=True)
class ConditionUpdate:
    """A condition beyond kstatus's set by a transition (Signed, Attested)."""

    type: str
    status: str
    reason: str
    message: str


def status_patch(previous: ImageBuildStatus, *, phase: Phase, reason: Reason, message: str,
                 generation: int, now: str | None = None,
                 conditions: Sequence[ConditionUpdate] = (), **fields: Any) -> dict[str, Any]:
    """The status to merge-patch for one transition, conditions included.

    ``fields`` are further ImageBuildStatus fields by their Python names; a field given as
    None is removed (JSON merge patch), so a new build clears the last one's digest.
    ``conditions`` set conditions of other types; the rest are carried over as they are.
    """
    now = now or now_iso()
    updated = {c.type: _condition(previous.conditions, c.type, c.status, c.reason, c.message,
                                  generation, now) for c in conditions}
    kept = [updated.pop(c.type, c) for c in previous.conditions
            if c.type not in KSTATUS_CONDITIONS]
    conditions_now = [*conditions_for(phase, reason, message, generation, previous.conditions,
                                      now), *kept, *updated.values()]
    patch: dict[str, Any] = {
        "phase": phase.value,
        "reason": reason.value,
        "message": message,
        "observedGeneration": generation,
        "conditions": _dump(conditions_now),
    }
    aliases = ImageBuildStatus.model_fields
    for name, value in fields.items():
        alias = aliases[name].alias or name
        patch[alias] = value
    return patch


def history_with(previous: ImageBuildStatus, record: BuildRecord) -> list[dict[str, Any]]:
    """status.history after ``record``: newest first, at most ``HISTORY_LIMIT`` entries.

    The whole list is written each time (a merge patch replaces lists), in the same patch as
    the build's final status, so history costs no extra API write.
    """
    records = [record, *(previous.history or [])][:HISTORY_LIMIT]
    return [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in records]


def size_delta(previous: ImageBuildStatus, size: int) -> int | None:
    """Bytes gained since the previous successful build (from history); None for the first."""
    for record in previous.history or []:
        if record.phase is Phase.SUCCEEDED and record.size is not None:
            return size - record.size
    return None


def signed_size(delta: int) -> str:
    """A size change for people: ``+1.2MiB``, ``-300B``, ``±0B``."""
    if delta == 0:
        return "±0B"
    return ("+" if delta > 0 else "-") + human_size(abs(delta))


def trigger_status_patch(previous: ImageBuildStatus, *, generation: int,
                         webhook_path: str | None, healthy: bool, reason: str, message: str,
                         now: str) -> dict[str, Any] | None:
    """The patch that shows the triggers' webhook path and health, or None when status
    already does: a poll that finds nothing new costs no write.

    ``TriggersHealthy`` is written when a look-up starts or stops failing; an ImageBuild
    whose look-ups always worked never gets one (no write for good news nobody waits for).
    """
    patch: dict[str, Any] = {}
    shown = previous.triggers.webhook_path if previous.triggers else None
    if webhook_path != shown:
        patch["triggers"] = {"webhookPath": webhook_path}
    old = next((c for c in previous.conditions if c.type == TRIGGERS_HEALTHY), None)
    wanted = "True" if healthy else "False"
    if (old is None and not healthy) or (old is not None and (
            old.status, old.reason, old.message) != (wanted, reason, message)):
        others = [c for c in previous.conditions if c.type != TRIGGERS_HEALTHY]
        patch["conditions"] = _dump([*others, _condition(
            previous.conditions, TRIGGERS_HEALTHY, wanted, reason, message, generation, now)])
    return patch or None


def builder_image(pod: dict[str, Any]) -> str | None:
    """The builder image as the kubelet ran it, by digest where the runtime says
    (``name@sha256:...``): the builder in a build's provenance."""
    builder = pod_builder(pod).value
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == builder and status.get("imageID"):
            image_id = str(status["imageID"])
            return image_id.split("://", 1)[1] if "://" in image_id else image_id
    return None
