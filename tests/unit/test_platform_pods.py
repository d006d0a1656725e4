"""Multi-platform builds: the API's rules and each platform's pod (golden files, schemas)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from stagewright.api.platforms import Platform
from stagewright.api.v1alpha1 import ImageBuild, ImageBuildSpec
from stagewright.resources.platform_pods import platform_pod
from stagewright.resources.pod_common import build_key, context_files, staging_tag
from stagewright.settings import Settings

HERE = Path(__file__).parent
FIXTURES = sorted((HERE / "fixtures" / "platforms").glob("*.yaml"))
SETTINGS = Settings(kaniko_image="ghcr.io/osscontainertools/kaniko:v1.28.3",
                    build_platform="linux/amd64")
PINNED = "FROM registry.example.com/golang@sha256:" + "a" * 64 + " AS build\n"


def load(path: Path) -> ImageBuild:
    return ImageBuild.model_validate(yaml.safe_load(path.read_text()))


def pods_for(build: ImageBuild) -> dict[str, dict[str, Any]]:
    """Each platform's pod; a cross build's non-build platforms get a pinned Dockerfile."""
    source = build.spec.source.config_map
    files = context_files(source, []) if source is not None else []
    result = {}
    for text in build.spec.platforms or []:
        platform = Platform.parse(text)
        pinned = (PINNED if build.spec.platform_mode.value == "cross"
                  and not platform.matches(Platform.parse(SETTINGS.build_platform)) else None)
        result[platform.slug] = platform_pod(
            build, SETTINGS, key=build_key(build.generation, build.rebuild_token), attempt=1,
            platform=platform, files=files, dockerfile=pinned)
    return result


def spec(**fields: Any) -> ImageBuildSpec:
    return ImageBuildSpec.model_validate({"source": {"configMap": {"name": "ctx"}},
                                          "output": {"image": "registry.example.com/a/b"},
                                          **fields})


# The API


def test_platforms_parse_name_and_match_as_buildx_spells_them() -> None:
    arm = Platform.parse("linux/arm/v7")
    assert (arm.os, arm.architecture, arm.variant, arm.slug) == ("linux", "arm", "v7",
                                                                 "linux-arm-v7")
    assert str(arm) == "linux/arm/v7"
    assert Platform.parse("linux/arm64").matches(Platform.parse("linux/arm64/v8"))
    assert Platform.parse("linux/arm").matches(arm)
    assert not Platform.parse("linux/arm/v6").matches(arm)
    assert arm.node_selector == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm"}
    with pytest.raises(ValueError, match="os/architecture"):
        Platform.parse("amd64")


@pytest.mark.parametrize(("fields", "error"), [
    ({"platforms": ["linux/arm64", "linux/arm64/v8"]},
     "linux/arm64 and linux/arm64/v8 are the same platform"),
    ({"platforms": []}, "at least 1 item"),
    ({"platforms": [f"linux/arch{i}" for i in range(9)]}, "at most 8 items"),
    ({"platforms": ["Linux/AMD64"]}, "should match pattern"),
    ({"platformMode": "cross"}, "platformMode cross needs spec.platforms"),
    ({"platforms": ["linux/amd64"], "nodeSelector": {"kubernetes.io/arch": "amd64"}},
     "spec.nodeSelector sets kubernetes.io/arch"),
    ({"platforms": ["linux/amd64"], "builder": "buildah"},
     "builder buildah does not build spec.platforms: each platform's image is pushed to a "
     "staging tag"),
])
def test_invalid_platform_specs_say_what_to_fix(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        spec(**fields)


def test_without_platforms_nothing_changes() -> None:
    plain = spec()
    assert plain.platforms is None
    assert plain.platform_mode.value == "native"


# The pods


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_platform_pods_match_golden_files(fixture: Path) -> None:
    for slug, pod in pods_for(load(fixture)).items():
        golden = HERE / "golden" / "platforms" / f"{fixture.stem}.{slug}.pod.yaml"
        rendered = yaml.safe_dump(pod, sort_keys=False)
        if os.environ.get("STAGEWRIGHT_UPDATE_GOLDEN") == "1":
            golden.write_text(rendered)
        assert golden.exists(), "run with STAGEWRIGHT_UPDATE_GOLDEN=1 to create the golden file"
        assert rendered == golden.read_text(), slug


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
@pytest.mark.parametrize("version", ["1.25.0", "1.33.0", "1.37.0"])
def test_platform_pods_are_valid_for_kubernetes(fixture: Path, version: str) -> None:
    for pod in pods_for(load(fixture)).values():
        kubernetes_validate.validate(pod, version, strict=True)


def test_native_pods_select_their_platforms_nodes_and_the_specs() -> None:
    pods = pods_for(load(HERE / "fixtures" / "platforms" / "native-git.yaml"))
    assert {slug: pod["spec"]["nodeSelector"] for slug, pod in pods.items()} == {
        "linux-amd64": {"pool": "builders", "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64"},
        "linux-arm64": {"pool": "builders", "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "arm64"},
        "linux-arm-v7": {"pool": "builders", "kubernetes.io/os": "linux",
                         "kubernetes.io/arch": "arm"},
    }
    args = pods["linux-arm-v7"]["spec"]["containers"][0]["args"]
    assert "--custom-platform=linux/arm/v7" in args
    assert "--cache-repo=registry.example.com/acme/cache/web/linux-arm-v7" in args
    assert "--destination=registry.example.com/acme/web:stagewright-staging-web-linux-arm-v7" \
        in args
    assert not any(arg.startswith("--build-arg=") for arg in args)  # Kaniko sets TARGET*
    assert pods["linux-arm-v7"]["metadata"]["name"] == "web-1-linux-arm-v7-1"
    assert pods["linux-arm-v7"]["metadata"]["labels"]["stagewright.dev/platform"] == \
        "linux-arm-v7"


def test_cross_pods_all_run_on_the_build_platform() -> None:
    pods = pods_for(load(HERE / "fixtures" / "platforms" / "cross-configmap.yaml"))
    for pod in pods.values():
        assert pod["spec"]["nodeSelector"] == {"pool": "builders", "kubernetes.io/os": "linux",
                                               "kubernetes.io/arch": "amd64"}
    arm64 = pods["linux-arm64"]
    assert arm64["metadata"]["annotations"]["stagewright.dev/dockerfile"] == PINNED
    for container in (*arm64["spec"]["initContainers"], *arm64["spec"]["containers"]):
        assert "--custom-platform=linux/arm64" in container["args"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/workspace/build/Dockerfile"]["name"] == "pinned-dockerfile"
        assert mounts["/workspace/main.go"]["name"] == "context-files"
    assert "stagewright.dev/dockerfile" not in pods["linux-amd64"]["metadata"]["annotations"]


def test_staging_tags_stay_valid_for_long_names() -> None:
    tag = staging_tag("x" * 253, "linux-arm-v7")
    assert len(tag) <= 128
    assert tag.endswith("-linux-arm-v7")
    assert staging_tag("web") == "stagewright-staging-web"
