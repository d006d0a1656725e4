"""The kopf index functions: what they keep, and that they drop finished objects.

kopf keeps an object's previous index entry when the function returns None; only an empty
dict removes it. Getting that wrong kept every finished ImageBuild (memory, resync work) and
every finished build pod (a queue that never frees a slot).
"""

from __future__ import annotations

from typing import Any, cast

from stagewright.handlers.registration import running_pods, unsettled
from stagewright.queueing import Waiting

META = {"name": "web", "namespace": "team-a", "generation": 2,
        "creationTimestamp": "2026-11-30T02:00:00Z"}
OWNER = [{"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild", "name": "web"}]


async def _unsettled(status: dict[str, Any], annotations: dict[str, str] | None = None) -> Any:
    # Called as kopf calls it (keywords only); kopf's protocol type lists more of them.
    return await cast(Any, unsettled)(namespace="team-a", name="web", status=status,
                           meta=META, annotations=annotations or {})


async def test_a_finished_imagebuild_leaves_the_index() -> None:
    done = {"phase": "Succeeded", "observedGeneration": 2}
    assert await _unsettled(done) == {}
    assert await _unsettled(done, {"stagewright.dev/rebuild": "again"}) != {}


async def test_new_and_queued_imagebuilds_wait_building_ones_do_not() -> None:
    waiting = Waiting("2026-11-30T02:00:00Z", "team-a", "web")
    assert await _unsettled({}) == {("team-a", "web"): waiting}
    queued = {"phase": "Pending", "reason": "Queued", "observedGeneration": 2}
    assert await _unsettled(queued) == {("team-a", "web"): waiting}
    building = {"phase": "Building", "observedGeneration": 2, "podName": "web-2-1"}
    assert await _unsettled(building) == {("team-a", "web"): None}
    superseded = {"phase": "Building", "observedGeneration": 1, "podName": "web-1-1"}
    assert await _unsettled(superseded) == {("team-a", "web"): waiting}


async def _running(phase: str, owners: list[dict[str, str]] = OWNER) -> Any:
    meta = {"name": "web-2-1", "namespace": "team-a", "ownerReferences": owners}
    return await cast(Any, running_pods)(namespace="team-a", name="web-2-1", meta=meta,
                              status={"phase": phase})


async def test_running_pods_are_indexed_by_owner_and_leave_when_done() -> None:
    assert await _running("Pending") == {("team-a", "web"): "web-2-1"}
    assert await _running("Running") == {("team-a", "web"): "web-2-1"}
    assert await _running("Succeeded") == {}
    assert await _running("Failed") == {}
    assert await _running("Running", owners=[]) == {}
