"""The operator's informer against a real kube-apiserver (no node needed, so no host lock).

List (streamed from the watch cache) then watch, events in order, the resource not served
until its CRD is installed, a resourceVersion too old (410 Gone) relisting, and label
selection done by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from sandbox.cluster import Cluster, install_crd
from sandbox.controlplane import ControlPlane
from stagewright.handlers.informer import Informer
from stagewright.handlers.kube_api import KubeApi

pytestmark = pytest.mark.cluster

PATH = "/apis/stagewright.dev/v1alpha1/namespaces/default/imagebuilds"


def imagebuild(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"source": {"configMap": {"name": "ctx"}},
                     "output": {"image": "registry.example.com/acme/web"}}}


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    work = Path(tmp_path_factory.mktemp("informer"))
    with ControlPlane(work) as running:
        yield running


@pytest.fixture
async def api(control_plane: ControlPlane) -> AsyncIterator[KubeApi]:
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(control_plane.admin.kubeconfig),
                                client_configuration=configuration)
    async with KubeApi(configuration) as client:
        yield client


class Seen:
    """What an informer handed on: events (type, name) and the keys of each relist."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.relists: list[set[tuple[str, str]]] = []

    def event(self, kind: str, obj: dict[str, Any]) -> None:
        self.events.append((kind, obj["metadata"]["name"]))

    def relist(self, keys: set[tuple[str, str]]) -> None:
        self.relists.append(keys)

    async def wait_for(self, event: tuple[str, str]) -> None:
        async with asyncio.timeout(30):
            while event not in self.events:  # noqa: ASYNC110 - polling what a task appends
                await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[None]:
    task = asyncio.create_task(informer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_waits_for_the_crd_then_lists_and_watches(control_plane: ControlPlane,
                                                        api: KubeApi) -> None:
    admin = Cluster(control_plane.admin.kubeconfig)
    seen = Seen()
    informer = Informer(api, PATH, seen.event, on_relist=seen.relist, kind="ImageBuild")
    informer.min_delay = 0.1
    async with running(informer):
        await asyncio.sleep(1)  # not served yet: the informer waits, quietly
        assert seen.events == []
        assert not informer.synced.is_set()
        await asyncio.to_thread(install_crd, admin)
        await asyncio.to_thread(admin.apply, [imagebuild("first")])
        await seen.wait_for(("ADDED", "first"))
        await asyncio.wait_for(informer.synced.wait(), 30)
        await asyncio.to_thread(admin.apply, [imagebuild("first", changed="yes")])
        await seen.wait_for(("MODIFIED", "first"))
        await asyncio.to_thread(admin.delete, "stagewright.dev/v1alpha1", "ImageBuild",
                                "first", "default")
        await seen.wait_for(("DELETED", "first"))
    assert [e for e in seen.events if e[1] == "first"] == [
        ("ADDED", "first"), ("MODIFIED", "first"), ("DELETED", "first")]


async def test_lists_and_relists_when_its_version_expired(
        control_plane: ControlPlane, api: KubeApi) -> None:
    admin = Cluster(control_plane.admin.kubeconfig)
    await asyncio.to_thread(install_crd, admin)
    await asyncio.to_thread(admin.apply, [imagebuild(f"page-{n}") for n in range(5)])
    seen = Seen()
    informer = Informer(api, PATH, seen.event, on_relist=seen.relist, kind="ImageBuild")
    assert await informer.list()
    listed = {("default", f"page-{n}") for n in range(5)}
    assert listed <= seen.relists[-1]
    informer.resource_version = "1"  # long gone: the server answers 410, the informer relists
    async with running(informer):
        async with asyncio.timeout(30):
            while len(seen.relists) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert listed <= seen.relists[-1]
        await asyncio.to_thread(admin.apply, [imagebuild("after-relist")])
        await seen.wait_for(("ADDED", "after-relist"))


async def test_the_server_selects_by_label(control_plane: ControlPlane, api: KubeApi) -> None:
    admin = Cluster(control_plane.admin.kubeconfig)
    await asyncio.to_thread(install_crd, admin)
    seen = Seen()
    informer = Informer(api, PATH, seen.event, label_selector="team=a", kind="ImageBuild")
    async with running(informer):
        await asyncio.wait_for(informer.synced.wait(), 30)
        await asyncio.to_thread(admin.apply, [imagebuild("theirs", team="b"),
                                              imagebuild("ours", team="a")])
        await seen.wait_for(("ADDED", "ours"))
    assert all(name != "theirs" for _, name in seen.events)


async def test_the_operators_writes_carry_its_name_as_field_manager(
        control_plane: ControlPlane, api: KubeApi) -> None:
    admin = Cluster(control_plane.admin.kubeconfig)
    await asyncio.to_thread(install_crd, admin)
    await asyncio.to_thread(admin.apply, [imagebuild("managed")])
    # Not "Pending": the API server already defaults status to it, and an unchanged field
    # gets no managedFields entry.
    written = await api.patch_imagebuild_status("default", "managed", {"phase": "Building"})
    assert written is not None
    managers = {entry["manager"]: entry for entry in written["metadata"]["managedFields"]}
    assert "f:phase" in managers["stagewright"]["fieldsV1"]["f:status"]
