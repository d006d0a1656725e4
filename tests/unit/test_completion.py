"""The completion path: its pure decisions, and ``Completion`` where no registry answers.

The decisions (patience, a registry's refusal, the size budget, the tags) are plain
functions of their inputs. ``Completion`` runs against kmock over HTTP for the paths that end
before a registry serves anything (a push Secret gone, a registry that cannot be reached);
tests/cluster covers the rest against a real registry.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kmock import Server, subresource
from tests.unit.kmock_support import PODS, FaultyEmulator, emulated_api

from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import ImageBuild, Phase
from stagewright.handlers.completion import (
    VERIFY_GRACE,
    Completion,
    Verdict,
    built,
    is_patient,
    over_budget,
    untagged,
    unverified,
)
from stagewright.handlers.kube_api import KubeApi
from stagewright.registry import (
    ImageInfo,
    ImageNotFound,
    InvalidManifest,
    Layer,
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
)
from stagewright.settings import Settings

NS, NAME, POD = "team-a", "web", "web-1-1"
DIGEST = "sha256:" + "ab12" * 16
NOW = datetime(2026, 11, 30, 7, 37, 9, tzinfo=UTC)
LOG = logging.getLogger("test")


def imagebuild(image: str = "registry.example.com/acme/web", **output: Any) -> ImageBuild:
    """An ImageBuild whose build pod has just ended in success."""
    return ImageBuild.model_validate({
        "apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-web", "generation": 1},
        "spec": {"source": {"git": {"url": "https://example.com/acme/web.git"}},
                 "output": {"image": image, "tags": ["latest", "v1"], **output}},
        "status": {"phase": "Building", "observedGeneration": 1, "podName": POD,
                   "attempt": 1, "startTime": "2026-11-30T07:30:00Z"},
    })


def image(*sizes: int) -> ImageInfo:
    """A single-platform image of layers of ``sizes`` bytes (plus a 100-byte config)."""
    layers = tuple(Layer(digest=f"sha256:{i:064x}", size=size) for i, size in enumerate(sizes))
    return ImageInfo(digest=DIGEST, media_type="application/vnd.oci.image.manifest.v1+json",
                     size=sum(sizes) + 100, layers=len(layers), layer_details=layers)


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# Patience: how long a registry failure may pass before the operator records what it knows.

@pytest.mark.parametrize(("finished_at", "patient"), [
    (iso(NOW - timedelta(seconds=3)), True),
    (iso(NOW - VERIFY_GRACE + timedelta(seconds=1)), True),
    (iso(NOW - VERIFY_GRACE), False),
    (iso(NOW - timedelta(hours=1)), False),
    (None, True),  # the pod did not say when: counted from now
    ("2026-11-30T07:36:00", True),  # no zone: UTC, as the API server means it
])
def test_the_operator_is_patient_for_a_grace_period_after_the_builder_exits(
        finished_at: str | None, patient: bool) -> None:
    assert is_patient(finished_at, NOW) is patient


# A registry that would not confirm the builder's digest.

def test_a_digest_the_registry_does_not_serve_yet_is_asked_again_while_patient() -> None:
    assert unverified(imagebuild(), DIGEST, ImageNotFound("no such manifest"),
                      patient=True) is None


def test_a_digest_the_registry_never_served_fails_the_build() -> None:
    verdict = unverified(imagebuild(), DIGEST, ImageNotFound("no such manifest"), patient=False)
    assert verdict == Verdict(Phase.FAILED, Reason.DIGEST_UNVERIFIED,
                              f"Kaniko reported {DIGEST}, but the registry does not serve it: "
                              "no such manifest")


def test_an_unusable_manifest_fails_the_build_without_waiting() -> None:
    verdict = unverified(imagebuild(), DIGEST, InvalidManifest("digest mismatch"), patient=True)
    assert verdict is not None
    assert (verdict.phase, verdict.reason) == (Phase.FAILED, Reason.DIGEST_UNVERIFIED)
    assert verdict.message.endswith("does not serve it: digest mismatch")


def test_a_registry_down_or_busy_is_asked_again_while_patient() -> None:
    assert unverified(imagebuild(), DIGEST, RegistryUnavailable("503"), patient=True) is None


@pytest.mark.parametrize(("error", "patient"), [
    (RegistryUnavailable("registry down"), False),
    (RegistryAuthError("no access"), True),  # not temporary: waiting will not help
])
def test_a_pushed_image_the_operator_cannot_check_succeeds_without_a_size(
        error: RegistryError, patient: bool) -> None:
    verdict = unverified(imagebuild(), DIGEST, error, patient=patient)
    assert verdict == Verdict(
        Phase.SUCCEEDED, Reason.SUCCEEDED,
        f"Pushed; digest not checked at the registry ({error}).",
        {"image": f"registry.example.com/acme/web@{DIGEST}", "digest": DIGEST,
         "short_digest": "ab12ab12ab12"})


def test_a_size_budget_that_cannot_be_checked_fails_the_build() -> None:
    verdict = unverified(imagebuild(maxSize="10Mi"), DIGEST, RegistryAuthError("no access"),
                         patient=False)
    assert verdict == Verdict(Phase.FAILED, Reason.DIGEST_UNVERIFIED,
                              "The size budget could not be checked (no access); the image "
                              "was not given the output tags.")


# The size budget.

@pytest.mark.parametrize("budget", [None, 1300, 10_000])
def test_an_image_within_its_budget_or_without_one_goes_on(budget: int | None) -> None:
    assert over_budget(image(1000, 200), budget, {"largest_layers": []}) is None


def test_an_image_over_its_budget_fails_and_keeps_its_result() -> None:
    result = {"digest": DIGEST, "size": 1300,
              "largest_layers": [{"size": 1000, "digest": "sha256:" + "0" * 64,
                                  "instruction": "RUN make"}]}
    verdict = over_budget(image(1000, 200), 1024, result)
    assert verdict is not None
    assert (verdict.phase, verdict.reason, verdict.fields) == (
        Phase.FAILED, Reason.SIZE_BUDGET_EXCEEDED, result)
    assert "over its spec.output.maxSize budget of 1.0KiB (1024 bytes)" in verdict.message
    assert "Largest layers: 1000B RUN make." in verdict.message


# The output tags, given once the image is within its budget.

def test_tags_refused_for_a_moment_are_given_later_while_patient() -> None:
    assert untagged(image(10), RegistryUnavailable("503"), patient=True) is None


@pytest.mark.parametrize(("error", "patient"), [
    (RegistryUnavailable("registry down"), False),
    (RegistryAuthError("push denied"), True),
])
def test_tags_that_cannot_be_given_fail_the_build_as_a_push(
        error: RegistryError, patient: bool) -> None:
    assert untagged(image(10), error, patient=patient) == Verdict(
        Phase.FAILED, Reason.PUSH_FAILED,
        f"The image ({DIGEST}) is within its size budget but could not be given the output "
        f"tags: {error}")


def test_a_confirmed_image_is_recorded_pinned_by_its_digest() -> None:
    info = image(1000, 200)
    insight = {"size_delta": None, "cache": {"hits": 2, "misses": 1, "summary": "2/3"}}
    result = {"digest": DIGEST, "size": info.size, **insight}
    verdict = built(imagebuild(), info, insight, result)
    assert (verdict.phase, verdict.reason) == (Phase.SUCCEEDED, Reason.SUCCEEDED)
    assert verdict.message == "Pushed 2 tag(s), 1.3KiB; cache 2/3."
    assert list(verdict.fields) == ["image", "digest", "size", "size_delta", "cache"]
    assert verdict.fields["image"] == f"registry.example.com/acme/web@{DIGEST}"


# Completion itself, on paths that end before any registry serves the image.

@pytest.fixture
async def served() -> AsyncIterator[tuple[FaultyEmulator, Server, KubeApi]]:
    async with emulated_api() as served:
        yield served


@pytest.fixture
def closed_port() -> str:
    """``127.0.0.1:PORT`` where nothing listens: a registry that cannot be reached."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_push_secret_deleted_after_the_push_records_one_unchecked_success(
        served: tuple[FaultyEmulator, Server, KubeApi]) -> None:
    emu, _, api = served
    emu["get", PODS, subresource("log")] << b"INFO[0000] Pushing image\n"
    recorded: list[Verdict] = []

    async def record(verdict: Verdict) -> None:
        recorded.append(verdict)

    completion = Completion(api, RegistryClient(timeout=5), Settings())
    build = imagebuild(pushSecretRef={"name": "regcred"})
    await completion.complete(build, LOG, DIGEST, iso(datetime.now(UTC)), None, record)
    assert [(v.phase, v.reason, v.message) for v in recorded] == [(
        Phase.SUCCEEDED, Reason.SUCCEEDED,
        "Pushed; digest not checked at the registry (Secret regcred was deleted after the "
        "push; the operator cannot check the pushed image).")]


async def test_an_unreachable_registry_is_left_to_the_resync_then_recorded(
        served: tuple[FaultyEmulator, Server, KubeApi], closed_port: str) -> None:
    _, _, api = served
    recorded: list[Verdict] = []

    async def record(verdict: Verdict) -> None:
        recorded.append(verdict)

    build = imagebuild(image=f"{closed_port}/acme/web", maxSize="10Mi")
    async with RegistryClient(timeout=5) as registry:
        completion = Completion(api, registry, Settings())
        with pytest.raises(RegistryUnavailable):
            await completion.complete(build, LOG, DIGEST, iso(datetime.now(UTC)), None, record)
        assert recorded == []
        long_ago = iso(datetime.now(UTC) - VERIFY_GRACE - timedelta(minutes=1))
        await completion.complete(build, LOG, DIGEST, long_ago, None, record)
    assert [(v.phase, v.reason) for v in recorded] == [(Phase.FAILED, Reason.DIGEST_UNVERIFIED)]
    assert recorded[0].message.startswith("The size budget could not be checked (cannot "
                                          f"connect to registry {closed_port}")
