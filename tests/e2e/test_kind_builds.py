"""Real builds on kind: one multi-stage Dockerfile, two targets, real Kaniko, a real registry.

Needs hack/kind-up.sh (a kind cluster, the operator installed with Helm, and kind's local
registry: `kind-registry:5000` inside the cluster, `localhost:5001` on the host). Each test
run uses a fresh namespace and image path, so runs never see each other's cache or tags.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stagewright.registry import ImageInfo, ImageReference, RegistryClient

#: The registry as build pods see it, and as this machine sees it (kind's local registry).
CLUSTER_REGISTRY = os.environ.get("STAGEWRIGHT_E2E_CLUSTER_REGISTRY", "kind-registry:5000")
HOST_REGISTRY = os.environ.get("STAGEWRIGHT_E2E_HOST_REGISTRY", "localhost:5001")
OPERATOR_NAMESPACE = os.environ.get("STAGEWRIGHT_E2E_OPERATOR_NAMESPACE", "stagewright-system")
#: A cold Kaniko build pulls busybox from Docker Hub; allow for a slow CI network.
BUILD_TIMEOUT = float(os.environ.get("STAGEWRIGHT_E2E_BUILD_TIMEOUT", "900"))

DOCKERFILE = """\
FROM busybox:1.37 AS build
COPY greeting.txt /src/greeting.txt
RUN mkdir -p /out/bin && cp /bin/busybox /out/bin/busybox \\
    && tr 'a-z' 'A-Z' < /src/greeting.txt > /out/greeting.txt

FROM scratch AS runtime
COPY --from=build /out/ /
ENTRYPOINT ["/bin/busybox", "cat", "/greeting.txt"]
"""
TARGETS = ("build", "runtime")

Obj = dict[str, Any]


def _kubectl(kubectl: Path, *args: str, stdin: str | None = None,
             timeout: float = 120) -> str:
    result = subprocess.run(
        [str(kubectl), *args], input=stdin, capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}",
                    pytrace=False)
    return result.stdout


@pytest.fixture(scope="module")
def operator_ready(kubectl: Path) -> None:
    """The operator from hack/kind-up.sh is running; fail (not skip) when it is not."""
    _kubectl(kubectl, "-n", OPERATOR_NAMESPACE, "rollout", "status", "deployment",
             "--timeout=180s", timeout=200)


@pytest.fixture(scope="module")
def namespace(kubectl: Path, operator_ready: None) -> Iterator[str]:
    name = f"sw-e2e-{secrets.token_hex(3)}"
    _kubectl(kubectl, "create", "namespace", name)
    yield name
    # Deleting the namespace deletes the ImageBuilds, and garbage collection their pods.
    _kubectl(kubectl, "delete", "namespace", name, "--wait=false")


def _imagebuild(name: str, target: str, image: str) -> Obj:
    return {
        "apiVersion": "stagewright.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name},
        "spec": {
            "source": {"configMap": {"name": "context"}},
            "target": target,
            "output": {"image": image, "tags": [target], "insecure": True},
            "timeout": "15m",
        },
    }


def _wait_finished(kubectl: Path, namespace: str, name: str) -> Obj:
    """Poll until the build is Succeeded; fail at once, with its reason, if it Failed."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    while True:
        build: Obj = json.loads(_kubectl(kubectl, "-n", namespace, "get", "ib", name, "-o", "json"))
        status = build.get("status") or {}
        if status.get("phase") == "Succeeded":
            return build
        if status.get("phase") == "Failed":
            pytest.fail(f"ImageBuild {name} failed: {status.get('reason')}: "
                        f"{status.get('message')}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"ImageBuild {name} not finished after {BUILD_TIMEOUT:.0f}s: {status}",
                        pytrace=False)
        time.sleep(3)


async def _resolve(reference: str) -> ImageInfo:
    async with RegistryClient(timeout=10) as client:
        return await client.resolve(ImageReference.parse(reference), insecure=True)


@pytest.fixture(scope="module")
def builds(kubectl: Path, namespace: str) -> dict[str, Obj]:
    """Both targets of the same Dockerfile, built concurrently, as finished ImageBuilds."""
    image = f"{CLUSTER_REGISTRY}/e2e/{namespace}/hello"
    objects = [
        {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"},
            "data": {"Dockerfile": DOCKERFILE, "greeting.txt": "hello from stagewright\n"},
        },
        *(_imagebuild(f"hello-{target}", target, image) for target in TARGETS),
    ]
    _kubectl(kubectl, "-n", namespace, "apply", "-f", "-",
             stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    return {target: _wait_finished(kubectl, namespace, f"hello-{target}") for target in TARGETS}


@pytest.mark.parametrize("target", TARGETS)
async def test_status_matches_the_registry(builds: dict[str, Obj], target: str) -> None:
    build = builds[target]
    status = build["status"]
    image = build["spec"]["output"]["image"]
    host_image = HOST_REGISTRY + image.removeprefix(CLUSTER_REGISTRY)

    info = await _resolve(f"{host_image}:{target}")

    assert status["digest"] == info.digest
    assert status["image"] == f"{image}@{info.digest}"
    assert status["size"] == info.size > 0
    assert status["layers"] == info.layers > 0
    assert status["observedGeneration"] == build["metadata"]["generation"]


@pytest.mark.parametrize("target", TARGETS)
def test_ready_condition_is_kstatus_compatible(
    kubectl: Path, namespace: str, builds: dict[str, Obj], target: str,
) -> None:
    """What GitOps tools wait on: Ready=True for the current generation."""
    _kubectl(kubectl, "-n", namespace, "wait", "--for=condition=Ready", f"ib/hello-{target}",
             "--timeout=60s")
    build = builds[target]
    ready = {c["type"]: c for c in build["status"]["conditions"]}["Ready"]
    assert ready["status"] == "True"
    assert ready["observedGeneration"] == build["metadata"]["generation"]


def test_targets_are_different_images_and_the_runtime_stage_is_smaller(
    builds: dict[str, Obj],
) -> None:
    build, runtime = builds["build"]["status"], builds["runtime"]["status"]
    assert build["digest"] != runtime["digest"]
    # The runtime stage starts FROM scratch and copies only /out: the point of multi-stage.
    assert runtime["size"] < build["size"]
