"""`stagewright build --follow`, `logs`, `rebuild`, `get`, `describe` as a user runs them.

Each command is a real subprocess with the sandbox's admin kubeconfig (the CLI runs as its
user, not as the operator), against the real node: the log lines come from the real Kaniko
through the kubelet (``read_namespaced_pod_log`` with ``follow=True``), and the digest in the
final table is checked against the registry itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.cluster.builds import context, imagebuild, manifest, pods

from sandbox.stack import Sandbox

pytestmark = pytest.mark.cluster

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS build
RUN echo "compiling the app" && mkdir -p /out && echo app > /out/app
COPY app.sh /src/app.sh
FROM ${BASE} AS runtime
COPY --from=build /out/app /app
"""
FAILING = """\
ARG BASE
FROM ${BASE}
RUN echo "running the tests" && echo "3 tests failed" >&2 && exit 3
"""
SLOW = "ARG BASE\nFROM ${BASE}\nRUN sleep 30\n"
ANSI = re.compile(r"\x1b\[")


def cli(sandbox: Sandbox, *args: str, kubeconfig: Path | None = None,
        timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a process of its own, stdout a pipe (not a TTY)."""
    env = {**os.environ,
           "KUBECONFIG": str(kubeconfig or sandbox.control_plane.admin.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "stagewright.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def build_file(sandbox: Sandbox, tmp_path: Path, namespace: str, name: str,
               dockerfile: str, **spec: Any) -> Path:
    """A file as a user keeps it: the ConfigMap context and the ImageBuild, no namespace."""
    objects = [context(namespace, dockerfile, files={"app.sh": "echo hi\n"}),
               imagebuild(sandbox, namespace, name, **spec)]
    for obj in objects:
        del obj["metadata"]["namespace"]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return path


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.rstrip("\n").splitlines()[-1]


def table(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The final status table's rows (label, value)."""
    rows = {}
    for line in result.stdout.splitlines():
        label, _, value = line.partition(" ")
        if label in ("Phase", "Target", "Digest", "Image", "Size", "Layers", "Message"):
            rows[label] = value.strip()
    return rows


def test_build_follow_streams_kanikos_log_and_ends_with_the_table(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    path = build_file(sandbox, tmp_path, namespace, "web", DOCKERFILE, target="runtime")
    result = cli(sandbox, "build", "-f", str(path), "--follow", "--timeout", "4m",
                 "-n", namespace)
    print(result.stdout)  # a sample of what a user sees (pytest -rP shows it)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["configmap/ctx created", "imagebuild.stagewright.dev/web created"]
    assert "==> Pod web-1-1, container kaniko" in lines
    # Kaniko's own lines, streamed from the kubelet: the build's steps and its push.
    assert any(re.match(r"INFO\[\d+\] RUN echo \"compiling the app\"", line) for line in lines)
    assert "compiling the app" in lines
    assert any(re.match(r"INFO\[\d+\] Pushed ", line) for line in lines)
    assert not ANSI.search(result.stdout)  # not a TTY: plain lines
    digest, _ = manifest(sandbox, f"{namespace}/web", "latest")
    rows = table(result)
    assert rows["Phase"] == "Succeeded"
    assert rows["Target"] == "runtime"
    assert rows["Digest"] == digest
    assert last_line(result) == (f"ImageBuild web Succeeded: "
                                 f"{sandbox.registry.host}/{namespace}/web@{digest}")


def test_a_failed_build_exits_1_with_the_reason_last(sandbox: Sandbox, namespace: str,
                                                     tmp_path: Path) -> None:
    path = build_file(sandbox, tmp_path, namespace, "broken", FAILING)
    result = cli(sandbox, "build", "-f", str(path), "--follow", "-n", namespace)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 tests failed" in result.stdout.splitlines()  # the RUN step's stderr, streamed
    assert table(result)["Phase"] == "Failed (BuildFailed)"
    # Kaniko passes the failed RUN step's exit code on as its own.
    assert last_line(result).startswith("ImageBuild broken Failed: BuildFailed: Kaniko exited "
                                        "with code 3 at step RUN echo")


def test_rebuild_builds_the_same_spec_again_with_the_cache(sandbox: Sandbox, namespace: str,
                                                           tmp_path: Path) -> None:
    path = build_file(sandbox, tmp_path, namespace, "app", DOCKERFILE)
    first = cli(sandbox, "build", "-f", str(path), "--follow", "-n", namespace)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "No cached layer found for cmd RUN echo" in first.stdout

    again = cli(sandbox, "build", "-f", str(path), "--follow", "-n", namespace)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "imagebuild.stagewright.dev/app unchanged" in again.stdout
    assert "==> ImageBuild app is unchanged: its last build follows" in again.stdout
    assert len(pods(sandbox, namespace, "app")) == 1  # no new build

    rebuilt = cli(sandbox, "build", "-f", str(path), "--rebuild", "--follow", "-n", namespace)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "imagebuild.stagewright.dev/app rebuild requested" in rebuilt.stdout
    assert "Using caching version of cmd: RUN echo" in rebuilt.stdout
    stored = sandbox.imagebuild("app", namespace)
    assert stored is not None
    assert stored["status"]["rebuild"] == stored["metadata"]["annotations"][
        "stagewright.dev/rebuild"]

    waited = cli(sandbox, "rebuild", "app", "--wait", "-n", namespace)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "INFO[" not in waited.stdout  # --wait shows the outcome, not the log
    assert last_line(waited).startswith("ImageBuild app Succeeded: ")
    assert len(pods(sandbox, namespace, "app")) >= 2


def test_get_describe_and_logs_read_the_cluster_as_kubectl_would(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    path = build_file(sandbox, tmp_path, namespace, "site", DOCKERFILE)
    assert cli(sandbox, "build", "-f", str(path), "--follow", "-n", namespace).returncode == 0
    digest, _ = manifest(sandbox, f"{namespace}/site", "latest")

    got = cli(sandbox, "get", "-n", namespace)
    assert got.returncode == 0, got.stderr
    header, row = got.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "REASON", "TARGET", "PLATFORMS", "SIZE",
                              "DIGEST", "CACHE", "CAUSE", "AGE"]
    assert row.split()[:3] == ["site", "Succeeded", "Succeeded"]
    assert row.split()[-2] == "Spec"  # a new ImageBuild's first build
    assert digest.split(":")[1][:12] in row.split()
    everywhere = cli(sandbox, "get", "-A")
    assert any(line.split()[:2] == [namespace, "site"] for line in everywhere.stdout.splitlines())

    described = cli(sandbox, "describe", "site", "-n", namespace)
    assert described.returncode == 0, described.stderr
    assert re.search(r"^  Ready: +True Succeeded", described.stdout, re.MULTILINE)
    assert re.search(r"^  site-1-1: +Succeeded, attempt 1", described.stdout, re.MULTILINE)
    assert digest in described.stdout

    logs = cli(sandbox, "logs", "site", "-n", namespace)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines()[0] == "==> Attempt 1: pod site-1-1"
    assert "compiling the app" in logs.stdout.splitlines()
    missing = cli(sandbox, "logs", "site", "--attempt", "2", "-n", namespace)
    assert missing.returncode == 1
    assert "no build pod for attempt 2" in missing.stderr
    unknown = cli(sandbox, "describe", "nothing", "-n", namespace)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1, f"error: ImageBuild nothing not found in namespace {namespace}")


def test_the_current_contexts_namespace_and_the_kubectl_plugin(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    path = build_file(sandbox, tmp_path, namespace, "plugin", DOCKERFILE)
    config = yaml.safe_load(sandbox.control_plane.admin.kubeconfig.read_text())
    for entry in config["contexts"]:
        entry["context"]["namespace"] = namespace
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    applied = cli(sandbox, "build", "-f", str(path), kubeconfig=kubeconfig)  # no -n
    assert applied.returncode == 0, applied.stderr
    assert sandbox.imagebuild("plugin", namespace) is not None

    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert kubectl is not None, "the test extra installs kubectl into the venv"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    plugin = subprocess.run([kubectl, "stagewright", "get", "plugin"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert plugin.returncode == 0, plugin.stderr
    assert plugin.stdout.splitlines()[1].split()[0] == "plugin"


def test_a_file_with_its_own_namespace_is_applied_as_kubectl_applies_it(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    """A Namespace, a ConfigMap and an ImageBuild in it, no -n (the context says default):
    kubectl applies each object in its own namespace, creating the Namespace first. The build
    pod's namespace is seconds old, so its default ServiceAccount may not exist yet: the build
    must wait for it, not fail."""
    shop = f"shop-{namespace[-6:]}"  # the test namespace hash: unique, and short
    objects = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": shop}},
               context(shop, DOCKERFILE, files={"app.sh": "echo hi\n"}),
               imagebuild(sandbox, shop, "web", target="runtime")]
    path = tmp_path / "shop.yaml"
    # ImageBuild first, Namespace last: the CLI orders them as a build needs.
    path.write_text(yaml.safe_dump_all(list(reversed(objects)), sort_keys=False))
    try:
        result = cli(sandbox, "build", "-f", str(path), "--follow", "--timeout", "4m")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[:3] == [
            f"namespace/{shop} created", "configmap/ctx created",
            "imagebuild.stagewright.dev/web created"]
        digest, _ = manifest(sandbox, f"{shop}/web", "latest")
        assert last_line(result) == (f"ImageBuild web Succeeded: "
                                     f"{sandbox.registry.host}/{shop}/web@{digest}")

        # An explicit -n that differs from the file's is refused as kubectl refuses it, before
        # anything is written.
        refused = cli(sandbox, "build", "-f", str(path), "-n", namespace)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith(
            f"error: the namespace from the provided object '{shop}' does not match the "
            f"namespace '{namespace}'. You must pass '--namespace={shop}'")
        assert sandbox.imagebuild("web", namespace) is None
        # The same -n as the file's is fine; objects without a namespace take -n.
        same = cli(sandbox, "build", "-f", str(path), "-n", shop)
        assert same.returncode == 0, same.stderr
        assert "imagebuild.stagewright.dev/web unchanged" in same.stdout
    finally:
        sandbox.admin.delete("v1", "Namespace", shop)


def test_timeout_gives_up_with_exit_3_and_the_build_goes_on(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    path = build_file(sandbox, tmp_path, namespace, "slow", SLOW)
    started = time.monotonic()
    result = cli(sandbox, "build", "-f", str(path), "--timeout", "3s", "-n", namespace)
    # Promptly, while the build step is silent (a blocked log read once held it to the end).
    assert time.monotonic() - started < 20, result.stdout
    assert result.returncode == 3, result.stdout + result.stderr
    assert re.match(r"ImageBuild slow Timeout: not finished after 3s \(phase \w+\)",
                    last_line(result))
    status = (sandbox.imagebuild("slow", namespace) or {}).get("status") or {}
    assert status.get("phase") not in ("Succeeded", "Failed")


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` gives a TTY")
def test_a_terminal_gets_a_live_progress_line(sandbox: Sandbox, namespace: str,
                                              tmp_path: Path) -> None:
    path = build_file(sandbox, tmp_path, namespace, "live", DOCKERFILE)
    kubeconfig = sandbox.control_plane.admin.kubeconfig
    command = (f"KUBECONFIG={kubeconfig} {sys.executable} -m stagewright.cli build "
               f"-f {path} --follow -n {namespace}")
    typescript = tmp_path / "typescript"
    result = subprocess.run(["script", "-qec", command, str(typescript)],
                            capture_output=True, text=True, timeout=240, check=False,
                            env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, typescript.read_text(errors="replace")
    screen = typescript.read_text(errors="replace")
    assert ANSI.search(screen)  # rich drew the live line
    assert re.search(r"stage build · step \d/2", screen)
    assert "ImageBuild live Succeeded: " in screen
