"""Multi-platform builds on the sandbox's real node (amd64, no emulation) with real Kaniko.

The base image is made for both platforms (busybox-static of this machine, and Debian's arm64
busybox-static) and pushed as an OCI image index (``sandbox.images.build_platform_base``).
Cross builds run every platform's pod on the amd64 node: their target-platform stages only
COPY, and their build stage (``FROM --platform=$BUILDPLATFORM``) runs natively because the
operator pins it to the base's amd64 image. Native builds select nodes of each platform; this
cluster has none for arm64.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from typing import Any

import httpx
import pytest
from tests.cluster.builds import context, imagebuild, pods, wait_phase

from sandbox.gitserver import GitServer
from sandbox.images import PlatformBase
from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join([OCI_INDEX, "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
PLATFORMS = ["linux/amd64", "linux/arm64"]
#: A cross-compile Dockerfile: the build stage runs on the build platform (buildx style) and
#: writes what Kaniko told it; the runtime stage, built for each target, only COPYs.
CROSS_DOCKERFILE = """\
ARG BASE
FROM --platform=$BUILDPLATFORM ${BASE} AS build
ARG TARGETPLATFORM
ARG BUILDPLATFORM
ARG FAIL_ON=none
ARG TARGETARCH
RUN test "$TARGETARCH" != "$FAIL_ON" && mkdir -p /out \\
    && echo "$TARGETPLATFORM on $BUILDPLATFORM" > /out/built-for
FROM ${BASE} AS runtime
COPY --from=build /out/built-for /etc/built-for
"""
#: e_machine of an AArch64 ELF (bytes 18-19, little-endian).
EM_AARCH64 = 183


def cross_build(sandbox: Sandbox, namespace: str, name: str, base: str,
                **spec: Any) -> dict[str, Any]:
    build = imagebuild(sandbox, namespace, name, platforms=PLATFORMS, platformMode="cross",
                       **spec)
    build["spec"]["buildArgs"] = {"BASE": base, **spec.get("buildArgs", {})}
    return build


def registry_get(sandbox: Sandbox, path: str, accept: str = ACCEPT) -> httpx.Response:
    return httpx.get(f"{sandbox.registry.url}/v2/{path}", headers={"Accept": accept},
                     timeout=10)


def index_of(sandbox: Sandbox, repository: str, reference: str) -> tuple[str, dict[str, Any]]:
    response = registry_get(sandbox, f"{repository}/manifests/{reference}")
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"], response.json()


def blob(sandbox: Sandbox, repository: str, digest: str) -> bytes:
    response = registry_get(sandbox, f"{repository}/blobs/{digest}", accept="*/*")
    response.raise_for_status()
    return response.content


def layer_file(sandbox: Sandbox, repository: str, layer: str, path: str) -> bytes | None:
    """A file's bytes from a (gzipped tar) layer blob, or None when the layer lacks it."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(sandbox, repository, layer)))) \
            as archive:
        for member in archive.getmembers():
            if member.name.lstrip("./") == path and member.isfile():
                extracted = archive.extractfile(member)
                return extracted.read() if extracted else None
    return None


def image_file(sandbox: Sandbox, repository: str, manifest: dict[str, Any],
               path: str) -> bytes | None:
    """A file as the image has it: the last layer that holds it."""
    for layer in reversed(manifest["layers"]):
        found = layer_file(sandbox, repository, layer["digest"], path)
        if found is not None:
            return found
    return None


def test_a_cross_build_pushes_one_index_of_both_platforms(
        sandbox: Sandbox, namespace: str, platform_base: PlatformBase) -> None:
    """COPY-only target for linux/amd64 and linux/arm64 on the amd64 node: one index under
    the tag, each child's config says its architecture, arm64's busybox is an aarch64 ELF;
    Kaniko set TARGETPLATFORM and BUILDPLATFORM itself; the status is the index's."""
    sandbox.admin.apply([context(namespace, CROSS_DOCKERFILE),
                         cross_build(sandbox, namespace, "app", platform_base.index,
                                     target="runtime")])
    status = sandbox.wait_settled("app", namespace, timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    repository = f"{namespace}/app"
    digest, index = index_of(sandbox, repository, "latest")
    assert index["mediaType"] == OCI_INDEX
    assert status["digest"] == digest
    assert status["image"] == f"{sandbox.registry.host}/{repository}@{digest}"
    children = {f"{m['platform']['os']}/{m['platform']['architecture']}": m
                for m in index["manifests"]}
    assert sorted(children) == PLATFORMS
    entries = {entry["platform"]: entry for entry in status["platforms"]}
    sizes = 0
    for platform, child in children.items():
        _, manifest = index_of(sandbox, repository, child["digest"])
        config = json.loads(blob(sandbox, repository, manifest["config"]["digest"]))
        assert f"{config['os']}/{config['architecture']}" == platform
        assert entries[platform]["phase"] == "Succeeded"
        assert entries[platform]["digest"] == child["digest"]
        size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
        assert entries[platform]["size"] == size
        sizes += size
        built_for = image_file(sandbox, repository, manifest, "etc/built-for")
        assert built_for == f"{platform} on linux/amd64\n".encode()
        busybox = image_file(sandbox, repository, manifest, "bin/busybox")
        assert busybox is not None
        assert busybox[:4] == b"\x7fELF"
        machine = int.from_bytes(busybox[18:20], "little")
        assert (machine == EM_AARCH64) == (platform == "linux/arm64"), (platform, machine)
    # The size is each platform's pull summed, as `stagewright inspect` sums an index.
    assert status["size"] == sizes
    assert status["platformSummary"] == "2/2"
    assert {layer.get("platform") for layer in status["largestLayers"]} == set(PLATFORMS)
    # Each platform's pod ran on the build platform's node, for its own platform, with its
    # own cache repository and staging tag; the arm64 one built the pinned Dockerfile.
    built = {pod["metadata"]["annotations"]["stagewright.dev/platform"]: pod
             for pod in pods(sandbox, namespace, "app")}
    assert sorted(built) == PLATFORMS
    for platform, pod in built.items():
        assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux",
                                               "kubernetes.io/arch": "amd64"}
        args = pod["spec"]["containers"][0]["args"]
        slug = platform.replace("/", "-")
        assert f"--custom-platform={platform}" in args
        assert f"--cache-repo={sandbox.registry.host}/{repository}/cache/{slug}" in args
        assert f"--destination={sandbox.registry.host}/{repository}:stagewright-staging-app-" \
               f"{slug}" in args
        assert not any(arg.startswith("--build-arg=TARGET") for arg in args)
    pinned = built["linux/arm64"]["metadata"]["annotations"]["stagewright.dev/dockerfile"]
    amd64_child = next(m["digest"] for m in index_of(
        sandbox, "stagewright-sandbox/busybox-platforms", "multi")[1]["manifests"]
        if m["platform"]["architecture"] == "amd64")
    assert f"FROM {platform_base.index.rsplit(':', 1)[0]}@{amd64_child} AS build" in pinned
    assert "stagewright.dev/dockerfile" not in built["linux/amd64"]["metadata"]["annotations"]


def test_a_warm_rebuild_hits_each_platforms_own_cache_only(
        sandbox: Sandbox, namespace: str, platform_base: PlatformBase) -> None:
    sandbox.admin.apply([context(namespace, CROSS_DOCKERFILE),
                         cross_build(sandbox, namespace, "warm", platform_base.index,
                                     target="runtime")])
    first = sandbox.wait_settled("warm", namespace, timeout=240)["status"]
    assert first["phase"] == "Succeeded", first.get("message")
    assert first["cache"]["hits"] == 0
    again = sandbox.rebuild("warm", namespace, request="warm-cache", timeout=240)["status"]
    assert again["phase"] == "Succeeded", again.get("message")
    cache_root = f"{sandbox.registry.host}/{namespace}/warm/cache"
    for entry in again["platforms"]:
        slug = entry["platform"].replace("/", "-")
        log = sandbox.pod_log(entry["pod"], namespace)
        assert "Using caching version of cmd: RUN" in log, log[-2000:]
        # "Checking for cached layer <repository>:<key>...": only this platform's repository.
        repositories = {line.split("Checking for cached layer ", 1)[1].rsplit(":", 1)[0]
                        for line in log.splitlines() if "Checking for cached layer" in line}
        assert repositories == {f"{cache_root}/{slug}"}, repositories
        assert entry["cache"]["hits"] >= 1
    assert again["cache"]["hits"] == sum(e["cache"]["hits"] for e in again["platforms"])


def test_a_run_in_the_arm64_stage_is_refused_before_any_pod_starts(
        sandbox: Sandbox, namespace: str, platform_base: PlatformBase) -> None:
    """A RUN in a stage built for arm64 cannot run on the amd64 node: InvalidSpec naming the
    stage and line, and no pod. A RUN on a single-platform amd64 base runs as it is (Kaniko
    uses such a manifest whatever platform it builds): that build is not refused."""
    refused = "ARG BASE\nFROM ${BASE}\nRUN echo hello > /hello\n"
    single = ("ARG AMD64\nARG BASE\nFROM ${AMD64} AS build\nRUN echo built > /built\n"
              "FROM ${BASE}\nCOPY --from=build /built /built\n")
    sandbox.admin.apply([
        context(namespace, refused),
        context(namespace, single, name="single"),
        cross_build(sandbox, namespace, "refused", platform_base.index),
    ])
    single_build = cross_build(sandbox, namespace, "single", platform_base.index,
                               buildArgs={"AMD64": platform_base.amd64})
    single_build["spec"]["source"] = {"configMap": {"name": "single"}}
    sandbox.admin.apply([single_build])
    status = wait_phase(sandbox, namespace, "refused", "Failed")["status"]
    assert status["reason"] == "InvalidSpec"
    assert "stage #0, line 3, for linux/arm64: RUN echo hello > /hello" in status["message"]
    assert "FROM --platform=$BUILDPLATFORM" in status["message"]
    assert pods(sandbox, namespace, "refused") == []
    ok = sandbox.wait_settled("single", namespace, timeout=240)["status"]
    assert ok["phase"] == "Succeeded", ok.get("message")


def test_one_platform_failing_stops_the_build_and_moves_no_tag(
        sandbox: Sandbox, namespace: str, platform_base: PlatformBase) -> None:
    sandbox.admin.apply([context(namespace, CROSS_DOCKERFILE),
                         cross_build(sandbox, namespace, "half", platform_base.index,
                                     target="runtime", cache={"enabled": False})])
    first = sandbox.wait_settled("half", namespace, timeout=240)["status"]
    assert first["phase"] == "Succeeded", first.get("message")
    before, _ = index_of(sandbox, f"{namespace}/half", "latest")
    sandbox.admin.apply([cross_build(sandbox, namespace, "half", platform_base.index,
                                     target="runtime", cache={"enabled": False},
                                     buildArgs={"FAIL_ON": "arm64"})])
    failed = sandbox.wait_settled("half", namespace, generation=2, timeout=240)["status"]
    assert failed["phase"] == "Failed", failed
    assert failed["reason"] == "BuildFailed"
    assert failed["message"].startswith("Platform linux/arm64: Kaniko exited with code 1")
    assert "No output tag was moved." in failed["message"]
    entries = {entry["platform"]: entry for entry in failed["platforms"]}
    assert entries["linux/arm64"]["phase"] == "Failed"
    assert entries["linux/arm64"]["reason"] == "BuildFailed"
    assert entries["linux/amd64"]["reason"] in ("Succeeded", "Cancelled")
    after, _ = index_of(sandbox, f"{namespace}/half", "latest")
    assert after == before
    # No pod of the failed build runs on.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
            p["status"].get("phase") in ("Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")
            for p in pods(sandbox, namespace, "half")):
        time.sleep(0.5)
    assert not any(p["status"].get("phase") in ("Pending", "Running")
                   and not p["metadata"].get("deletionTimestamp")
                   for p in pods(sandbox, namespace, "half"))


def test_exec_format_error_is_explained_when_the_dockerfile_is_not_readable_in_advance(
        sandbox: Sandbox, namespace: str, platform_base: PlatformBase, git: GitServer) -> None:
    """A git context cannot be checked before the build: the arm64 pod's RUN fails with the
    kernel's exec format error, and the status says why."""
    git.create_repository("app", {"Dockerfile": "ARG BASE\nFROM ${BASE}\nRUN echo hi > /hi\n"})
    build = cross_build(sandbox, namespace, "fromgit", platform_base.index,
                        cache={"enabled": False})
    build["spec"]["source"] = {"git": {"url": f"{git.url}/app.git", "revision": "main",
                                       "secretRef": {"name": "git-creds"}}}
    sandbox.admin.apply([build])
    status = sandbox.wait_settled("fromgit", namespace, timeout=240)["status"]
    assert status["phase"] == "Failed", status
    assert status["message"].startswith(
        "Platform linux/arm64: A RUN step ran in a stage built for linux/arm64 on a "
        "linux/amd64 node (exec format error)"), status["message"][:400]


def test_a_native_arm64_pod_waits_unschedulable_then_times_out_cleanly(
        sandbox: Sandbox, namespace: str, platform_base: PlatformBase) -> None:
    """No arm64 node: the arm64 pod stays Pending/Unschedulable with the scheduler's words;
    at the deadline the operator stops it and fails the build with Timeout; no tag."""
    dockerfile = "ARG BASE\nFROM ${BASE}\nCOPY hello.txt /hello.txt\n"
    build = imagebuild(sandbox, namespace, "native", platforms=PLATFORMS, timeout="25s",
                       cache={"enabled": False})
    build["spec"]["buildArgs"] = {"BASE": platform_base.index}
    sandbox.admin.apply([context(namespace, dockerfile, files={"hello.txt": "hello\n"}), build])
    waiting = wait_phase(sandbox, namespace, "native", "Pending", reason="Unschedulable",
                         timeout=60)["status"]
    assert waiting["message"].startswith("Platform linux/arm64: The scheduler cannot place")
    assert "node selector" in waiting["message"] or "node affinity" in waiting["message"]
    arm64 = next(p for p in pods(sandbox, namespace, "native")
                 if p["metadata"]["labels"]["stagewright.dev/platform"] == "linux-arm64")
    assert arm64["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux",
                                             "kubernetes.io/arch": "arm64"}
    assert not arm64["spec"].get("nodeName")
    done = sandbox.wait_settled("native", namespace, timeout=150)["status"]
    assert done["phase"] == "Failed", done
    assert done["reason"] == "Timeout"
    assert done["message"].startswith("Platform linux/arm64: The build did not finish within")
    entries = {entry["platform"]: entry for entry in done["platforms"]}
    assert entries["linux/amd64"]["phase"] == "Succeeded"
    assert entries["linux/arm64"]["reason"] == "Timeout"
    assert registry_get(sandbox, f"{namespace}/native/manifests/latest").status_code == 404
    # Stopped: a pod no kubelet took is gone at once.
    left = sandbox.admin.get("v1", "Pod", arm64["metadata"]["name"], namespace)
    assert left is None or left["metadata"].get("deletionTimestamp"), left


def test_the_index_reads_in_stagewright_inspect_as_in_status(
        sandbox: Sandbox, namespace: str, platform_base: PlatformBase) -> None:
    """The registry client reads the index the operator wrote: the same digest and size."""
    import asyncio  # noqa: PLC0415

    from stagewright.registry import ImageReference, RegistryClient  # noqa: PLC0415

    sandbox.admin.apply([context(namespace, CROSS_DOCKERFILE),
                         cross_build(sandbox, namespace, "seen", platform_base.index,
                                     target="runtime", output={"tags": ["v1", "latest"]})])
    status = sandbox.wait_settled("seen", namespace, timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")

    async def resolve(tag: str) -> Any:
        async with RegistryClient(timeout=10) as client:
            return await client.resolve(ImageReference.parse(
                f"{sandbox.registry.host}/{namespace}/seen:{tag}"), insecure=True)

    for tag in ("v1", "latest"):
        info = asyncio.run(resolve(tag))
        assert info.digest == status["digest"]
        assert info.size == status["size"]
        assert sorted(p.platform for p in info.platforms) == PLATFORMS
    got = sandbox.admin.get(IMAGEBUILD_API, "ImageBuild", "seen", namespace)
    assert got is not None
    assert got["status"]["platformSummary"] == "2/2"
