"""Build insight end to end: size budget, largest layers, history and size delta.

Real apiserver, real registry, real Kaniko on the sandbox's real node, which runs each build
pod and pushes to the registry; the registry is asked directly what each tag holds.
"""

from __future__ import annotations

import httpx
import pytest
from tests.cluster.builds import ACCEPT, context, imagebuild, manifest

from sandbox.demo import APP as DEMO_APP
from sandbox.demo import DOCKERFILE as DEMO_DOCKERFILE
from sandbox.stack import Sandbox
from stagewright.resources.kaniko_pod import staging_tag

pytestmark = pytest.mark.cluster


def tag_status(sandbox: Sandbox, repository: str, tag: str) -> int:
    return httpx.get(f"{sandbox.registry.url}/v2/{repository}/manifests/{tag}",
                     headers={"Accept": ACCEPT}, timeout=10).status_code


def test_an_image_over_its_budget_fails_and_never_gets_the_output_tags(
        sandbox: Sandbox, namespace: str) -> None:
    sandbox.admin.apply([context(namespace, DEMO_DOCKERFILE, files={"app.sh": DEMO_APP})])
    sandbox.admin.apply([imagebuild(sandbox, namespace, "fat", target="build",
                                    output={"maxSize": "1Mi", "tags": ["latest", "v1"]})])
    status = sandbox.wait_settled("fat", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "SizeBudgetExceeded"), status
    assert status["size"] > 2**20
    assert "over its spec.output.maxSize budget of 1.0MiB" in status["message"]
    # The 24 MiB toolchain layer is named, by its instruction, first among the largest.
    top = status["largestLayers"][0]
    assert top["size"] > 20 * 2**20
    assert "dd if=/dev/urandom" in top["instruction"]
    assert "dd if=/dev/urandom" in status["message"]
    repository = f"{namespace}/fat"
    assert tag_status(sandbox, repository, "latest") == 404
    assert tag_status(sandbox, repository, "v1") == 404
    staged, _ = manifest(sandbox, repository, staging_tag("fat"))
    assert staged == status["digest"]
    assert status["history"][0]["reason"] == "SizeBudgetExceeded"


def test_an_image_within_budget_gets_every_tag_and_a_history(sandbox: Sandbox,
                                                             namespace: str) -> None:
    sandbox.admin.apply([context(namespace, DEMO_DOCKERFILE, files={"app.sh": DEMO_APP})])
    sandbox.admin.apply([imagebuild(sandbox, namespace, "slim", target="runtime",
                                    output={"maxSize": "64Mi", "tags": ["latest", "v1"]})])
    first = sandbox.wait_settled("slim", namespace)["status"]
    assert first["phase"] == "Succeeded", first
    repository = f"{namespace}/slim"
    for tag in ("latest", "v1"):
        assert manifest(sandbox, repository, tag)[0] == first["digest"]
    assert "sizeDelta" not in first  # nothing to compare with yet
    assert [entry["phase"] for entry in first["history"]] == ["Succeeded"]
    assert first["largestLayers"], first
    assert len(first["largestLayers"]) <= 5
    sizes = [entry["size"] for entry in first["largestLayers"]]
    assert sizes == sorted(sizes, reverse=True)

    second = sandbox.rebuild("slim", namespace, request="again")["status"]
    assert second["phase"] == "Succeeded", second
    assert second["sizeDelta"] == second["size"] - first["size"]
    assert [(h["generation"], h.get("rebuild")) for h in second["history"]] == [
        (1, "again"), (1, None)]
    assert second["history"][1]["digest"] == first["digest"]


def test_a_check_stage_runs_first_and_fills_the_cache_the_target_hits(
        sandbox: Sandbox, namespace: str) -> None:
    """spec.checks on real Kaniko: the test stage builds first (an init container), pushes its
    layers to the cache, and the target reuses them; status.cache comes from the build log
    (pods/log, allowed by the shipped RBAC), status.baseSize from the base image's layers."""
    sandbox.admin.apply([context(namespace, DEMO_DOCKERFILE, files={"app.sh": DEMO_APP})])
    sandbox.admin.apply([imagebuild(sandbox, namespace, "app", target="runtime",
                                    checks=["test"])])
    status = sandbox.wait_settled("app", namespace, timeout=300)["status"]
    assert status["phase"] == "Succeeded", status
    [check] = status["checks"]
    assert (check["stage"], check["result"]) == ("test", "Passed")
    assert check["durationSeconds"] >= 0
    # The runtime stage copies from the build stage, whose two RUN steps the check built.
    assert status["cache"] == {"hits": 2, "misses": 0, "summary": "2/2"}, status
    assert status["baseImage"] == sandbox.base_image
    _, base = manifest(sandbox, *sandbox.base_image.split("/", 1)[1].rsplit(":", 1))
    assert status["baseSize"] == sum(layer["size"] for layer in base["layers"])
    assert status["history"][0]["cacheHits"] == 2


def test_a_failing_check_fails_the_build_and_pushes_nothing(sandbox: Sandbox,
                                                            namespace: str) -> None:
    dockerfile = ("ARG BASE\nFROM ${BASE} AS build\nRUN echo compiled > /app\n"
                  "FROM build AS test\nRUN echo 'expected 2 got 3' && exit 3\n"
                  "FROM ${BASE} AS runtime\nCOPY --from=build /app /app\n")
    sandbox.admin.apply([context(namespace, dockerfile)])
    sandbox.admin.apply([imagebuild(sandbox, namespace, "broken", target="runtime",
                                    checks=["test"])])
    status = sandbox.wait_settled("broken", namespace, timeout=300)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "CheckFailed"), status
    assert status["message"].startswith("Check stage test failed")
    assert "expected 2 got 3" in status["message"]
    assert status["checks"] == [
        {"stage": "test", "result": "Failed", "durationSeconds": status["checks"][0].get(
            "durationSeconds")}]
    assert tag_status(sandbox, f"{namespace}/broken", "latest") == 404
