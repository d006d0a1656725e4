"""How the controller classifies events on sight: what it keeps, drops and queues.

Real parts throughout: the Controller, Reconciler, BuildQueue and WorkQueue as the operator
builds them; the work queue's workers are not started, so what was queued is asserted, not
what a reconcile would then do (the cluster tier runs those against a real API server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from stagewright.handlers.build_queue import BuildQueue
from stagewright.handlers.kube_api import KubeApi
from stagewright.handlers.reconciler import Reconciler
from stagewright.handlers.registration import Controller, Tracked, Trigger
from stagewright.queueing import Limits
from stagewright.registry import RegistryClient
from stagewright.settings import Settings

NS = "team-a"


def imagebuild(name: str, generation: int = 1, version: str = "1", **status: Any,
               ) -> dict[str, Any]:
    return {"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": NS, "generation": generation,
                         "resourceVersion": version, "uid": f"uid-{name}",
                         "creationTimestamp": "2026-11-30T04:00:00Z"},
            "spec": {"source": {"url": "s3://bucket/ctx.tgz"},
                     "output": {"image": "registry.example.com/acme/web"}},
            "status": status}


def pod(owner: str | None, phase: str | None = None, name: str | None = None,
        ) -> dict[str, Any]:
    owners = [{"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
               "name": owner, "uid": f"uid-{owner}"}] if owner else []
    status: dict[str, Any] = {"phase": phase} if phase else {}
    if phase in ("Running", "Succeeded", "Failed"):
        status["containerStatuses"] = [{"name": "kaniko"}]
    return {"metadata": {"name": name or f"{owner}-1-1", "namespace": NS,
                         "ownerReferences": owners}, "status": status}


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    configuration = k8s_client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # never called: no worker runs here
    settings = Settings(max_running_builds=1)
    tracked = Tracked()
    holder: list[Controller] = []
    queue = BuildQueue(Limits(1, None), running_pods=tracked.running_builds,
                       wake=lambda ns, name: holder[0].enqueue((ns, name)))
    async with KubeApi(configuration) as api, RegistryClient(timeout=1) as registry:
        reconciler = Reconciler(api, registry, settings, queue=queue)
        holder.append(Controller(api, reconciler, settings, tracked))
        yield holder[0]


def test_a_finished_imagebuild_is_dropped_on_sight(controller: Controller) -> None:
    controller.imagebuild_event("ADDED", imagebuild(
        "done", phase="Succeeded", observedGeneration=1))
    assert controller.tracked.unsettled == {}
    assert len(controller.work) == 0


def test_a_new_imagebuild_is_tracked_and_queued_with_its_body(controller: Controller) -> None:
    body = imagebuild("new")
    controller.imagebuild_event("ADDED", body)
    assert (NS, "new") in controller.tracked.unsettled
    assert (NS, "new") in controller.work
    assert controller.work.waiting((NS, "new")) == Trigger(body=body)


def test_our_own_building_write_queues_nothing(controller: Controller) -> None:
    controller.imagebuild_event("MODIFIED", imagebuild(
        "web", phase="Building", observedGeneration=1, podName="web-1-1"))
    assert controller.tracked.unsettled == {(NS, "web"): None}
    assert len(controller.work) == 0


def test_a_new_generation_of_a_finished_build_is_queued(controller: Controller) -> None:
    controller.imagebuild_event("MODIFIED", imagebuild(
        "web", generation=2, phase="Succeeded", observedGeneration=1))
    assert (NS, "web") in controller.work


def test_pod_events_free_slots_and_queue_only_unfinished_owners(
        controller: Controller) -> None:
    controller.imagebuild_event("MODIFIED", imagebuild(
        "web", phase="Building", observedGeneration=1, podName="web-1-1"))
    controller.pod_event("ADDED", pod("web"))  # just created: nothing new
    assert controller.tracked.running_pods == {(NS, "web-1-1"): (NS, "web")}
    assert len(controller.work) == 0
    done = pod("web", "Succeeded")
    controller.pod_event("MODIFIED", done)
    assert controller.tracked.running_pods == {}
    assert controller.work.waiting((NS, "web")) == Trigger(pod=done)
    controller.pod_event("MODIFIED", pod("old", "Succeeded"))  # a finished build's old pod
    assert (NS, "old") not in controller.work


def test_a_relist_drops_what_was_deleted_unseen(controller: Controller) -> None:
    controller.imagebuild_event("ADDED", imagebuild("gone"))
    controller.imagebuild_event("ADDED", imagebuild("kept"))
    controller.pod_event("ADDED", pod("kept", "Running"))
    controller.pod_event("ADDED", pod("gone", "Running"))
    controller._imagebuilds_listed("", {(NS, "kept")})
    controller._pods_listed("", {(NS, "kept-1-1")})
    assert set(controller.tracked.unsettled) == {(NS, "kept")}
    assert set(controller.tracked.running_pods) == {(NS, "kept-1-1")}


def test_deletion_gives_the_queue_slot_to_the_next(controller: Controller) -> None:
    queue = controller.reconciler.queue
    assert queue is not None
    controller.pod_event("ADDED", pod("first", "Running"))  # holds the only slot
    controller.imagebuild_event("ADDED", imagebuild("second", phase="Pending",
                                                    reason="Queued", observedGeneration=1))
    queue.seed(entry for entry in controller.tracked.unsettled.values() if entry)
    assert queue.waits(NS, "second")
    controller.imagebuild_event("DELETED", imagebuild("first"))
    controller.pod_event("DELETED", pod("first", "Running"))
    assert not queue.waits(NS, "second")  # admitted, and woken through the work queue
    assert (NS, "second") in controller.work


async def test_a_shard_ignores_the_events_of_namespaces_it_does_not_serve() -> None:
    """With patterns, the informers watch the whole cluster and the controller keeps only
    its own shard's objects: another shard's ImageBuild and pod are never queued or noted."""
    configuration = k8s_client.Configuration()
    configuration.host = "http://127.0.0.1:9"
    settings = Settings(namespaces=["team-*", "!team-b"])
    async with KubeApi(configuration) as api, RegistryClient(timeout=1) as registry:
        controller = Controller(api, Reconciler(api, registry, settings), settings, Tracked())
        assert [(i.path, i._params()) for i in controller.informers] == [
            ("/apis/stagewright.dev/v1alpha1/imagebuilds",
             {"fieldSelector": "metadata.namespace!=team-b"}),
            ("/api/v1/pods", {"labelSelector": "app.kubernetes.io/managed-by=stagewright",
                              "fieldSelector": "metadata.namespace!=team-b"})]
        for namespace in ("team-a", "team-b", "default"):
            body = imagebuild("web")
            body["metadata"]["namespace"] = namespace
            controller.imagebuild_event("ADDED", body)
            running = pod("web", "Running")
            running["metadata"]["namespace"] = namespace
            controller.pod_event("ADDED", running)
        assert set(controller.tracked.unsettled) == {("team-a", "web")}
        assert set(controller.tracked.running_pods) == {("team-a", "web-1-1")}
        assert ("default", "web") not in controller.work


async def test_what_a_list_brings_waits_behind_watch_events(controller: Controller) -> None:
    controller.imagebuild_event("ADDED", imagebuild("listed"), low=True)
    controller.imagebuild_event("ADDED", imagebuild("created"))
    assert controller.work._queued == {(NS, "listed"): True,
                                       (NS, "created"): False}
