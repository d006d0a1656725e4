"""The build pods: golden files and schema validation for every fixture (both builders), and
the Kaniko flags users rely on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from stagewright.api.v1alpha1 import ConfigMapSource, ImageBuild, ImageBuildSpec
from stagewright.resources.build_pod import build_pod
from stagewright.resources.kaniko_pod import kaniko_args, kaniko_context
from stagewright.resources.pod_common import (
    build_key,
    context_files,
    missing_context_keys,
    pod_name,
    staging_tag,
)
from stagewright.settings import Settings

HERE = Path(__file__).parent
FIXTURES = sorted((HERE / "fixtures").glob("*.yaml"))
SETTINGS = Settings(kaniko_image="ghcr.io/osscontainertools/kaniko:v1.28.3")


def load(path: Path) -> ImageBuild:
    return ImageBuild.model_validate(yaml.safe_load(path.read_text()))


def pod_for(build: ImageBuild, attempt: int = 1) -> dict[str, Any]:
    source = build.spec.source.config_map
    files = context_files(source, []) if source is not None else []
    return build_pod(build, SETTINGS, key=build_key(build.generation, build.rebuild_token),
                     attempt=attempt, files=files)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_pod_matches_golden_file(fixture: Path) -> None:
    """Any change to a built pod shows up as a reviewed diff of tests/unit/golden."""
    golden = HERE / "golden" / f"{fixture.stem}.pod.yaml"
    rendered = yaml.safe_dump(pod_for(load(fixture)), sort_keys=False)
    if os.environ.get("STAGEWRIGHT_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), "run with STAGEWRIGHT_UPDATE_GOLDEN=1 to create the golden file"
    assert rendered == golden.read_text()


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
@pytest.mark.parametrize("version", ["1.25.0", "1.33.0", "1.37.0"])
def test_pod_is_valid_for_kubernetes(fixture: Path, version: str) -> None:
    kubernetes_validate.validate(pod_for(load(fixture)), version, strict=True)


def test_pod_is_locked_down() -> None:
    pod = pod_for(load(HERE / "fixtures" / "git-runtime.yaml"))
    spec = pod["spec"]
    container = spec["containers"][0]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["activeDeadlineSeconds"] == 20 * 60
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in container["securityContext"]["capabilities"]["add"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["resources"]["limits"]["memory"] == "4Gi"
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ImageBuild", "web", True)


def test_push_secret_is_mounted_where_kaniko_reads_it() -> None:
    pod = pod_for(load(HERE / "fixtures" / "git-runtime.yaml"))
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "docker-config")
    assert volume["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"]
                 if m["name"] == "docker-config")
    assert mount["mountPath"] == "/kaniko/.docker"


def test_args_build_the_target_with_cache_and_report_the_digest() -> None:
    args = kaniko_args(load(HERE / "fixtures" / "git-runtime.yaml").spec)
    assert args[:4] == [
        "--context=git://github.com/acme/web.git",
        "--git=branch=main",
        "--context-sub-path=app",
        "--dockerfile=build/Dockerfile",
    ]
    for expected in (
        "--target=runtime",
        "--destination=registry.example.com/acme/web:latest",
        "--destination=registry.example.com/acme/web:v1.2.3",
        "--build-arg=JAVA_VERSION=21",
        "--label=org.opencontainers.image.source=https://github.com/acme/web",
        "--cache=true",
        "--cache-repo=registry.example.com/acme/web/cache",
        "--cache-ttl=72h",
        "--digest-file=/dev/termination-log",
    ):
        assert expected in args
    assert not any(a.startswith("--insecure") or a.startswith("--skip-tls") for a in args)


def test_insecure_weakens_only_the_output_registry() -> None:
    args = kaniko_args(load(HERE / "fixtures" / "configmap-insecure.yaml").spec)
    assert "--insecure-registry=kind-registry:5000" in args
    assert "--skip-tls-verify-registry=kind-registry:5000" in args
    assert "--insecure" not in args
    assert "--skip-tls-verify" not in args
    assert "--cache=false" in args


@pytest.mark.parametrize(
    ("git", "context", "extra"),
    [
        ({"url": "https://h/r.git"}, "git://h/r.git", None),
        ({"url": "https://h/r.git", "revision": "v1.0"}, "git://h/r.git", "--git=branch=v1.0"),
        ({"url": "https://h/r.git", "revision": "refs/pull/7/head"},
         "git://h/r.git#refs/pull/7/head", None),
        ({"url": "https://h/r.git", "revision": "a" * 40}, "git://h/r.git#" + "a" * 40, None),
    ],
)
def test_git_revisions_map_to_kaniko_contexts(git: dict[str, str], context: str,
                                              extra: str | None) -> None:
    build = ImageBuild.model_validate({
        "metadata": {"name": "x"},
        "spec": {"source": {"git": git}, "output": {"image": "r.example.com/x"}},
    })
    assert kaniko_context(build.spec) == context
    args = kaniko_args(build.spec)
    assert (extra in args) if extra else not any(a.startswith("--git=") for a in args)


def test_user_input_stays_one_argument() -> None:
    """Arguments are a list: a build arg with spaces and quotes cannot split or inject."""
    value = "a b; rm -rf / \"$(x)\""
    build = ImageBuild.model_validate({
        "metadata": {"name": "x"},
        "spec": {"source": {"configMap": {"name": "c"}}, "buildArgs": {"EVIL": value},
                 "output": {"image": "r.example.com/x"}},
    })
    assert f"--build-arg=EVIL={value}" in kaniko_args(build.spec)


def test_names_are_deterministic_and_bounded() -> None:
    assert pod_name("web", build_key(3, None), 1) == "web-3-1"
    assert build_key(3, "x") == build_key(3, "x") != build_key(3, "y")
    long_name = pod_name("a" * 80, build_key(12, "token"), 2)
    assert len(long_name) <= 63
    assert long_name.endswith(f"-{build_key(12, 'token')}-2")
    # Two long names with a common prefix still get different pods.
    assert pod_name("a" * 80 + "x", "1", 1) != pod_name("a" * 80 + "y", "1", 1)


def test_long_names_give_valid_labels() -> None:
    build = ImageBuild.model_validate({
        "metadata": {"name": "b" * 61 + "-.c" + "d" * 100},
        "spec": {"source": {"configMap": {"name": "c"}}, "output": {"image": "r.example.com/x"}},
    })
    pod = pod_for(build)
    kubernetes_validate.validate(pod, "1.33.0", strict=True)
    label = pod["metadata"]["labels"]["stagewright.dev/imagebuild"]
    assert len(label) <= 63
    assert label[-1].isalnum()


def test_configmap_keys_arrive_as_regular_files() -> None:
    """Each key is a subPath mount (a bind mount of the resolved file), never the kubelet's
    ..data symlink, so Kaniko's COPY copies content; nested paths come from items."""
    build = load(HERE / "fixtures" / "configmap-insecure.yaml")
    container = pod_for(build)["spec"]["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/workspace"]["name"] == "context"
    assert mounts["/workspace/Dockerfile"]["subPath"] == "Dockerfile"
    assert mounts["/workspace/cmd/hello/main.go"]["subPath"] == "main.go"
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/workspace")
    assert "--context=dir:///workspace" in container["args"]


def test_configmap_context_defaults_to_every_key_at_the_root() -> None:
    source = ConfigMapSource(name="ctx")
    files = context_files(source, ["b.txt", "Dockerfile", "a.txt"])
    assert [(f.key, f.path) for f in files] == [
        ("Dockerfile", "Dockerfile"), ("a.txt", "a.txt"), ("b.txt", "b.txt")]
    assert missing_context_keys(source, []) == []


def test_configmap_items_must_name_existing_keys_and_unique_paths() -> None:
    source = ConfigMapSource.model_validate(
        {"name": "ctx", "items": [{"key": "a", "path": "src/a"}, {"key": "zz", "path": "b"}]})
    assert missing_context_keys(source, ["a", "Dockerfile"]) == ["zz"]
    with pytest.raises(ValueError, match="repeated"):
        ConfigMapSource.model_validate(
            {"name": "ctx", "items": [{"key": "a", "path": "x"}, {"key": "b", "path": "x"}]})
    with pytest.raises(ValueError, match="path"):
        ConfigMapSource.model_validate({"name": "ctx", "items": [{"key": "a", "path": "../x"}]})


def test_no_deprecated_flags_for_the_pinned_executor() -> None:
    """v1.28.3 skips unused stages by default and warns on --skip-unused-stages."""
    for fixture in FIXTURES:
        assert not any(a.startswith("--skip-unused-stages") for a in kaniko_args(
            load(fixture).spec))


def test_kaniko_is_the_default_builder_and_names_the_container() -> None:
    pod = pod_for(load(HERE / "fixtures" / "git-runtime.yaml"))
    assert pod["metadata"]["labels"]["stagewright.dev/builder"] == "kaniko"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["kaniko"]


def test_ca_bundle_is_added_to_kanikos_trust() -> None:
    """The bundle's directory follows the image's own in SSL_CERT_DIR: added, not replacing."""
    settings = SETTINGS.model_copy(update={"ca_bundle_configmap": "corp-ca",
                                           "ca_bundle_key": "root.pem"})
    build = load(HERE / "fixtures" / "git-runtime.yaml")
    pod = build_pod(build, settings, key="1", attempt=1)
    container = pod["spec"]["containers"][0]
    assert {"name": "SSL_CERT_DIR",
            "value": "/kaniko/ssl/certs:/kaniko/ssl/extra-certs"} in container["env"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "ca-bundle")
    assert volume["configMap"] == {"name": "corp-ca",
                                   "items": [{"key": "root.pem", "path": "ca-bundle.crt"}]}
    assert {"name": "ca-bundle", "mountPath": "/kaniko/ssl/extra-certs",
            "readOnly": True} in container["volumeMounts"]
    kubernetes_validate.validate(pod, "1.33.0", strict=True)
    without = pod_for(build)["spec"]
    assert not any(v["name"] == "ca-bundle" for v in without["volumes"])


def test_a_size_budget_pushes_only_to_the_staging_tag() -> None:
    """Over budget, the image must never be reachable under the output tags: Kaniko pushes
    to a staging tag, and the operator adds the output tags once the size is within budget."""
    document = yaml.safe_load((HERE / "fixtures" / "git-runtime.yaml").read_text())
    document["spec"]["output"]["maxSize"] = "200Mi"
    build = ImageBuild.model_validate(document)
    args = pod_for(build)["spec"]["containers"][0]["args"]
    destinations = [a for a in args if a.startswith("--destination=")]
    assert destinations == [f"--destination=registry.example.com/acme/web:{staging_tag('web')}"]
    assert staging_tag("web") not in build.spec.output.tags
    assert len(staging_tag("x" * 300)) <= 128


def test_a_reproducible_build_leaves_build_times_out_and_buildah_refuses_it() -> None:
    spec = ImageBuildSpec.model_validate({
        "source": {"configMap": {"name": "ctx"}},
        "output": {"image": "registry.example.com/acme/web", "reproducible": True}})
    assert "--reproducible" in kaniko_args(spec)
    assert "--reproducible" not in kaniko_args(spec.model_copy(update={
        "output": spec.output.model_copy(update={"reproducible": False})}))
    with pytest.raises(ValidationError, match=r"spec\.output\.reproducible"):
        ImageBuildSpec.model_validate({**spec.model_dump(by_alias=True), "builder": "buildah"})
