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
