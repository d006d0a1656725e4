"""The reconciler under API-server faults, over HTTP, against kmock's Kubernetes emulator.

tests/cluster covers the happy path on a real kube-apiserver; what a real server will not do
on cue is fail. Our code runs unchanged: ``Reconciler`` -> ``KubeApi`` -> aiohttp -> kmock on
127.0.0.1. Each test asserts what the server received and holds, and what ``reconcile`` raised.

kmock limits met here: it never sets uid/generation/resourceVersion (the seeded ImageBuild
carries its own), and it stores a write before any reaction answers, so a refused write is
injected with ``FaultyEmulator.refuse`` (see kmock_support). PATCH .../status is applied to
the whole object as a JSON merge patch, which is what the status subresource does for the
``{"status": ...}`` bodies the operator sends, so the stored status is asserted directly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kmock import KubernetesError, Server, subresource
from kmock import name as named
from tests.unit.kmock_support import (
    CONFIGMAPS,
    EVENTS,
    IMAGEBUILDS,
    PODS,
    SECRETS,
    FaultyEmulator,
    configuration_for,
    emulated_api,
)

from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.handlers.reconciler import Reconciler
from stagewright.registry import RegistryClient
from stagewright.resources.pod_common import build_key, pod_name
from stagewright.settings import Settings

NS, NAME, UID = "team-a", "web", "0b9e6c1e-uid-of-web"
POD = pod_name(NAME, build_key(1, None), 1)
LOG = logging.getLogger("test")
CONTEXT = {"metadata": {"name": "ctx", "namespace": NS}, "data": {"Dockerfile": "FROM scratch"}}


def imagebuild(**spec: Any) -> dict[str, Any]:
    """An ImageBuild as the API server would hold it at generation 1, before any status."""
    return {
        "apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": {"source": {"configMap": {"name": "ctx"}},
                 "output": {"image": "registry.example.com/acme/web"}, **spec},
    }


def status_of(emu: FaultyEmulator) -> dict[str, Any]:
    stored = emu.stored(IMAGEBUILDS, NS, NAME)
    assert stored is not None
    return dict(stored.get("status") or {})


def pod_posts(emu: FaultyEmulator) -> int:
    return len(emu["post", PODS])


def writes(emu: FaultyEmulator) -> list[str]:
    """Each write as "METHOD resource", in order (Events included: they cost a write too)."""
    return [f"{request.method.value} {request.resource.plural if request.resource else request.url}"
            for request in emu.writes()]


def warning_reasons(emu: FaultyEmulator) -> list[str]:
    """The reasons of the Warning Events the operator posted."""
    return [request.data["reason"] for request in emu["post", EVENTS]
            if request.data["type"] == "Warning"]


def status_patches(emu: FaultyEmulator) -> list[dict[str, Any]]:
    return [request.data["status"] for request in emu["patch", IMAGEBUILDS, subresource("status")]]


@pytest.fixture
async def served() -> AsyncIterator[tuple[FaultyEmulator, Server, KubeApi]]:
    async with emulated_api() as served:
        yield served


@pytest.fixture
def emu(served: tuple[FaultyEmulator, Server, KubeApi]) -> FaultyEmulator:
    """The emulator, holding the ConfigMap context every ImageBuild here refers to."""
    emulator = served[0]
    emulator.objects[CONFIGMAPS, NS, "ctx"] = CONTEXT
    return emulator


@pytest.fixture
def reconciler(served: tuple[FaultyEmulator, Server, KubeApi]) -> Reconciler:
    """The registry client is never entered: none of these paths may reach a registry."""
    return Reconciler(served[2], RegistryClient(timeout=5), Settings())


async def test_lost_status_write_is_retried_without_a_second_pod(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """A 500 that stored nothing: the resync must adopt the pod, not build twice."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    refused = emu.refuse(emu["patch", subresource("status")], 500, "InternalError",
                         "etcdserver: request timed out")

    with pytest.raises(ApiError) as caught:
        await reconciler.reconcile(NS, NAME)
    assert caught.value.status == 500
    assert caught.value.temporary
    assert len(refused) == 1
    assert pod_posts(emu) == 1
    assert status_of(emu) == {}

    await reconciler.reconcile(NS, NAME)  # what the periodic resync does

    assert pod_posts(emu) == 2  # the second was answered 409 by the emulator
    assert emu.versions(PODS, NS, POD) == 1  # created once, never replaced
    assert [key[2] for key in emu.objects if key[0] == PODS] == [POD]
    status = status_of(emu)
    assert (status["phase"], status["podName"], status["observedGeneration"]) == (
        "Building", POD, 1)


async def test_status_write_that_committed_then_failed_is_not_repeated(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """A 500 after the write landed (kmock's own reaction): the resync follows the pod."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    emu["patch", subresource("status")][:1] << KubernetesError(
        status=500, reason="InternalError", message="timeout after commit")

    with pytest.raises(ApiError) as caught:
        await reconciler.reconcile(NS, NAME)
    assert caught.value.temporary
    assert status_of(emu)["phase"] == "Building"

    await reconciler.reconcile(NS, NAME)

    assert pod_posts(emu) == 1
    assert len(status_patches(emu)) == 1
    assert len(emu["get", PODS, named(POD)]) == 1  # the second run looked at its pod instead
    assert status_of(emu)["podName"] == POD


async def test_conflict_with_our_own_pod_adopts_it(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """A 409 for a pod we own (e.g. created before a restart) is our build, not a failure."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    emu.objects[PODS, NS, POD] = {"metadata": {"name": POD, "namespace": NS, "ownerReferences": [
        {"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild", "name": NAME,
         "uid": UID, "controller": True}]}}

    await reconciler.reconcile(NS, NAME)

    assert pod_posts(emu) == 1
    assert emu.versions(PODS, NS, POD) == 1
    assert [patch["phase"] for patch in status_patches(emu)] == ["Building"]
    assert status_of(emu)["podName"] == POD


async def test_conflict_with_someone_elses_pod_fails_and_names_it(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """A same-named pod owned by another object is never adopted, deleted or overwritten."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    foreign = {"metadata": {"name": POD, "namespace": NS, "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "other", "uid": "other-uid"}]}}
    emu.objects[PODS, NS, POD] = foreign

    await reconciler.reconcile(NS, NAME)

    status = status_of(emu)
    assert status["phase"] == "Failed"
    assert POD in status["message"]
    assert emu.stored(PODS, NS, POD) == foreign
    assert writes(emu) == ["POST pods", "PATCH imagebuilds", "POST events"]
    assert warning_reasons(emu) == ["PodConflict"]


@pytest.mark.parametrize(
    ("code", "spec", "server_message"),
    [
        (400, {"resources": {"limits": {"memory": "1Gx"}}},
         'Pod in version "v1" cannot be handled as a Pod: quantities must match the regular '
         "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
        (422, {"nodeSelector": {"disk": "fast ssd"}},
         f'Pod "{POD}" is invalid: spec.nodeSelector: Invalid value: "fast ssd": a valid label '
         "must be an empty string or consist of alphanumeric characters"),
    ],
    ids=["400-bad-quantity", "422-bad-label"],
)
async def test_pod_rejected_by_the_server_fails_once_as_invalid_spec(
        emu: FaultyEmulator, reconciler: Reconciler, code: int, spec: dict[str, Any],
        server_message: str) -> None:
    """Specs the CRD schema and our models pass but the Pod API rejects: settled, no retry."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild(**spec)
    emu.refuse(emu["post", PODS], code, "Invalid", server_message, times=99)

    await reconciler.reconcile(NS, NAME)
    await reconciler.reconcile(NS, NAME)

    status = status_of(emu)
    assert (status["phase"], status["reason"], status["observedGeneration"]) == (
        "Failed", "InvalidSpec", 1)
    assert server_message in status["message"]
    assert emu.stored(PODS, NS, POD) is None
    assert writes(emu) == ["POST pods", "PATCH imagebuilds", "POST events"]
    assert warning_reasons(emu) == ["InvalidSpec"]


@pytest.mark.parametrize(("code", "reason"), [(429, "TooManyRequests"),
                                              (503, "ServiceUnavailable")])
async def test_throttled_or_unavailable_read_is_temporary_and_writes_nothing(
        emu: FaultyEmulator, reconciler: Reconciler, code: int, reason: str) -> None:
    """No decision is taken on an ImageBuild the operator could not read."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    emu["get", IMAGEBUILDS][:1] << KubernetesError(status=code, reason=reason, message="busy")

    with pytest.raises(ApiError) as caught:
        await reconciler.reconcile(NS, NAME)

    assert (caught.value.status, caught.value.temporary) == (code, True)
    assert len(emu["get", IMAGEBUILDS]) == 1
    assert emu.writes() == []
    assert emu.versions(IMAGEBUILDS, NS, NAME) == 1


async def test_unreachable_server_is_a_temporary_503() -> None:
    """Connection refused must reach the resync as retryable, not as a crash."""
    async with FaultyEmulator() as emulator:
        async with Server(emulator, host="127.0.0.1") as server:
            configuration = configuration_for(server)
        # The server is stopped: its port now refuses connections.
        async with KubeApi(configuration) as api:
            reconciler = Reconciler(api, RegistryClient(timeout=5), Settings())
            with pytest.raises(ApiError) as caught:
                await reconciler.reconcile(NS, NAME)
    assert (caught.value.status, caught.value.temporary) == (503, True)
    assert "Cannot connect" in caught.value.message
    assert len(emulator) == 0


async def test_spec_our_models_reject_fails_once_and_names_the_field(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """The CRD accepts any buildArgs key; the models do not. Say so once, never loop."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild(buildArgs={"BAD-NAME": "x"})

    await reconciler.reconcile(NS, NAME)
    await reconciler.reconcile(NS, NAME)

    patches = status_patches(emu)
    assert len(patches) == 1
    assert (patches[0]["phase"], patches[0]["reason"]) == ("Failed", "InvalidSpec")
    assert "buildArgs" in patches[0]["message"]
    assert status_of(emu)["observedGeneration"] == 1
    assert pod_posts(emu) == 0
    assert writes(emu) == ["PATCH imagebuilds", "POST events"]
    assert warning_reasons(emu) == ["InvalidSpec"]


async def test_missing_context_waits_in_pending_then_builds_when_it_appears(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """A pod would hang on a missing volume without a word: the status says what is missing."""
    del emu.objects[CONFIGMAPS, NS, "ctx"]
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild(output={
        "image": "registry.example.com/acme/web", "pushSecretRef": {"name": "regcred"}})
    await reconciler.reconcile(NS, NAME)
    status = status_of(emu)
    assert (status["phase"], status["reason"]) == ("Pending", "ReferenceNotFound")
    assert "ConfigMap ctx" in status["message"]
    assert "Secret regcred" in status["message"]
    assert pod_posts(emu) == 0

    await reconciler.reconcile(NS, NAME)  # the resync: nothing new to say
    assert len(status_patches(emu)) == 1

    emu.objects[CONFIGMAPS, NS, "ctx"] = CONTEXT
    emu.objects[SECRETS, NS, "regcred"] = {"metadata": {"name": "regcred", "namespace": NS}}
    await reconciler.reconcile(NS, NAME)
    status = status_of(emu)
    assert (status["phase"], status["podName"]) == ("Building", POD)
    assert pod_posts(emu) == 1


@pytest.mark.parametrize("spec", [
    {"output": {"image": "evil.example/loot"}},
    {"cache": {"repo": "evil.example/cache"}},
], ids=["output", "cache"])
async def test_a_registry_outside_the_allow_list_never_gets_a_pod(
        served: tuple[FaultyEmulator, Server, KubeApi], emu: FaultyEmulator,
        spec: dict[str, Any]) -> None:
    """STAGEWRIGHT_REGISTRY_ALLOW: refused before any pod exists, said once, never retried."""
    allowed = Reconciler(served[2], RegistryClient(timeout=5),
                         Settings(registry_allow=["registry.example.com"]))
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild(**spec)

    await allowed.reconcile(NS, NAME)
    await allowed.reconcile(NS, NAME)

    status = status_of(emu)
    assert (status["phase"], status["reason"]) == ("Failed", "RegistryNotAllowed")
    assert "evil.example" in status["message"]
    assert pod_posts(emu) == 0
    assert writes(emu) == ["PATCH imagebuilds", "POST events"]


ORPHAN = {"apiVersion": "v1", "kind": "Pod",
          "metadata": {"name": POD, "namespace": NS,
                       "labels": {"stagewright.dev/imagebuild": NAME}},
          "status": {"phase": "Running"}}


@pytest.mark.parametrize(("owner", "stopped"), [
    (None, True),  # the ImageBuild is gone
    ({"deletionTimestamp": "2026-11-30T02:00:00Z", "finalizers": ["orphan"]}, True),
    ({}, False),  # it exists and stays: a pod made by hand from `stagewright render`
])
async def test_a_build_pod_nothing_owns_is_stopped_while_its_imagebuild_goes(
        emu: FaultyEmulator, reconciler: Reconciler, owner: dict[str, Any] | None,
        stopped: bool) -> None:
    """Orphan deletion strips the owner reference while the ImageBuild is still there, being
    deleted (the orphan finalizer): the operator must stop the build then, not wait for it."""
    emu.objects[PODS, NS, POD] = ORPHAN
    if owner is not None:
        body = imagebuild()
        body["metadata"].update(owner)
        emu.objects[IMAGEBUILDS, NS, NAME] = body
    await reconciler.stop_orphan(ORPHAN)
    assert len(emu["delete", PODS]) == (1 if stopped else 0)
    assert (emu.stored(PODS, NS, POD) is None) is stopped


async def test_a_pod_refused_by_a_terminating_namespace_is_not_reported_as_rejected(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """The namespace is being deleted, the ImageBuild with it: no Failed status, no Event."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    emu.refuse(emu["post", PODS], 403, "Forbidden",
               f'pods "{POD}" is forbidden: unable to create new content in namespace {NS} '
               "because it is being terminated")
    await reconciler.reconcile(NS, NAME)
    assert status_of(emu) == {}
    assert warning_reasons(emu) == []


async def test_a_pod_refused_for_a_missing_service_account_waits_for_it(
        emu: FaultyEmulator, reconciler: Reconciler) -> None:
    """A namespace applied together with its ImageBuild has no default ServiceAccount for a
    moment, and the ServiceAccount admission plugin refuses pods meanwhile (its exact words
    below, as kube-apiserver 1.20 says them): the build waits, it does not fail."""
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    emu.refuse(emu["post", PODS], 403, "Forbidden",
               f'pods "{POD}" is forbidden: error looking up service account {NS}/default: '
               'serviceaccount "default" not found')
    await reconciler.reconcile(NS, NAME)
    status = status_of(emu)
    assert (status["phase"], status["reason"]) == ("Pending", "ReferenceNotFound")
    assert status["message"] == (f"Waiting for ServiceAccount default in namespace {NS}; the "
                                 "build starts when it exists.")
    assert warning_reasons(emu) == ["ReferenceNotFound"]

    await reconciler.reconcile(NS, NAME)  # the resync, once the account exists
    status = status_of(emu)
    assert (status["phase"], status["podName"]) == ("Building", POD)
    assert pod_posts(emu) == 2
