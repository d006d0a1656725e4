"""Real builds through the sandbox's Kaniko stand-in: buildah, a real registry, a real cache.

The operator's cluster tests trust these builds to behave like Kaniko's: each target of a
multi-stage Dockerfile pushed with the digest the registry serves, the toolchain left out of
the runtime image, a rebuild on an empty store served from the registry cache, a failing RUN
step reported through its exit code and log. The last tests drive the sandbox kubelet through
a real kube-apiserver: pod in, pod status out, as a node would write it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
from kubernetes import client, config

from sandbox.base_image import build_base_image
from sandbox.buildah import BuildResult, run_build
from sandbox.controlplane import ControlPlane
from sandbox.kaniko_args import parse_kaniko_args
from sandbox.kubelet import DEADLINE_MESSAGE, SandboxKubelet, log_tail
from sandbox.registry import LocalRegistry

pytestmark = pytest.mark.cluster

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
APP_REPO = "sandbox-test/app"

DOCKERFILE = """\
FROM {base} AS build
# The "toolchain": a few incompressible MB that must stay out of the runtime image.
RUN mkdir -p /toolchain /out && dd if=/dev/urandom of=/toolchain/cc bs=1M count=4 2>/dev/null
COPY main.txt /src/main.txt
# buildah 1.28 misses its registry cache at ARG steps (containers/buildah#4315): ARG comes late.
ARG VERSION=0
ENV APP_VERSION=$VERSION
LABEL app.version=$VERSION
RUN sed "s/VERSION/$VERSION/" /src/main.txt > /out/app

FROM {base} AS runtime
COPY --from=build /out/app /app
CMD ["cat", "/app"]
"""


# -- registry helpers ---------------------------------------------------------------------


def get_manifest(registry: LocalRegistry, repo: str, ref: str) -> tuple[dict[str, Any], str]:
    """The Docker v2 manifest and the registry's Docker-Content-Digest for it."""
    response = httpx.get(f"{registry.url}/v2/{repo}/manifests/{ref}",
                         headers={"Accept": DOCKER_V2}, trust_env=False)
    response.raise_for_status()
    manifest: dict[str, Any] = response.json()
    return manifest, response.headers["Docker-Content-Digest"]


def get_blob(registry: LocalRegistry, repo: str, digest: str) -> bytes:
    response = httpx.get(f"{registry.url}/v2/{repo}/blobs/{digest}", trust_env=False,
                         follow_redirects=True)
    response.raise_for_status()
    return response.content


def image_size(manifest: dict[str, Any]) -> int:
    """Compressed size as the registry serves it: config plus layers."""
    return int(manifest["config"]["size"]) + sum(int(layer["size"])
                                                  for layer in manifest["layers"])


def image_config(registry: LocalRegistry, repo: str, ref: str) -> dict[str, Any]:
    manifest, _ = get_manifest(registry, repo, ref)
    blob: dict[str, Any] = json.loads(get_blob(registry, repo, manifest["config"]["digest"]))
    return blob


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. a build's work dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


# -- builds through buildah.py ------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    with LocalRegistry() as started:
        yield started


@pytest.fixture(scope="module")
def base_image(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_base_image(registry.host, work_dir=tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("builds")


def write_context(directory: Path, dockerfile: str, **files: str) -> Path:
    """A build context laid out as the kubelet lays out a ConfigMap volume: one file per key."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def kaniko_args(registry: LocalRegistry, *extra: str, tag: str, target: str | None = None,
                repo: str = APP_REPO, cache: bool = True) -> list[str]:
    """Arguments as the operator writes them for a ConfigMap context."""
    args = ["--context=dir:///workspace", "--dockerfile=Dockerfile",
            f"--destination={registry.host}/{repo}:{tag}",
            "--skip-unused-stages", "--digest-file=/dev/termination-log",
            f"--insecure-registry={registry.host}", "--verbosity=info", *extra]
    if target:
        args.append(f"--target={target}")
    if cache:
        args += ["--cache=true", f"--cache-repo={registry.host}/{repo}/cache", "--cache-ttl=336h"]
    return args


@dataclass(frozen=True)
class Builds:
    """The same context built three times, each on an empty store, sharing one cache repo."""

    build_stage: BuildResult
    runtime: BuildResult
    runtime_again: BuildResult


@pytest.fixture(scope="module")
def builds(registry: LocalRegistry, base_image: str, work_dir: Path) -> Builds:
    context = write_context(work_dir / "context", DOCKERFILE.format(base=base_image),
                            **{"main.txt": "hello VERSION\n"})
    labels = ("--label=org.opencontainers.image.source=https://example.com/app",
              "--build-arg=VERSION=7")

    def build(tag: str, target: str) -> BuildResult:
        parsed = parse_kaniko_args(kaniko_args(registry, *labels, tag=tag, target=target))
        return run_build(parsed, context, work_dir=work_dir, log_path=work_dir / f"{tag}.log")

    results = Builds(build("build", "build"), build("runtime", "runtime"),
                     build("runtime-again", "runtime"))
    print(f"\nbuild-stage (cold) {results.build_stage.duration_seconds:.1f} s, "
          f"runtime {results.runtime.duration_seconds:.1f} s, "
          f"runtime again (warm) {results.runtime_again.duration_seconds:.1f} s")
    return results


def test_each_target_is_pushed_with_the_digest_the_registry_serves(
    builds: Builds, registry: LocalRegistry
) -> None:
    for tag, result in [("build", builds.build_stage), ("runtime", builds.runtime),
                        ("runtime-again", builds.runtime_again)]:
        assert result.exit_code == 0, result.log
        manifest, served = get_manifest(registry, APP_REPO, tag)
        assert manifest["mediaType"] == DOCKER_V2, "Kaniko pushes Docker v2s2 manifests"
        assert result.digest == served
        assert result.pushed == (f"{registry.host}/{APP_REPO}:{tag}@{served}",)


def test_runtime_image_leaves_the_toolchain_behind(
    builds: Builds, registry: LocalRegistry
) -> None:
    build_manifest, _ = get_manifest(registry, APP_REPO, "build")
    runtime_manifest, _ = get_manifest(registry, APP_REPO, "runtime")
    # 4 MiB of random bytes do not compress: the build image carries them, the runtime not.
    assert image_size(runtime_manifest) + 4_000_000 < image_size(build_manifest)
    assert len(runtime_manifest["layers"]) == 2  # the base, then COPY --from=build


def test_rebuild_on_an_empty_store_is_served_from_the_registry_cache(
    builds: Builds, registry: LocalRegistry, work_dir: Path
) -> None:
    cache_repo = f"{registry.host}/{APP_REPO}/cache"
    assert "Cache pulled from remote" not in builds.build_stage.log
    lines = builds.runtime_again.log.splitlines()
    toolchain = next(i for i, line in enumerate(lines) if "RUN mkdir -p /toolchain" in line)
    assert lines[toolchain + 1].startswith(f"--> Cache pulled from remote {cache_repo}:")
    copy_step = next(i for i, line in enumerate(lines) if "COPY --from=build" in line)
    assert lines[copy_step + 1].startswith(f"--> Cache pulled from remote {cache_repo}:")
    tags = httpx.get(f"{registry.url}/v2/{APP_REPO}/cache/tags/list", trust_env=False).json()
    assert len(tags["tags"]) >= 5
    # Every build ran on its own store, removed afterwards: the cache can only be the registry.
    assert not list(work_dir.glob("sandbox-build-*"))


def test_build_args_and_labels_reach_the_image(builds: Builds, registry: LocalRegistry) -> None:
    build_config = image_config(registry, APP_REPO, "build")["config"]
    assert "APP_VERSION=7" in build_config["Env"]
    assert build_config["Labels"]["app.version"] == "7"
    assert build_config["Labels"]["org.opencontainers.image.source"] == "https://example.com/app"
    runtime_config = image_config(registry, APP_REPO, "runtime")["config"]
    assert runtime_config["Labels"]["org.opencontainers.image.source"] == "https://example.com/app"
    assert runtime_config["Cmd"] == ["cat", "/app"]
    manifest, _ = get_manifest(registry, APP_REPO, "runtime")
    layer = get_blob(registry, APP_REPO, manifest["layers"][-1]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.lstrip("./") == "app")
        artifact = tar.extractfile(member)
        assert artifact is not None
        assert artifact.read() == b"hello 7\n"


def test_a_failing_run_step_fails_the_build_with_its_log(
    registry: LocalRegistry, base_image: str, work_dir: Path
) -> None:
    dockerfile = f"FROM {base_image}\nRUN echo compiling && ./configure --with-missing-lib\n"
    context = write_context(work_dir / "failing", dockerfile)
    build = parse_kaniko_args(kaniko_args(registry, tag="failing", repo="sandbox-test/failing"))
    result = run_build(build, context, work_dir=work_dir, log_path=work_dir / "failing.log")
    assert result.exit_code == 1  # Kaniko exits 1 whatever failed
    assert result.digest is None
    tail = log_tail(result.log)
    assert "./configure --with-missing-lib" in tail
    assert "error building image" in tail
    response = httpx.get(f"{registry.url}/v2/sandbox-test/failing/manifests/failing",
                         headers={"Accept": DOCKER_V2}, trust_env=False)
    assert response.status_code == 404


@pytest.mark.parametrize("stop", ["deadline", "cancelled"])
def test_a_stopped_build_leaves_no_process_behind(
    registry: LocalRegistry, base_image: str, work_dir: Path, stop: str
) -> None:
    context = write_context(work_dir / f"slow-{stop}",
                            f"FROM {base_image}\nRUN echo started && sleep 300\n")
    build = parse_kaniko_args(kaniko_args(registry, tag="slow", repo="sandbox-test/slow"))
    cancel = threading.Event()
    deadline = time.monotonic() + 3 if stop == "deadline" else None
    if stop == "cancelled":
        threading.Timer(3, cancel.set).start()
    result = run_build(build, context, work_dir=work_dir, log_path=work_dir / f"{stop}.log",
                       deadline=deadline, cancel=cancel)
    assert result.exit_code == 137
    assert (result.timed_out, result.cancelled) == (stop == "deadline", stop == "cancelled")
    assert "started" in result.log
    assert result.duration_seconds < 30
    wait_until(lambda: not processes_mentioning(str(work_dir)), 10, "build processes to end")
    assert not list(work_dir.glob("sandbox-build-*"))


def test_pushes_use_the_pods_registry_credentials(
    registry: LocalRegistry, base_image: str, work_dir: Path
) -> None:
    context = write_context(work_dir / "auth", f"FROM {base_image}\nRUN echo hi > /hi\n")
    with LocalRegistry(htpasswd=("builder", "s3cret")) as private:
        authfile = work_dir / "config.json"
        token = base64.b64encode(b"builder:s3cret").decode()
        authfile.write_text(json.dumps({"auths": {private.host: {"auth": token}}}))
        args = [f"--insecure-registry={registry.host}", f"--insecure-registry={private.host}",
                "--context=dir:///workspace", f"--destination={private.host}/team/app:1"]
        build = parse_kaniko_args(args)
        denied = run_build(build, context, work_dir=work_dir, log_path=work_dir / "denied.log")
        assert denied.exit_code == 1
        assert f"error pushing image: failed to push to destination {private.host}/team/app:1" \
            in denied.log
        allowed = run_build(build, context, work_dir=work_dir, log_path=work_dir / "auth.log",
                            authfile=authfile)
        assert allowed.exit_code == 0, allowed.log
        assert allowed.digest is not None


# -- the kubelet through a real kube-apiserver ----------------------------------------------

NAMESPACE = "default"
#: Only this module's pods: another kubelet in the same test run would fight over others.
SELECTOR = "app.kubernetes.io/managed-by=stagewright,sandbox-test=kubelet"


@dataclass(frozen=True)
class Node:
    #: Typed Any: these tests send plain dicts, which the API takes but the client's
    #: annotations (model classes only) do not admit.
    core: Any
    kubelet: SandboxKubelet
    control_plane: ControlPlane
    registry: LocalRegistry
    base_image: str


@pytest.fixture(scope="module")
def node(
    registry: LocalRegistry, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    work = tmp_path_factory.mktemp("node")
    with ControlPlane(work / "control-plane") as control_plane:
        admin = config.new_client_from_config(
            config_file=str(control_plane.admin.kubeconfig))
        as_kubelet = config.new_client_from_config(
            config_file=str(control_plane.kubelet.kubeconfig))
        with SandboxKubelet(as_kubelet, work / "kubelet", label_selector=SELECTOR) as kubelet:
            yield Node(client.CoreV1Api(admin), kubelet, control_plane, registry, base_image)


def build_pod(name: str, args: list[str], *, context: str = "context",
              secret: str | None = None, deadline: int = 300,
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A build pod as the operator's pod builder creates it (DESIGN.md, "The Kaniko pod")."""
    mounts = [{"name": "context", "mountPath": "/workspace"}]
    volumes: list[dict[str, Any]] = [{"name": "context", "configMap": {"name": context}}]
    if secret is not None:
        mounts.append({"name": "docker-config", "mountPath": "/kaniko/.docker"})
        volumes.append({"name": "docker-config", "secret": {
            "secretName": secret, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {
            "app.kubernetes.io/managed-by": "stagewright", "stagewright.dev/imagebuild": name,
            "sandbox-test": "kubelet"}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "activeDeadlineSeconds": deadline,
            "containers": [{
                "name": "kaniko", "image": "ghcr.io/osscontainertools/kaniko:v1.28.3",
                "args": args, "volumeMounts": mounts,
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }],
            "volumes": volumes,
        },
    }


def read_pod(core: Any, name: str) -> dict[str, Any]:
    response: Any = core.read_namespaced_pod(name, NAMESPACE, _preload_content=False)
    pod: dict[str, Any] = json.loads(response.data)
    return pod


def wait_for_phase(core: Any, name: str, phases: set[str],
                   timeout: float = 120) -> dict[str, Any]:
    wait_until(lambda: read_pod(core, name).get("status", {}).get("phase") in phases, timeout,
               f"pod {name} to reach {phases}")
    return read_pod(core, name)


def configmap(core: Any, name: str, dockerfile: str, **files: str) -> None:
    """A ConfigMap context: each key a file at the context root."""
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": name},
                                                  "data": {"Dockerfile": dockerfile, **files}})


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = pod["status"]["containerStatuses"][0]["state"]
    return state


def test_kubelet_runs_a_build_pod_with_its_secret(node: Node) -> None:
    with LocalRegistry(htpasswd=("builder", "s3cret")) as private:
        token = base64.b64encode(b"builder:s3cret").decode()
        docker_config = json.dumps({"auths": {private.host: {"auth": token}}})
        node.core.create_namespaced_secret(NAMESPACE, {
            "metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(docker_config.encode()).decode()}})
        configmap(node.core, "ok-context", DOCKERFILE.format(base=node.base_image),
                  **{"main.txt": "hello VERSION\n"})
        args = ["--context=dir:///workspace", "--dockerfile=Dockerfile", "--target=runtime",
                f"--destination={private.host}/team/app:v1", "--cache=true",
                f"--cache-repo={private.host}/team/app/cache", "--skip-unused-stages",
                "--digest-file=/dev/termination-log", f"--insecure-registry={node.registry.host}",
                f"--insecure-registry={private.host}"]
        node.core.create_namespaced_pod(
            NAMESPACE, build_pod("ok", args, context="ok-context", secret="regcred"))
        pod = wait_for_phase(node.core, "ok", {"Succeeded", "Failed"})
        terminated = container_state(pod)["terminated"]
        assert pod["status"]["phase"] == "Succeeded", node.kubelet.build_log(NAMESPACE, "ok")
        assert terminated["exitCode"] == 0
        served = httpx.get(f"{private.url}/v2/team/app/manifests/v1", trust_env=False,
                           headers={"Accept": DOCKER_V2}, auth=("builder", "s3cret"))
        assert terminated["message"] == served.headers["Docker-Content-Digest"]
    kubernetes_validate.validate(pod, "1.33.0", strict=True)
    assert "Pushed" in node.kubelet.build_log(NAMESPACE, "ok")


def test_kubelet_fails_a_pod_it_cannot_build(node: Node) -> None:
    context = "git://github.com/acme/web.git#refs/heads/main"
    configmap(node.core, "context", "FROM scratch\n")
    node.core.create_namespaced_pod(NAMESPACE, build_pod("git", [
        f"--context={context}", f"--destination={node.registry.host}/team/app:1"]))
    pod = wait_for_phase(node.core, "git", {"Succeeded", "Failed"})
    terminated = container_state(pod)["terminated"]
    assert pod["status"]["phase"] == "Failed"
    assert (terminated["exitCode"], terminated["reason"]) == (1, "Error")
    assert terminated["message"] == (
        f"sandbox kubelet: only ConfigMap contexts can be built here (got {context})\n"
    )


def test_kubelet_enforces_active_deadline_seconds(node: Node) -> None:
    configmap(node.core, "slow-context", f"FROM {node.base_image}\nRUN sleep 300\n")
    args = kaniko_args(node.registry, tag="slow", repo="sandbox-test/slow", cache=False)
    node.core.create_namespaced_pod(
        NAMESPACE, build_pod("deadline", args, context="slow-context", deadline=4))
    pod = wait_for_phase(node.core, "deadline", {"Succeeded", "Failed"}, timeout=60)
    status = pod["status"]
    assert (status["phase"], status["reason"], status["message"]) == (
        "Failed", "DeadlineExceeded", DEADLINE_MESSAGE)
    assert container_state(pod)["terminated"]["exitCode"] == 137
    assert "RUN sleep 300" in container_state(pod)["terminated"]["message"]


def test_kubelet_kills_the_build_of_a_deleted_pod(node: Node) -> None:
    configmap(node.core, "doomed-context", f"FROM {node.base_image}\nRUN sleep 300\n")
    args = kaniko_args(node.registry, tag="doomed", repo="sandbox-test/doomed", cache=False)
    node.core.create_namespaced_pod(
        NAMESPACE, build_pod("doomed", args, context="doomed-context"))
    wait_for_phase(node.core, "doomed", {"Running"})
    wait_until(lambda: "RUN sleep 300" in node.kubelet.build_log(NAMESPACE, "doomed"), 60,
               "the build to reach its RUN step")
    node.core.delete_namespaced_pod("doomed", NAMESPACE)
    wait_until(lambda: node.kubelet.result(NAMESPACE, "doomed") is not None, 30,
               "the build to be killed")
    result = node.kubelet.result(NAMESPACE, "doomed")
    assert result is not None
    assert result.cancelled
    wait_until(lambda: not processes_mentioning("sandbox-test/doomed"), 10,
               "build processes to end")


def test_kubelet_waits_for_a_missing_secret(node: Node) -> None:
    configmap(node.core, "waiting-context", f"FROM {node.base_image}\nRUN true\n")
    args = kaniko_args(node.registry, tag="waiting", repo="sandbox-test/waiting", cache=False)
    node.core.create_namespaced_pod(
        NAMESPACE, build_pod("waiting", args, context="waiting-context", secret="later"))
    wait_until(lambda: "containerStatuses" in read_pod(node.core, "waiting").get("status", {}),
               30, "the kubelet to admit the pod")
    pod = read_pod(node.core, "waiting")
    assert pod["status"]["phase"] == "Pending"
    assert container_state(pod) == {"waiting": {"reason": "ContainerCreating"}}
    node.core.create_namespaced_secret(NAMESPACE, {
        "metadata": {"name": "later"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(b'{"auths": {}}').decode()}})
    pod = wait_for_phase(node.core, "waiting", {"Succeeded", "Failed"})
    assert pod["status"]["phase"] == "Succeeded", node.kubelet.build_log(NAMESPACE, "waiting")


def test_a_new_kubelet_fails_pods_left_running(node: Node, tmp_path: Path) -> None:
    labels = {"app.kubernetes.io/managed-by": "stagewright", "sandbox-test": "orphan"}
    node.core.create_namespaced_pod(NAMESPACE, build_pod("orphan", ["--bogus"], labels=labels))
    left_running = {"status": {
        "phase": "Running", "startTime": "2026-01-01T00:00:00Z",
        "containerStatuses": [{
            "name": "kaniko", "image": "kaniko", "imageID": "", "ready": True, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        }],
    }}
    node.core.patch_namespaced_pod_status(
        "orphan", NAMESPACE, left_running, _content_type="application/strategic-merge-patch+json")
    api = config.new_client_from_config(
        config_file=str(node.control_plane.kubelet.kubeconfig))
    selector = "app.kubernetes.io/managed-by=stagewright,sandbox-test=orphan"
    with SandboxKubelet(api, tmp_path, label_selector=selector):
        pod = wait_for_phase(node.core, "orphan", {"Failed"}, timeout=30)
    terminated = container_state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "ContainerStatusUnknown")
    assert "restarted" in pod["status"]["message"]
