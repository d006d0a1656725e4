"""GitOps clients wait for the build: Helm 4's ``--wait`` (kstatus), ``kubectl wait``, Argo CD.

Helm 4's default wait strategy (``watcher``) reads health with kstatus, the library Flux's
kustomize-controller uses for ``wait: true`` and health checks. kstatus calls a custom resource
with neither conditions nor ``status.observedGeneration`` Current, so before the CRD defaulted
``status`` (``UNOBSERVED_STATUS``) ``helm install --wait`` returned ``deployed`` while the
build had not started. These tests run the real Helm 4 binary from the tool cache against the
real apiserver and node: a chart holding a ConfigMap context and an ImageBuild.

The Argo CD check in ``docs/argocd-health.lua`` is run by a real Lua 5.1 interpreter (lupa;
Argo CD embeds gopher-lua, a Lua 5.1) on the objects exactly as the apiserver serves them.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51
from tests.cluster.builds import context, imagebuild
from tests.tooling import ROOT, tool

from sandbox.stack import Sandbox

pytestmark = pytest.mark.cluster

PASSING = "ARG BASE\nFROM ${BASE}\nRUN sleep 3 && echo built > /built\n"
#: Fails while the build arg TESTS is "failing": fixing it is a spec change, a new generation.
FAILING = ("ARG BASE\nFROM ${BASE}\nARG TESTS=failing\n"
           "RUN if [ \"$TESTS\" = failing ]; then echo 'the unit tests failed' >&2; exit 4; fi\n")
ARGOCD_HEALTH = ROOT / "docs" / "argocd-health.lua"


def chart(tmp_path: Path, sandbox: Sandbox, namespace: str, dockerfile: str,
          build_args: dict[str, str] | None = None) -> Path:
    """A user's chart: the ConfigMap context and one ImageBuild, as plain templates."""
    root = tmp_path / "app"
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "Chart.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v2", "name": "app", "version": "0.1.0"}))
    build = imagebuild(sandbox, namespace, "app", timeout="3m")
    build["spec"]["buildArgs"].update(build_args or {})
    objects = [context(namespace, dockerfile), build]
    for obj in objects:
        del obj["metadata"]["namespace"]  # Helm places them in the release's namespace
    (root / "templates" / "objects.yaml").write_text(yaml.safe_dump_all(objects,
                                                                         sort_keys=False))
    return root


def helm(sandbox: Sandbox, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(sandbox.control_plane.admin.kubeconfig),
           "HELM_CACHE_HOME": str(sandbox.work_dir / "helm-cache"),
           "HELM_CONFIG_HOME": str(sandbox.work_dir / "helm-config"),
           "HELM_DATA_HOME": str(sandbox.work_dir / "helm-data")}
    return subprocess.run([str(tool("helm")), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def stored(sandbox: Sandbox, namespace: str) -> dict[str, Any]:
    found = sandbox.imagebuild("app", namespace)
    assert found is not None
    return found


def test_helm_install_wait_returns_only_after_the_build_succeeded(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    started = time.monotonic()
    result = helm(sandbox, "install", "app", str(chart(tmp_path, sandbox, namespace, PASSING)),
                  "-n", namespace, "--wait", "--timeout", "4m")
    waited = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STATUS: deployed" in result.stdout
    build = stored(sandbox, namespace)
    status = build["status"]
    # Read the moment Helm returned: the build had ended, successfully, for this generation.
    assert (status["phase"], status["observedGeneration"]) == (
        "Succeeded", build["metadata"]["generation"]), (status, waited)
    assert status["digest"].startswith("sha256:")

    # A changed spec: Helm must wait for the new generation's build too.
    upgraded = helm(sandbox, "upgrade", "app",
                    str(chart(tmp_path, sandbox, namespace, PASSING, {"EXTRA": "2"})),
                    "-n", namespace, "--wait", "--timeout", "4m")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    build = stored(sandbox, namespace)
    assert build["metadata"]["generation"] == 2
    assert (build["status"]["phase"], build["status"]["observedGeneration"]) == ("Succeeded", 2)


def test_helm_install_wait_fails_for_a_failed_build_and_says_why(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    result = helm(sandbox, "install", "app", str(chart(tmp_path, sandbox, namespace, FAILING)),
                  "-n", namespace, "--wait", "--timeout", "4m")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    status = stored(sandbox, namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "BuildFailed")
    # kstatus prints the Stalled condition's message, which starts with the reason.
    assert "status: Failed, message: BuildFailed: Kaniko exited with code 4" in output, output

    # The fix, a spec change (a build arg), and an upgrade: Helm waits for the new
    # generation's build, which succeeds.
    fixed = helm(sandbox, "upgrade", "app",
                 str(chart(tmp_path, sandbox, namespace, FAILING, {"TESTS": "passing"})),
                 "-n", namespace, "--wait", "--timeout", "4m")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    status = stored(sandbox, namespace)["status"]
    assert (status["phase"], status["observedGeneration"]) == ("Succeeded", 2)


def test_a_new_imagebuild_is_in_progress_before_the_operator_wrote_anything(
        sandbox: Sandbox, namespace: str) -> None:
    """The apiserver's own default: read back the instant it is created, and with no operator
    to write anything at all, an ImageBuild is Pending at observedGeneration 0."""
    sandbox.operator.stop()
    try:
        sandbox.admin.apply([context(namespace, PASSING), imagebuild(sandbox, namespace, "app")])
        first = stored(sandbox, namespace)
        time.sleep(2)
        later = stored(sandbox, namespace)
    finally:
        sandbox.operator.start()
    for seen in (first, later):
        assert seen["status"] == {
            "phase": "Pending", "reason": "AwaitingOperator", "observedGeneration": 0,
            "message": "Waiting for the Stagewright operator to start the build."}
    assert argocd_health(first)["status"] == "Progressing"
    done = sandbox.wait_settled("app", namespace)
    assert done["status"]["phase"] == "Succeeded"
    assert argocd_health(done) == {"status": "Healthy", "message": done["status"]["image"]}


def test_argocd_reads_a_failed_build_as_degraded(sandbox: Sandbox, namespace: str) -> None:
    sandbox.admin.apply([context(namespace, FAILING), imagebuild(sandbox, namespace, "app")])
    done = sandbox.wait_settled("app", namespace)
    health = argocd_health(done)
    assert health["status"] == "Degraded"
    assert health["message"].startswith("BuildFailed: Kaniko exited with code 4")


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """docs/argocd-health.lua's verdict on ``obj``, as Argo CD runs it (``obj`` global)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute(ARGOCD_HEALTH.read_text())
    return {"status": str(result["status"]), "message": str(result["message"])}


def _to_lua(runtime: Any, value: Any) -> Any:
    """JSON as gopher-lua sees it: objects and arrays become tables (arrays 1-based)."""
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value

