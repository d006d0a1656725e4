"""The reconciler driving a multi-platform build, over HTTP against kmock's emulator.

What it writes (pods, status) and deletes at each step; tests/cluster builds for real. No
registry is reached on these paths (the registry client is never entered).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.unit.kmock_support import (
    CONFIGMAPS,
    IMAGEBUILDS,
    PODS,
    FaultyEmulator,
    emulated_api,
)
from tests.unit.test_reconciler_faults import warning_reasons, writes

from stagewright.handlers.reconciler import Reconciler
from stagewright.registry import RegistryClient
from stagewright.settings import Settings

NS, NAME, UID = "team-a", "multi", "5d1f2e3a-uid-of-multi"
AMD64_POD, ARM64_POD = "multi-1-linux-amd64-1", "multi-1-linux-arm64-1"
LOG = logging.getLogger("test")


def imagebuild(dockerfile_mode: str = "native", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": {"source": {"configMap": {"name": "ctx"}},
                 "output": {"image": "registry.example.com/acme/multi"},
                 "platforms": ["linux/amd64", "linux/arm64"], "platformMode": dockerfile_mode,
                 **spec},
    }


@pytest.fixture
async def emu_and_reconciler() -> AsyncIterator[tuple[FaultyEmulator, Reconciler]]:
    """The emulator holding a ConfigMap context, and a reconciler talking to it (its registry
    client is never entered)."""
    async with emulated_api() as (emulator, _, api):
        emulator.objects[CONFIGMAPS, NS, "ctx"] = {
            "metadata": {"name": "ctx", "namespace": NS},
            "data": {"Dockerfile": "FROM scratch\nCOPY app /app\n", "app": "x"}}
        yield emulator, Reconciler(api, RegistryClient(timeout=5), Settings())


def status_of(emu: FaultyEmulator) -> dict[str, Any]:
    stored = emu.stored(IMAGEBUILDS, NS, NAME)
    assert stored is not None
    return dict(stored.get("status") or {})


def with_status(emu: FaultyEmulator, name: str, status: dict[str, Any]) -> None:
    """The pod as the kubelet would have moved it on."""
    pod = dict(emu.objects[PODS, NS, name].raw)
    emu.objects[PODS, NS, name] = {**pod, "status": status}


async def test_one_pod_per_platform_and_one_status_write(
        emu_and_reconciler: tuple[FaultyEmulator, Reconciler]) -> None:
    emu, reconciler = emu_and_reconciler
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    await reconciler.reconcile(NS, NAME)
    assert writes(emu) == ["POST pods", "POST pods", "PATCH imagebuilds"]
    status = status_of(emu)
    assert (status["phase"], status["podName"], status["platformSummary"]) == (
        "Building", AMD64_POD, "0/2")
    assert [(p["platform"], p["pod"]) for p in status["platforms"]] == [
        ("linux/amd64", AMD64_POD), ("linux/arm64", ARM64_POD)]
    assert status["message"].startswith("Building target (last stage) for linux/amd64, "
                                        "linux/arm64 (native, each on its own nodes)")
    arm64 = emu.stored(PODS, NS, ARM64_POD)
    assert arm64 is not None
    assert arm64["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux",
                                             "kubernetes.io/arch": "arm64"}
    # Nothing changed: the next look writes nothing.
    await reconciler.reconcile(NS, NAME)
    assert len(writes(emu)) == 3


async def test_a_cross_build_with_a_run_for_arm64_is_refused_before_any_pod(
        emu_and_reconciler: tuple[FaultyEmulator, Reconciler]) -> None:
    emu, reconciler = emu_and_reconciler
    emu.objects[CONFIGMAPS, NS, "ctx"] = {"metadata": {"name": "ctx", "namespace": NS},
                                          "data": {"Dockerfile": "FROM scratch\nRUN true\n"}}
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild("cross")
    await reconciler.reconcile(NS, NAME)
    assert writes(emu) == ["PATCH imagebuilds", "POST events"]
    status = status_of(emu)
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "stage #0, line 2, for linux/arm64: RUN true" in status["message"]
    assert warning_reasons(emu) == ["InvalidSpec"]


async def test_a_failed_platform_stops_the_other_and_fails_the_build(
        emu_and_reconciler: tuple[FaultyEmulator, Reconciler]) -> None:
    emu, reconciler = emu_and_reconciler
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild()
    await reconciler.reconcile(NS, NAME)
    with_status(emu, AMD64_POD, {"phase": "Running"})
    with_status(emu, ARM64_POD, {"phase": "Failed", "containerStatuses": [{
        "name": "kaniko", "state": {"terminated": {
            "exitCode": 1, "message": "INFO[0001] RUN make\nerror building image: exit 2"}}}]})
    await reconciler.reconcile(NS, NAME)
    assert writes(emu)[3:] == ["DELETE pods", "PATCH imagebuilds", "POST events"]
    assert [r.url.path.rsplit("/", 1)[-1] for r in emu.writes() if r.method.value == "DELETE"] \
        == [AMD64_POD]
    status = status_of(emu)
    assert (status["phase"], status["reason"]) == ("Failed", "BuildFailed")
    assert status["message"].startswith("Platform linux/arm64: Kaniko exited with code 1 at "
                                        "step RUN make: error building image: exit 2")
    assert [(p["phase"], p["reason"]) for p in status["platforms"]] == [
        ("Failed", "Cancelled"), ("Failed", "BuildFailed")]
    assert status["history"][0]["reason"] == "BuildFailed"


async def test_a_lost_platform_pod_is_built_again_alone(
        emu_and_reconciler: tuple[FaultyEmulator, Reconciler]) -> None:
    emu, reconciler = emu_and_reconciler
    emu.objects[IMAGEBUILDS, NS, NAME] = imagebuild(retries=1)
    await reconciler.reconcile(NS, NAME)
    with_status(emu, AMD64_POD, {"phase": "Running"})
    del emu.objects[PODS, NS, ARM64_POD]
    await reconciler.reconcile(NS, NAME)
    assert writes(emu)[3:] == ["POST pods", "PATCH imagebuilds", "POST events"]
    assert emu.stored(PODS, NS, "multi-1-linux-arm64-2") is not None
    status = status_of(emu)
    assert (status["phase"], status["reason"]) == ("Building", "Retrying")
    assert [(p["pod"], p["attempt"]) for p in status["platforms"]] == [
        (AMD64_POD, 1), ("multi-1-linux-arm64-2", 2)]
