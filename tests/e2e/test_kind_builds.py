"""Real builds on kind: one multi-stage Dockerfile, two targets, real Kaniko, a real registry.

Needs hack/kind-up.sh (a kind cluster, the operator image built from operator/Dockerfile and
installed with Helm, the published Kaniko image, and kind's local registry:
`kind-registry:5000` inside the cluster, `localhost:5001` on the host). Each test run uses a
fresh namespace and image path, so runs never see each other's cache or tags.

Build pod logs are always saved, and on any failure the namespace's ImageBuilds, pods and
events and the operator's pods and logs too, before the namespace is deleted (to
``$STAGEWRIGHT_E2E_DIAGNOSTICS``, default ``build/e2e-diagnostics/<namespace>``).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.tooling import ROOT, Kubectl

from stagewright.registry import ImageInfo, ImageReference, RegistryClient

#: The registry as build pods see it, and as this machine sees it (kind's local registry).
CLUSTER_REGISTRY = os.environ.get("STAGEWRIGHT_E2E_CLUSTER_REGISTRY", "kind-registry:5000")
HOST_REGISTRY = os.environ.get("STAGEWRIGHT_E2E_HOST_REGISTRY", "localhost:5001")
OPERATOR_NAMESPACE = os.environ.get("STAGEWRIGHT_E2E_OPERATOR_NAMESPACE", "stagewright-system")
#: hack/kind-up.sh installs the chart as release "stagewright": its Deployment's name.
OPERATOR_DEPLOYMENT = os.environ.get("STAGEWRIGHT_E2E_OPERATOR_DEPLOYMENT",
                                     "stagewright-operator")
#: The executor build pods must run: the published image the chart pins by default.
KANIKO_IMAGE = os.environ.get("STAGEWRIGHT_E2E_KANIKO_IMAGE",
                              "ghcr.io/osscontainertools/kaniko:v1.28.3")
#: A cold Kaniko build pulls busybox from Docker Hub; allow for a slow CI network.
BUILD_TIMEOUT = float(os.environ.get("STAGEWRIGHT_E2E_BUILD_TIMEOUT", "900"))
#: The label every build pod carries (resources/kaniko_pod.py).
BUILD_POD_SELECTOR = "app.kubernetes.io/name=stagewright-build"
#: Where build logs and failure diagnostics go (CI uploads it); build/ is git-ignored.
DIAGNOSTICS = Path(os.environ.get("STAGEWRIGHT_E2E_DIAGNOSTICS")
                   or ROOT / "build" / "e2e-diagnostics")

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


def _save(dest: Path, name: str, kubectl: Kubectl, *args: str) -> None:
    """Write one kubectl command's output (or its error) to ``dest/name``; never fail."""
    result = kubectl.run(*args, timeout=60)
    text = result.stdout if result.returncode == 0 else (
        f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    )
    (dest / name).write_text(text)


def save_build_logs(kubectl: Kubectl, namespace: str, dest: Path) -> None:
    """Every build pod's Kaniko log, one file per pod."""
    listed = kubectl.run("-n", namespace, "get", "pods", "-l", BUILD_POD_SELECTOR,
                         "-o", "jsonpath={.items[*].metadata.name}", timeout=60)
    for pod in listed.stdout.split():
        _save(dest, f"build-{pod}.log", kubectl, "-n", namespace, "logs", pod,
              "--all-containers", "--timestamps")


def save_diagnostics(kubectl: Kubectl, namespace: str | None, dest: Path) -> None:
    """Cluster state a person needs to see why a run failed: the test namespace (when there
    is one) and the operator's, with its logs."""
    if namespace is not None:
        _save(dest, "imagebuilds.yaml", kubectl, "-n", namespace, "get", "imagebuilds",
              "-o", "yaml")
        _save(dest, "pods.txt", kubectl, "-n", namespace, "get", "pods", "-o", "wide")
        _save(dest, "pods.yaml", kubectl, "-n", namespace, "get", "pods", "-o", "yaml")
        _save(dest, "events.txt", kubectl, "-n", namespace, "get", "events",
              "--sort-by=.lastTimestamp")
    _save(dest, "operator-pods.txt", kubectl, "-n", OPERATOR_NAMESPACE, "describe", "pods")
    _save(dest, "operator.log", kubectl, "-n", OPERATOR_NAMESPACE, "logs",
          f"deployment/{OPERATOR_DEPLOYMENT}", "--all-containers", "--timestamps",
          "--tail=2000")
    _save(dest, "operator-events.txt", kubectl, "-n", OPERATOR_NAMESPACE, "get", "events",
          "--sort-by=.lastTimestamp")


def _report(request: pytest.FixtureRequest, line: str) -> None:
    # Straight to the terminal: fixture teardown output is captured and never shown.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


@pytest.fixture(scope="module")
def operator_ready(kubectl: Kubectl, request: pytest.FixtureRequest) -> None:
    """The operator from hack/kind-up.sh is running; fail (not skip) when it is not."""
    result = kubectl.run("-n", OPERATOR_NAMESPACE, "rollout", "status",
                         f"deployment/{OPERATOR_DEPLOYMENT}", "--timeout=180s", timeout=200)
    if result.returncode != 0:
        dest = DIAGNOSTICS / "operator"
        dest.mkdir(parents=True, exist_ok=True)
        save_diagnostics(kubectl, None, dest)
        _report(request, f"e2e diagnostics saved to {dest}")
        pytest.fail(
            f"the operator is not running (deployment/{OPERATOR_DEPLOYMENT} in "
            f"{OPERATOR_NAMESPACE}; install it with `make kind-up`): {result.stderr.strip()}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def namespace(
    kubectl: Kubectl, operator_ready: None, request: pytest.FixtureRequest,
) -> Iterator[str]:
    """A fresh namespace; its build logs, and on failure its state, saved before it goes."""
    name = f"sw-e2e-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    failed_before = request.session.testsfailed
    yield name
    dest = DIAGNOSTICS / name
    dest.mkdir(parents=True, exist_ok=True)
    save_build_logs(kubectl, name, dest)
    # Setup errors count too: a build that failed in the `builds` fixture is a failure here.
    if request.session.testsfailed > failed_before:
        save_diagnostics(kubectl, name, dest)
        _report(request, f"e2e diagnostics saved to {dest}")
    # Deleting the namespace deletes the ImageBuilds, and garbage collection their pods.
    kubectl("delete", "namespace", name, "--wait=false")


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


def _wait_finished(kubectl: Kubectl, namespace: str, name: str) -> Obj:
    """Poll until the build is Succeeded; fail at once, with its reason, if it Failed."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    while True:
        build: Obj = json.loads(kubectl("-n", namespace, "get", "ib", name, "-o", "json"))
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
def builds(kubectl: Kubectl, namespace: str) -> dict[str, Obj]:
    """Both targets of the same Dockerfile, built concurrently, as finished ImageBuilds."""
    image = f"{CLUSTER_REGISTRY}/e2e/{namespace}/hello"
    objects = [
        {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "context"},
            "data": {"Dockerfile": DOCKERFILE, "greeting.txt": "hello from stagewright\n"},
        },
        *(_imagebuild(f"hello-{target}", target, image) for target in TARGETS),
    ]
    kubectl("-n", namespace, "apply", "-f", "-",
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
    kubectl: Kubectl, namespace: str, builds: dict[str, Obj], target: str,
) -> None:
    """What GitOps tools wait on: Ready=True for the current generation."""
    kubectl("-n", namespace, "wait", "--for=condition=Ready", f"ib/hello-{target}",
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


def test_build_pods_ran_the_published_kaniko_image(
    kubectl: Kubectl, namespace: str, builds: dict[str, Obj],
) -> None:
    """The executor is the pinned published image, not something a cluster happened to have."""
    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", BUILD_POD_SELECTOR,
                              "-o", "json"))["items"]
    assert len(pods) >= len(builds)
    images = {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert images == {KANIKO_IMAGE}
