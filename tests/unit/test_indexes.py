"""What the operator tracks per ImageBuild and build pod, and that finished ones are dropped.

Keeping finished ones would grow memory and resync work with history (ImageBuilds) and
never free a queue slot (pods).
"""

from __future__ import annotations

from typing import Any

from stagewright.handlers.registration import Tracked, running_pods, unsettled
from stagewright.queueing import Waiting

META = {"name": "web", "namespace": "team-a", "generation": 2,
        "creationTimestamp": "2026-11-30T02:00:00Z"}
OWNER = [{"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild", "name": "web"}]


def _unsettled(status: dict[str, Any], annotations: dict[str, str] | None = None) -> Any:
    return unsettled(namespace="team-a", name="web", status=status,
                           meta=META, annotations=annotations or {})


def test_a_finished_imagebuild_leaves_the_index() -> None:
    done = {"phase": "Succeeded", "observedGeneration": 2}
    assert _unsettled(done) == {}
    assert _unsettled(done, {"stagewright.dev/rebuild": "again"}) != {}


def test_new_and_queued_imagebuilds_wait_building_ones_do_not() -> None:
    waiting = Waiting("2026-11-30T02:00:00Z", "team-a", "web")
    assert _unsettled({}) == {("team-a", "web"): waiting}
    queued = {"phase": "Pending", "reason": "Queued", "observedGeneration": 2}
    assert _unsettled(queued) == {("team-a", "web"): waiting}
    building = {"phase": "Building", "observedGeneration": 2, "podName": "web-2-1"}
    assert _unsettled(building) == {("team-a", "web"): None}
    superseded = {"phase": "Building", "observedGeneration": 1, "podName": "web-1-1"}
    assert _unsettled(superseded) == {("team-a", "web"): waiting}


def _running(phase: str, owners: list[dict[str, str]] = OWNER) -> Any:
    meta = {"name": "web-2-1", "namespace": "team-a", "ownerReferences": owners}
    return running_pods(namespace="team-a", name="web-2-1", meta=meta,
                              status={"phase": phase})


def test_running_pods_are_indexed_by_owner_and_leave_when_done() -> None:
    assert _running("Pending") == {("team-a", "web"): "web-2-1"}
    assert _running("Running") == {("team-a", "web"): "web-2-1"}
    assert _running("Succeeded") == {}
    assert _running("Failed") == {}
    assert _running("Running", owners=[]) == {}


def test_tracked_keeps_only_unfinished_objects() -> None:
    tracked = Tracked()
    tracked.note_imagebuild("team-a", "web", {("team-a", "web"): None})
    tracked.note_pod("team-a", "web-2-1", {("team-a", "web"): "web-2-1"})
    tracked.note_pod("team-a", "web-2-2", {("team-a", "web"): "web-2-2"})
    assert tracked.running_builds() == [("team-a", "web")]
    tracked.note_pod("team-a", "web-2-1", {})
    tracked.note_pod("team-a", "web-2-2", {})
    tracked.note_imagebuild("team-a", "web", {})
    assert (tracked.unsettled, tracked.running_pods, tracked.running_builds()) == ({}, {}, [])
