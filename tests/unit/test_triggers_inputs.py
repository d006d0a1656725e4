"""What triggers read: a Dockerfile's base images, git's pkt-lines, webhook signatures."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from stagewright.dockerfile import base_images, expand
from stagewright.triggers.gitrefs import (
    GitRefError,
    ResolvedRef,
    candidates,
    choose,
    is_commit,
    ls_refs_request,
    parse_refs,
    pkt_line,
    pkt_lines,
)
from stagewright.triggers.webhook import (
    Delivery,
    Replays,
    WebhookRefusedError,
    authenticate,
    webhook_path,
)

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE=python:3.12-slim
ARG GO=1.22
FROM golang:${GO} AS build
RUN --mount=type=cache,target=/root/.cache go build -o /out/app
FROM ${BASE} AS runtime
COPY --from=build /out/app /app
COPY --from=busybox:1.36 /bin/busybox /bin/busybox
FROM runtime AS test
RUN /app --self-test
FROM node:20 AS docs
FROM scratch AS minimal
COPY --from=build /out/app /app
"""


@pytest.mark.parametrize(("target", "args", "expected"), [
    (None, {}, ["golang:1.22"]),  # the last stage: scratch, copying from build
    ("runtime", {}, ["golang:1.22", "python:3.12-slim", "busybox:1.36"]),
    ("test", {"BASE": "registry.example.com/py:3"},
     ["golang:1.22", "registry.example.com/py:3", "busybox:1.36"]),
    ("build", {"GO": "1.23"}, ["golang:1.23"]),
    ("docs", {}, ["node:20"]),  # an unused stage's base is watched only by its own build
    ("nope", {}, []),
])
def test_base_images_follow_the_targets_stages_with_args_expanded(
        target: str | None, args: dict[str, str], expected: list[str]) -> None:
    assert base_images(DOCKERFILE, args, target) == expected


def test_a_build_arg_for_an_undeclared_arg_is_not_used() -> None:
    assert base_images("FROM ${BASE:-alpine:3}\n", {"BASE": "evil:1"}) == ["alpine:3"]


def test_expansion_forms() -> None:
    values = {"A": "x", "EMPTY": ""}
    assert expand("$A/${A}/${EMPTY:-d}/${A:+y}/${MISSING}", values) == "x/x/d/y/"


def test_pkt_lines_round_trip_with_flush_and_delimiter() -> None:
    data = pkt_line(b"version 2\n") + b"0000" + pkt_line(b"ls-refs\n") + b"0001"
    assert pkt_lines(data) == [b"version 2\n", None, b"ls-refs\n", None]
    with pytest.raises(GitRefError, match="pkt-line"):
        pkt_lines(b"<html>nope</html>")


def test_a_v0_advertisement_peels_tags_and_names_head() -> None:
    lines = [b"# service=git-upload-pack\n", None,
             b"1" * 40 + b" HEAD\0multi_ack symref=HEAD:refs/heads/main\n",
             b"1" * 40 + b" refs/heads/main\n", b"2" * 40 + b" refs/tags/v1\n",
             b"3" * 40 + b" refs/tags/v1^{}\n", None]
    refs = parse_refs(lines)
    assert refs["HEAD"] == refs["refs/heads/main"] == "1" * 40
    assert refs["refs/tags/v1"] == "3" * 40  # the commit, not the tag object
    assert choose(refs, "v1") == ResolvedRef("refs/tags/v1", "3" * 40)
    assert choose(refs, None) == ResolvedRef("HEAD", "1" * 40)


def test_v2_ls_refs_lines_with_symref_and_peeled() -> None:
    refs = parse_refs([b"1" * 40 + b" HEAD symref-target:refs/heads/trunk\n",
                       b"2" * 40 + b" refs/tags/v2 peeled:" + b"4" * 40 + b"\n"])
    assert refs["refs/heads/trunk"] == "1" * 40
    assert refs["refs/tags/v2"] == "4" * 40


def test_a_branch_is_preferred_to_a_tag_of_the_same_name_and_missing_refs_say_so() -> None:
    refs = {"refs/heads/v1": "1" * 40, "refs/tags/v1": "2" * 40}
    assert choose(refs, "v1").ref == "refs/heads/v1"
    assert choose(refs, "refs/tags/v1").commit == "2" * 40
    with pytest.raises(GitRefError, match="no branch or tag 'gone'"):
        choose(refs, "gone")
    assert candidates(None) == ["HEAD"]


def test_the_ls_refs_request_asks_for_the_candidates_only() -> None:
    request = ls_refs_request("main")
    assert request.startswith(pkt_line(b"command=ls-refs\n"))
    assert pkt_line(b"ref-prefix refs/heads/main\n") in request
    assert pkt_line(b"ref-prefix refs/tags/main\n") in request
    assert request.endswith(b"0000")


def test_commits_never_trigger() -> None:
    assert is_commit("a" * 40)
    assert not is_commit("main")
    assert not is_commit(None)
    assert not is_commit("a" * 39)


SECRET = b"It's a Secret to Everybody"
BODY = b'{"ref": "refs/heads/main", "after": "ffffffffffffffffffffffffffffffffffffffff"}'


def github_signature(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_github_gitlab_and_generic_deliveries_authenticate() -> None:
    assert authenticate({"X-Hub-Signature-256": github_signature(BODY),
                         "X-GitHub-Delivery": "d-1"}, BODY, SECRET) == Delivery("github", "d-1")
    assert authenticate({"x-gitlab-token": SECRET.decode(), "X-Gitlab-Event-UUID": "u-1"},
                        BODY, SECRET) == Delivery("gitlab", "u-1")
    assert authenticate({"X-Stagewright-Signature": github_signature(BODY)}, BODY,
                        SECRET) == Delivery("generic", hashlib.sha256(BODY).hexdigest())


def test_githubs_documented_test_vector() -> None:
    """GitHub's docs: secret "It's a Secret to Everybody", payload "Hello, World!"."""
    expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert github_signature(b"Hello, World!") == f"sha256={expected}"
    assert authenticate({"X-Hub-Signature-256": f"sha256={expected}"}, b"Hello, World!",
                        SECRET).provider == "github"


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "no signature"),
    ({"X-Hub-Signature-256": github_signature(BODY, b"wrong")}, "does not match"),
    ({"X-Hub-Signature-256": github_signature(BODY + b" ")}, "does not match"),
    ({"X-Hub-Signature-256": "sha1=" + "0" * 40}, "does not match"),
    ({"X-Gitlab-Token": "wrong"}, "not the webhook's token"),
    ({"X-Stagewright-Signature": "sha256="}, "does not match"),
])
def test_bad_or_missing_signatures_are_refused(headers: dict[str, str], why: str) -> None:
    with pytest.raises(WebhookRefusedError, match=why):
        authenticate(headers, BODY, SECRET)


def test_an_empty_secret_authenticates_nothing() -> None:
    with pytest.raises(WebhookRefusedError, match="empty"):
        authenticate({"X-Gitlab-Token": ""}, BODY, b"")


def test_replays_are_recognised_per_path_and_bounded() -> None:
    replays = Replays(limit=2)
    one, two, three = (Delivery("github", n) for n in ("1", "2", "3"))
    assert replays.first_time("/hooks/a", one)
    assert not replays.first_time("/hooks/a", one)
    assert replays.first_time("/hooks/b", one)  # another ImageBuild's path
    assert replays.first_time("/hooks/a", two)
    assert replays.first_time("/hooks/a", three)  # the oldest is forgotten past the limit
    assert replays.first_time("/hooks/b", one)


def test_the_path_names_nothing_but_a_hash_of_the_uid() -> None:
    path = webhook_path("0b9e6c1e-uid")
    assert path.startswith("/hooks/")
    assert len(path) == len("/hooks/") + 40
    assert path == webhook_path("0b9e6c1e-uid") != webhook_path("another-uid")
