"""Pod -> outcome and outcome -> status: the rules users script against."""

from __future__ import annotations

from typing import Any

import pytest

from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import ImageBuildStatus, Phase
from stagewright.status import (
    classify_log,
    classify_pod,
    human_size,
    status_patch,
    trigger_status_patch,
)

DIGEST = "sha256:" + "ab" * 32


def pod(phase: str, state: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    container = {"name": "kaniko", "state": state or {}}
    return {"status": {"phase": phase, "containerStatuses": [container], **status}}


def terminated(code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "message": message, "reason": reason}}


def test_success_needs_exit_zero_and_a_digest() -> None:
    outcome = classify_pod(pod("Succeeded", terminated(0, DIGEST + "\n", "Completed")))
    assert outcome.finished
    assert outcome.succeeded
    assert outcome.digest == DIGEST


def test_a_pod_deleted_while_it_ran_is_evicted_not_failed() -> None:
    """The kubelet stops Kaniko on deletion (exit 2 on a real node): not the build's fault.

    1.20 cannot tell the Eviction API's deletion from one by hand: both are Evicted.
    """
    deleted = pod("Failed", terminated(2, "Running: [/bin/sh -c sleep 30]"))
    deleted["metadata"] = {"name": "app-1-1", "deletionTimestamp": "2026-11-30T02:02:13Z"}
    outcome = classify_pod(deleted)
    assert (outcome.finished, outcome.reason) == (True, Reason.EVICTED)
    assert "app-1-1" in outcome.message
    deleted["status"] = pod("Succeeded", terminated(0, DIGEST, "Completed"))["status"]
    assert classify_pod(deleted).succeeded, "a build that finished before the delete counts"


def test_exit_zero_without_digest_is_not_trusted() -> None:
    outcome = classify_pod(pod("Succeeded", terminated(0, "", "Completed")))
    assert not outcome.succeeded
    assert outcome.reason is Reason.DIGEST_UNVERIFIED


def test_digest_with_failure_asks_for_the_log() -> None:
    """Kaniko writes its digest file before pushing, and while pushing cache layers: a digest
    with a failure is no proof of a push, and the log must tell which step failed."""
    outcome = classify_pod(pod("Failed", terminated(1, DIGEST)))
    assert not outcome.succeeded
    assert outcome.log_needed
    assert outcome.reason is Reason.PUSH_FAILED  # the fallback when no log can be read
    assert DIGEST in outcome.message


def test_the_log_tells_a_failed_step_from_a_failed_push() -> None:
    step = classify_log(1, COLOURED_FAILURE, 2048)
    assert step.reason is Reason.BUILD_FAILED
    assert step.message.startswith("Kaniko exited with code 1 at step RUN grep")
    push = classify_log(1, "INFO[0003] Pushing image to r/x:latest\nerror pushing image: "
                        "failed to push to destination r/x:latest: UNAUTHORIZED", 2048)
    assert push.reason is Reason.PUSH_FAILED


def test_build_failure_keeps_the_log_tail() -> None:
    log = "\n".join(f"step {i}" for i in range(200)) + "\nerror building image: RUN make: exit 2"
    outcome = classify_pod(pod("Failed", terminated(1, log)), message_limit=300)
    assert outcome.reason is Reason.BUILD_FAILED
    assert outcome.message.endswith("RUN make: exit 2")
    assert len(outcome.message) <= 300


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        ("error pushing image: failed to push to destination r/x:latest: UNAUTHORIZED: "
         "authentication required", Reason.PUSH_FAILED),
        ("error checking push permissions -- make sure you entered the correct tag name, and "
         "that you are authenticated correctly, and try again: DENIED", Reason.PUSH_FAILED),
        ("error building image: unable to pull base image r/private:1: UNAUTHORIZED: "
         "authentication required", Reason.BUILD_FAILED),
        ("RUN ./install.sh\n/bin/sh: ./install.sh: Permission denied\n"
         "error building image: error building stage: exit status 126", Reason.BUILD_FAILED),
    ],
)
def test_only_kaniko_push_errors_are_push_failures(log: str, reason: Reason) -> None:
    assert classify_pod(pod("Failed", terminated(1, log))).reason is reason


@pytest.mark.parametrize(
    ("pod_status", "reason", "infrastructure"),
    [
        ({"reason": "DeadlineExceeded", "message": "Pod was active too long"}, Reason.TIMEOUT,
         False),
        ({"reason": "Evicted", "message": "The node was low on resource: memory."},
         Reason.EVICTED, True),
        ({"reason": "NodeLost"}, Reason.POD_LOST, True),
    ],
)
def test_pod_level_failures(pod_status: dict[str, str], reason: Reason,
                            infrastructure: bool) -> None:
    outcome = classify_pod(pod("Failed", {}, **pod_status))
    assert outcome.reason is reason
    assert outcome.infrastructure_failure is infrastructure


@pytest.mark.parametrize("state", [
    {"running": {}},                      # just marked for deletion
    terminated(143, "INFO[0003] RUN sleep 60"),  # Kaniko killed by the kubelet's SIGTERM
])
def test_a_pod_deleted_before_it_finished_was_evicted_and_is_retried(
        state: dict[str, Any]) -> None:
    """The Eviction API deletes the pod: Kaniko's death by SIGTERM is not a failed build."""
    deleted = {**pod("Failed" if "terminated" in state else "Running", state),
               "metadata": {"deletionTimestamp": "2026-11-30T02:00:00Z"}}
    outcome = classify_pod(deleted)
    assert (outcome.finished, outcome.reason) == (True, Reason.EVICTED)
    assert outcome.infrastructure_failure


def test_a_finished_build_deleted_afterwards_still_succeeded() -> None:
    done = {**pod("Succeeded", terminated(0, DIGEST, "Completed")),
            "metadata": {"deletionTimestamp": "2026-11-30T02:00:00Z"}}
    assert classify_pod(done).succeeded


def test_oom_says_what_to_change() -> None:
    outcome = classify_pod(pod("Failed", terminated(137, "", "OOMKilled")))
    assert outcome.reason is Reason.OUT_OF_MEMORY
    assert "resources.limits.memory" in outcome.message


def test_stuck_pods_are_reported_while_running_ones_are_not() -> None:
    stuck = classify_pod(pod("Pending", {"waiting": {"reason": "ImagePullBackOff",
                                                     "message": "pull access denied"}}))
    assert not stuck.finished
    assert stuck.waiting == "ImagePullBackOff: pull access denied"
    assert classify_pod(pod("Pending", {"waiting": {"reason": "ContainerCreating"}})).waiting \
        is None
    assert not classify_pod(pod("Running", {"running": {}})).finished


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (5 * 2**20, "5.0MiB"),
                       (3 * 2**40, "3072.0GiB")],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def conditions(patch: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in patch["conditions"]}


def test_conditions_follow_kstatus() -> None:
    empty = ImageBuildStatus()
    building = status_patch(empty, phase=Phase.BUILDING, reason=Reason.BUILDING, message="b",
                            generation=2, now="2026-11-27T00:00:00Z")
    by_type = conditions(building)
    assert by_type["Reconciling"]["status"] == "True"
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 2 for c in by_type.values())

    failed = status_patch(ImageBuildStatus.model_validate(building), phase=Phase.FAILED,
                          reason=Reason.BUILD_FAILED, message="boom", generation=2,
                          now="2026-11-27T00:05:00Z")
    by_type = conditions(failed)
    assert by_type["Stalled"]["status"] == "True"
    assert by_type["Stalled"]["reason"] == "BuildFailed"
    # kstatus clients (Helm 4, Flux) print the message only: it leads with the reason.
    assert by_type["Stalled"]["message"] == "BuildFailed: boom"
    assert failed["message"] == "boom"
    assert by_type["Reconciling"]["status"] == "False"
    # Ready stayed False: its transition time is kept, as metav1.Condition requires.
    assert by_type["Ready"]["lastTransitionTime"] == "2026-11-27T00:00:00Z"
    assert by_type["Stalled"]["lastTransitionTime"] == "2026-11-27T00:05:00Z"


def test_fields_given_as_none_are_cleared_by_the_merge_patch() -> None:
    patch = status_patch(ImageBuildStatus(), phase=Phase.BUILDING, reason=Reason.BUILDING,
                         message="", generation=1, digest=None, size_human=None, pod_name="p")
    assert patch["digest"] is None
    assert patch["sizeHuman"] is None
    assert patch["podName"] == "p"


#: What Kaniko's default colour log looks like when a RUN step fails (escape codes kept).
COLOURED_FAILURE = (
    "\x1b[36mINFO\x1b[0m[0000] COPY greeting.txt /greeting.txt\n"
    "\x1b[36mINFO\x1b[0m[0001] RUN grep -q hello /greeting.txt\n"
    "\x1b[36mINFO\x1b[0m[0001] Running: [/bin/sh -c grep -q hello /greeting.txt]\n"
    "grep: /greeting.txt: No such file or directory\n"
    "error building image: error building stage: failed to execute command: waiting for "
    "process to exit: exit status 2\n"
)


def test_failure_message_has_no_escape_codes_and_says_what_failed_first() -> None:
    outcome = classify_pod(pod("Failed", terminated(1, COLOURED_FAILURE)))
    assert "\x1b" not in outcome.message
    first_line = outcome.message.splitlines()[0]
    assert first_line.startswith("Kaniko exited with code 1 at step RUN grep -q hello "
                                 "/greeting.txt: error building image:")
    assert first_line.endswith("exit status 2")
    assert "grep: /greeting.txt: No such file or directory" in outcome.message


def test_headline_survives_a_log_as_long_as_the_limit() -> None:
    """The kubelet's termination message is 2,048 bytes: as long as the operator's limit."""
    log = ("x" * 2100) + "\n" + COLOURED_FAILURE
    outcome = classify_pod(pod("Failed", terminated(1, log)), message_limit=2048)
    assert len(outcome.message) <= 2048
    assert outcome.message.startswith("Kaniko exited with code 1 at step RUN grep")
    assert outcome.message.rstrip().endswith("exit status 2")


def test_unschedulable_pod_waits_with_the_schedulers_words() -> None:
    scheduler = "0/1 nodes are available: 1 Insufficient memory."
    pending = {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": scheduler}]}}
    outcome = classify_pod(pending)
    assert not outcome.finished
    assert outcome.waiting_reason is Reason.UNSCHEDULABLE
    assert outcome.waiting is not None
    assert scheduler in outcome.waiting


def test_a_scheduled_pending_pod_is_not_waiting() -> None:
    pending = {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True"}]}}
    assert classify_pod(pending).waiting is None


def test_kanikos_usage_text_does_not_push_the_error_out() -> None:
    """A fatal error (a git clone refused) is followed by ~100 lines of usage."""
    flags = "\n".join(f"  --flag{i} string  help" for i in range(120))
    usage = "Usage:\n  executor [flags]\n" + flags
    log = ("Error: error resolving source context: authentication required\n" + usage)
    outcome = classify_pod(pod("Failed", terminated(1, log)), message_limit=1024)
    assert "authentication required" in outcome.message.splitlines()[0]
    assert "--flag" not in outcome.message

def buildah_pod(phase: str, state: dict[str, Any]) -> dict[str, Any]:
    """A pod as the Buildah builder makes it: labelled, its container named buildah."""
    return {"metadata": {"labels": {"stagewright.dev/builder": "buildah"}},
            "status": {"phase": phase,
                       "containerStatuses": [{"name": "buildah", "state": state}]}}


def test_buildah_pods_are_read_from_their_buildah_container() -> None:
    outcome = classify_pod(buildah_pod("Succeeded", terminated(0, DIGEST, "Completed")))
    assert (outcome.succeeded, outcome.digest) == (True, DIGEST)
    # A pod labelled buildah has no kaniko container to read: the label decides.
    kaniko_named = pod("Succeeded", terminated(0, DIGEST, "Completed"))
    kaniko_named["metadata"] = {"labels": {"stagewright.dev/builder": "buildah"}}
    assert not classify_pod(kaniko_named).succeeded


def test_buildah_failures_name_buildah_and_its_failing_step() -> None:
    # As buildah 1.28 logs a failing RUN in the first stage of a two-stage build.
    log = ("[1/2] STEP 1/3: FROM registry.local:5000/base:latest AS build\n"
           "[1/2] STEP 2/3: RUN make\n/bin/sh: make: not found\n"
           "subprocess exited with status 127\n"
           "Error: building at STEP \"RUN make\": exit status 127")
    outcome = classify_pod(buildah_pod("Failed", terminated(1, log)))
    assert outcome.reason is Reason.BUILD_FAILED
    first = outcome.message.splitlines()[0]
    assert first.startswith("Buildah exited with code 1 at step RUN make: Error: building")
    assert outcome.message.endswith("exit status 127")


def test_a_failed_buildah_push_is_a_push_failure() -> None:
    log = ("Getting image source signatures\nError: pushing image \"r/x:1\" to \"docker://r/x:1\""
           ": unauthorized\nerror pushing image r/x:1")
    outcome = classify_pod(buildah_pod("Failed", terminated(1, log)))
    assert outcome.reason is Reason.PUSH_FAILED
    assert outcome.message.startswith("Buildah exited with code 1")


def test_a_termination_message_of_usage_text_only_asks_for_the_log() -> None:
    """The kubelet keeps the last 2,048 bytes: after a fatal error, only the usage's end."""
    tail = "\n".join(f"  --flag{i} string  help" for i in range(40))
    tail += '\nUse "executor [command] --help" for more information about a command.'
    outcome = classify_pod(pod("Failed", terminated(1, tail)))
    assert outcome.log_needed
    assert outcome.reason is Reason.BUILD_FAILED


def test_trigger_health_and_the_webhook_path_are_written_only_when_they_change() -> None:
    now = "2026-12-07T12:00:00Z"
    fresh = ImageBuildStatus()
    # Healthy with nothing to show: no write at all (a quiet poll costs nothing).
    assert trigger_status_patch(fresh, generation=1, webhook_path=None, healthy=True,
                                reason="Watching", message="ok", now=now) is None
    shown = trigger_status_patch(fresh, generation=1, webhook_path="/hooks/abc",
                                 healthy=True, reason="Watching", message="ok", now=now)
    assert shown == {"triggers": {"webhookPath": "/hooks/abc"}}
    failing = trigger_status_patch(fresh, generation=1, webhook_path=None, healthy=False,
                                   reason="SourceUnreachable", message="git: 503", now=now)
    assert failing is not None
    [condition] = failing["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "TriggersHealthy", "False", "SourceUnreachable")
    stored = ImageBuildStatus.model_validate(failing)
    assert trigger_status_patch(stored, generation=1, webhook_path=None, healthy=False,
                                reason="SourceUnreachable", message="git: 503", now=now) is None
    healed = trigger_status_patch(stored, generation=1, webhook_path=None, healthy=True,
                                  reason="Watching", message="ok", now=now)
    assert healed is not None
    assert healed["conditions"][0]["status"] == "True"


def test_a_build_write_keeps_conditions_it_does_not_own() -> None:
    """A merge patch replaces the whole list: TriggersHealthy must survive every transition."""
    previous = ImageBuildStatus.model_validate({"conditions": [{
        "type": "TriggersHealthy", "status": "False", "reason": "SourceUnreachable",
        "message": "git: 503", "lastTransitionTime": "2026-12-07T11:00:00Z"}]})
    patch = status_patch(previous, phase=Phase.BUILDING, reason=Reason.BUILDING, message="b",
                         generation=1)
    assert [c["type"] for c in patch["conditions"]] == [
        "Ready", "Reconciling", "Stalled", "TriggersHealthy"]
    assert patch["conditions"][3]["lastTransitionTime"] == "2026-12-07T11:00:00Z"
