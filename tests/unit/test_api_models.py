"""The models reject what the CRD schema cannot express, with messages that name the field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from stagewright.api.types import parse_duration
from stagewright.api.v1alpha1 import ImageBuild, ImageBuildSpec


def spec(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"configMap": {"name": "ctx"}},
        "output": {"image": "registry.example.com/acme/web"},
    }
    return {**base, **changes}


def test_defaults_match_the_design() -> None:
    parsed = ImageBuildSpec.model_validate(spec())
    assert parsed.dockerfile == "Dockerfile"
    assert parsed.target is None
    assert parsed.output.tags == ["latest"]
    assert parsed.cache.enabled is True
    assert parsed.cache_repo == "registry.example.com/acme/web/cache"
    assert parsed.output.registry == "registry.example.com"


@pytest.mark.parametrize(
    ("image", "registry"),
    [("acme/web", "index.docker.io"), ("localhost/web", "localhost"),
     ("127.0.0.1:5000/a/b", "127.0.0.1:5000"), ("ghcr.io/acme/web", "ghcr.io")],
)
def test_registry_host_follows_docker_conventions(image: str, registry: str) -> None:
    parsed = ImageBuildSpec.model_validate(spec(output={"image": image}))
    assert parsed.output.registry == registry


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"source": {}}, "source", "exactly one of source.git"),
        ({"source": {"configMap": {"name": "a"}, "url": "s3://b/c.tar.gz"}}, "source",
         "found: configMap, url"),
        ({"buildArgs": {"BAD-NAME": "x"}}, "buildArgs", "invalid build argument names"),
        ({"timeout": "0s"}, "timeout", "at least 1s"),
        ({"output": {"image": "r.example.com/a", "tags": ["v1", "v1"]}}, "output.tags",
         "unique"),
        ({"unknownField": 1}, "unknownField", "Extra inputs"),
    ],
)
def test_invalid_specs_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ImageBuildSpec.model_validate(spec(**changes))
    rendered = str(caught.value)
    assert field in rendered
    assert words in rendered


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("20m", 1200), ("1h30m", 5400), ("72h", 259200), ("1.5h", 5400),
     ("500ms", 0.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_bad_duration_says_how_to_write_one() -> None:
    with pytest.raises(ValueError, match="Go-style"):
        parse_duration("20 minutes")


def test_rebuild_token_and_identity_come_from_metadata() -> None:
    build = ImageBuild.model_validate({
        "metadata": {"name": "web", "namespace": "team-a", "generation": 3, "uid": "u-1",
                     "annotations": {"stagewright.dev/rebuild": "2026-11-27"}},
        "spec": spec(),
    })
    assert (build.name, build.namespace, build.generation, build.uid) == ("web", "team-a", 3, "u-1")
    assert build.rebuild_token == "2026-11-27"


def test_insecure_covers_the_output_registry_only() -> None:
    output = ImageBuildSpec.model_validate({
        "source": {"configMap": {"name": "ctx"}},
        "output": {"image": "10.0.0.5:5000/acme/web", "insecure": True}}).output
    assert output.insecure_for("10.0.0.5:5000")
    assert not output.insecure_for("index.docker.io")
    assert not output.model_copy(update={"insecure": False}).insecure_for("10.0.0.5:5000")
