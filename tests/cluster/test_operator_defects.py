"""Four defects the stand-in kubelet hid (issue 8), each caught here on the real node.

- a ConfigMap context whose files the Dockerfile COPYs (the kubelet projects keys as symlinks);
- Events on a failed build (the docs and RBAC promise them);
- a failed build's message readable, its first line saying what failed (no ANSI colour codes);
- an unschedulable build pod shown as Pending with the scheduler's words.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from tests.cluster.builds import context, imagebuild

from sandbox.stack import Sandbox

pytestmark = pytest.mark.cluster

FAILING = "ARG BASE\nFROM ${BASE}\nRUN echo compiling && ls /no/such/dir\n"


def test_a_configmap_context_can_copy_its_own_files_nested_paths_included(
        sandbox: Sandbox, namespace: str) -> None:
    dockerfile = ("ARG BASE\nFROM ${BASE}\n"
                  "COPY greeting.txt /greeting.txt\n"
                  "COPY conf/ /etc/app/\n"
                  "RUN grep -qx hello /greeting.txt && grep -qx nested /etc/app/deep/app.conf\n")
    files = {"Dockerfile": dockerfile, "greeting.txt": "hello\n", "app.conf": "nested\n"}
    sandbox.admin.apply([context(namespace, dockerfile, files=files)])
    build = imagebuild(sandbox, namespace, "copies", cache={"enabled": False})
    build["spec"]["source"] = {"configMap": {"name": "ctx", "items": [
        {"key": "Dockerfile", "path": "Dockerfile"},
        {"key": "greeting.txt", "path": "greeting.txt"},
        {"key": "app.conf", "path": "conf/deep/app.conf"},
    ]}}
    sandbox.admin.apply([build])
    status = sandbox.wait_settled("copies", namespace)["status"]
    assert status["phase"] == "Succeeded", status.get("message")


def _failed_build(sandbox: Sandbox, namespace: str, name: str) -> dict[str, Any]:
    sandbox.admin.apply([context(namespace, FAILING)])
    sandbox.admin.apply([imagebuild(sandbox, namespace, name, cache={"enabled": False})])
    status: dict[str, Any] = sandbox.wait_settled(name, namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "BuildFailed"), status
    return status


def test_a_failed_build_posts_a_warning_event(sandbox: Sandbox, namespace: str) -> None:
    _failed_build(sandbox, namespace, "eventful")

    def about_the_build() -> list[dict[str, Any]]:
        return [e for e in sandbox.admin.list("v1", "Event", namespace)
                if e["involvedObject"]["kind"] == "ImageBuild"
                and e["involvedObject"]["name"] == "eventful"]

    deadline = time.monotonic() + 15  # the Event may follow the status write
    while not any(e["type"] == "Warning" for e in about_the_build()):
        if time.monotonic() > deadline:
            raise AssertionError([(e["type"], e["reason"], e["message"])
                                  for e in about_the_build()])
        time.sleep(0.5)


def test_a_failed_builds_message_is_readable_and_says_what_failed_first(
        sandbox: Sandbox, namespace: str) -> None:
    status = _failed_build(sandbox, namespace, "readable")
    message: str = status["message"]
    assert "\x1b[" not in message, repr(message[:300])
    headline = message.splitlines()[0]
    assert "Kaniko exited with code 1" in headline, repr(message[:300])
    assert "ls /no/such/dir" in message or "No such file or directory" in message
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert "\x1b[" not in stalled["message"]
    # kstatus clients print Stalled's message alone: it leads with the reason.
    assert stalled["message"].splitlines()[0] == f"BuildFailed: {headline}"


def test_an_unschedulable_build_is_pending_with_the_schedulers_words(
        sandbox: Sandbox, namespace: str) -> None:
    sandbox.admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN true\n")])
    sandbox.admin.apply([imagebuild(sandbox, namespace, "huge", resources={
        "requests": {"memory": "4Ti", "cpu": "100m"}, "limits": {"memory": "4Ti"}})])

    def explained(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return bool(status.get("phase") == "Pending"
                    and "Insufficient memory" in (status.get("message") or ""))

    try:
        sandbox.admin.wait_for("stagewright.dev/v1alpha1", "ImageBuild", "huge", namespace,
                               explained, 60, "Pending with the scheduler's words")
    finally:
        sandbox.admin.delete("stagewright.dev/v1alpha1", "ImageBuild", "huge", namespace)
