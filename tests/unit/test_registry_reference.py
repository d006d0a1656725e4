"""Image references parse as docker and Kaniko read them (distribution's grammar)."""

from __future__ import annotations

import pytest

from stagewright.registry.reference import (
    DOCKER_HUB,
    DOCKER_HUB_API,
    ImageReference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", DOCKER_HUB, "library/busybox", "latest", None),
        ("busybox:1.36", DOCKER_HUB, "library/busybox", "1.36", None),
        ("acme/web", DOCKER_HUB, "acme/web", "latest", None),
        ("docker.io/busybox", DOCKER_HUB, "library/busybox", "latest", None),
        ("index.docker.io/acme/web:v1", DOCKER_HUB, "acme/web", "v1", None),
        ("registry-1.docker.io/library/busybox", DOCKER_HUB, "library/busybox", "latest", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None),
        ("127.0.0.1:5000/team/app:v1.2.3", "127.0.0.1:5000", "team/app", "v1.2.3", None),
        ("registry.example.com/a/b/c", "registry.example.com", "a/b/c", "latest", None),
        ("Registry.Example.com/app", "Registry.Example.com", "app", "latest", None),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
        (f"127.0.0.1:5000/app@{DIGEST}", "127.0.0.1:5000", "app", None, DIGEST),
        (f"127.0.0.1:5000/app:v1@{DIGEST}", "127.0.0.1:5000", "app", "v1", DIGEST),
        (f"busybox@{DIGEST}", DOCKER_HUB, "library/busybox", None, DIGEST),
        ("host.io/a.b_c__d--e/f-g", "host.io", "a.b_c__d--e/f-g", "latest", None),
        ("host.io/app:_under.score-1", "host.io", "app", "_under.score-1", None),
    ],
)
def test_parse(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = ImageReference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry, repository, tag, digest,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" busybox", "whitespace"),
        ("host.io/my app", "whitespace"),
        ("host.io/App", "must be lowercase"),
        ("MyApp", "must be lowercase"),
        ("host.io/app/", "path component ''"),
        ("host.io//app", "path component ''"),
        ("host.io/-app", "path component '-app'"),
        ("host.io/app:", "tag '' is invalid"),
        ("host.io/app:-x", "tag '-x' is invalid"),
        ("host.io/app:" + "x" * 129, "is invalid"),
        ("host.io/app@sha256:abc", "not sha256:<64 lowercase hex>"),
        ("host.io/app@md5:" + "a" * 32, "not sha256"),
        (f"host.io/app@{DIGEST}@{DIGEST}", "more than one '@'"),
        ("-bad-.io/app", "not a valid host[:port]"),
        ("host.io:port/app", "not a valid host[:port]"),
        (":5000/app", "not a valid host[:port]"),
        ("host.io/" + "a" * 250, "longer than 255"),
    ],
)
def test_parse_rejects_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="image reference") as info:
        ImageReference.parse(text)
    assert message in str(info.value)


def test_docker_hub_is_served_from_its_api_host() -> None:
    hub = ImageReference.parse("busybox")
    assert hub.api_host == DOCKER_HUB_API
    local = ImageReference.parse("127.0.0.1:5000/app")
    assert local.api_host == "127.0.0.1:5000"


def test_reference_prefers_the_digest() -> None:
    assert ImageReference.parse("host.io/app:v1").reference == "v1"
    assert ImageReference.parse(f"host.io/app:v1@{DIGEST}").reference == DIGEST


def test_str_round_trips() -> None:
    for text in ("host.io/app:v1", f"host.io/app:v1@{DIGEST}", f"host.io/app@{DIGEST}"):
        assert str(ImageReference.parse(text)) == text
    assert str(ImageReference.parse("busybox")) == "index.docker.io/library/busybox:latest"


def test_with_digest_pins_and_drops_the_tag() -> None:
    pinned = ImageReference.parse("host.io/app:v1").with_digest(DIGEST)
    assert str(pinned) == f"host.io/app@{DIGEST}"
    with pytest.raises(ValueError, match="sha256"):
        pinned.with_digest("sha256:short")


def test_is_frozen_and_hashable() -> None:
    ref = ImageReference.parse("host.io/app")
    assert {ref, ImageReference.parse("host.io/app:latest")} == {ref}
    with pytest.raises(AttributeError):
        ref.tag = "other"  # type: ignore[misc]
