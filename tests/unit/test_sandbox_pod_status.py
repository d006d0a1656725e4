"""The sandbox kubelet's pod status: what a real kubelet would write, checked offline.

The operator's cluster tests read these statuses as if a node wrote them, so each patch is
merged into the pod and validated against the official Pod schema, and the termination
message follows the kubelet's rules (digest from the message file, else the log tail).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes_validate
import pytest

from sandbox.buildah import BuildResult
from sandbox.kubelet import (
    DEADLINE_MESSAGE,
    finished_status_patch,
    log_tail,
    lost_status_patch,
    running_status_patch,
    termination_message,
    waiting_status_patch,
)

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def build_pod(**container: Any) -> dict[str, Any]:
    """A build pod as the operator creates it (the fields the kubelet reads)."""
    kaniko = {
        "name": "kaniko",
        "image": "ghcr.io/osscontainertools/kaniko:v1.28.3",
        "args": ["--context=dir:///workspace", "--digest-file=/dev/termination-log"],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **container,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1-1", "namespace": "team-a", "uid": "0000-1111",
                     "labels": {"app.kubernetes.io/managed-by": "stagewright"}},
        "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 600,
                 "containers": [kaniko]},
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }


def apply(pod: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Merge a status patch as the API server would (lists replaced whole) and validate."""
    merged = copy.deepcopy(pod)
    merged["status"] = {**merged.get("status", {}), **patch["status"]}
    kubernetes_validate.validate(merged, "1.33.0", strict=True)
    return merged


def conditions(pod: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {c["type"]: (c["status"], c.get("reason")) for c in pod["status"]["conditions"]}


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return state


def finish(pod: dict[str, Any], result: BuildResult, digest_file: str | None) -> dict[str, Any]:
    running = apply(pod, running_status_patch(pod, start_time=T0, started_at=T0))
    patch = finished_status_patch(
        running, result, digest_file=digest_file, start_time=T0, started_at=T0,
        finished_at=T0 + timedelta(seconds=42),
    )
    return apply(running, patch)


def test_running_status_is_a_started_ready_container() -> None:
    pod = apply(build_pod(), running_status_patch(build_pod(), start_time=T0, started_at=T0))
    status = pod["status"]
    assert status["phase"] == "Running"
    assert status["startTime"] == "2026-11-26T12:00:00Z"
    assert status["podIP"] == status["hostIP"] == "127.0.0.1"
    container = status["containerStatuses"][0]
    assert container["state"] == {"running": {"startedAt": "2026-11-26T12:00:00Z"}}
    assert container["ready"] is True
    assert container["restartCount"] == 0
    assert container["image"] == "ghcr.io/osscontainertools/kaniko:v1.28.3"
    assert container["containerID"].startswith("buildah://")
    assert set(conditions(pod).values()) == {("True", None)}


def test_success_reports_the_digest_as_termination_message() -> None:
    pod = finish(build_pod(), BuildResult(exit_code=0, digest=DIGEST, log="done\n"),
                 "/dev/termination-log")
    assert pod["status"]["phase"] == "Succeeded"
    state = terminated(pod)
    assert state["exitCode"] == 0
    assert state["reason"] == "Completed"
    assert state["message"] == DIGEST
    assert state["startedAt"] == "2026-11-26T12:00:00Z"
    assert state["finishedAt"] == "2026-11-26T12:00:42Z"
    assert conditions(pod) == {
        "PodReadyToStartContainers": ("False", None),
        "Initialized": ("True", "PodCompleted"),
        "Ready": ("False", "PodCompleted"),
        "ContainersReady": ("False", "PodCompleted"),
        "PodScheduled": ("True", None),
    }


def test_digest_file_elsewhere_leaves_no_message() -> None:
    pod = finish(build_pod(), BuildResult(exit_code=0, digest=DIGEST, log="done\n"),
                 "/kaniko/digest")
    assert "message" not in terminated(pod)


def test_failure_falls_back_to_the_log_tail() -> None:
    log = "".join(f"step {i}\n" for i in range(200)) + "/bin/sh -c make: exit status 2\n"
    pod = finish(build_pod(), BuildResult(exit_code=1, digest=None, log=log),
                 "/dev/termination-log")
    assert pod["status"]["phase"] == "Failed"
    assert "reason" not in pod["status"]
    state = terminated(pod)
    assert state["exitCode"] == 1
    assert state["reason"] == "Error"
    assert state["message"].endswith("make: exit status 2\n")
    assert state["message"].count("\n") == 80
    assert conditions(pod)["Ready"] == ("False", "PodFailed")


def test_file_policy_keeps_the_message_empty_on_failure() -> None:
    pod = finish(build_pod(terminationMessagePolicy="File"),
                 BuildResult(exit_code=1, digest=None, log="boom\n"), "/dev/termination-log")
    assert "message" not in terminated(pod)


def test_deadline_is_reported_on_the_pod() -> None:
    result = BuildResult(exit_code=137, digest=None, log="RUN sleep 600\nkilled\n",
                         timed_out=True)
    pod = finish(build_pod(), result, "/dev/termination-log")
    status = pod["status"]
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed", "DeadlineExceeded", DEADLINE_MESSAGE
    )
    assert terminated(pod)["exitCode"] == 137
    assert "RUN sleep 600" in terminated(pod)["message"]


def test_waiting_for_a_missing_volume_is_container_creating() -> None:
    pod = apply(build_pod(), waiting_status_patch(build_pod(), start_time=T0, now=T0))
    assert pod["status"]["phase"] == "Pending"
    container = pod["status"]["containerStatuses"][0]
    assert container["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert container["ready"] is False
    assert conditions(pod)["ContainersReady"] == ("False", "ContainersNotReady")


def test_a_pod_left_running_by_a_previous_kubelet_is_failed() -> None:
    running = apply(build_pod(), running_status_patch(build_pod(), start_time=T0, started_at=T0))
    pod = apply(running, lost_status_patch(running, now=T0 + timedelta(minutes=5)))
    assert pod["status"]["phase"] == "Failed"
    assert "previous" not in pod["status"]["message"]
    assert "restarted" in pod["status"]["message"]
    state = terminated(pod)
    assert (state["exitCode"], state["reason"]) == (137, "ContainerStatusUnknown")
    assert state["startedAt"] == "2026-11-26T12:00:00Z"
    assert pod["status"]["startTime"] == "2026-11-26T12:00:00Z"


def test_unchanged_conditions_keep_their_transition_time() -> None:
    running = apply(build_pod(), running_status_patch(build_pod(), start_time=T0, started_at=T0))
    done = finish(running, BuildResult(exit_code=0, digest=DIGEST, log=""),
                  "/dev/termination-log")
    times = {c["type"]: c["lastTransitionTime"] for c in done["status"]["conditions"]}
    assert times["PodScheduled"] == "2026-11-26T12:00:00Z"
    assert times["Initialized"] == "2026-11-26T12:00:00Z"
    assert times["Ready"] == "2026-11-26T12:00:42Z"


@pytest.mark.parametrize(
    ("log", "expected"),
    [
        ("short\n", "short\n"),
        ("".join(f"{i}\n" for i in range(100)), "".join(f"{i}\n" for i in range(20, 100))),
        ("x" * 5000, "x" * 2048),
        ("é" * 2000, "é" * 1024),
    ],
)
def test_log_tail_is_80_lines_then_2048_bytes(log: str, expected: str) -> None:
    assert log_tail(log) == expected


def test_message_file_is_capped_at_4096_bytes() -> None:
    container = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    assert termination_message(container, 0, "d" * 5000, "") == "d" * 4096
    assert termination_message(container, 0, "", "log\n") == ""
