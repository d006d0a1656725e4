"""Multi-platform builds' pure decisions: the cross build's Dockerfile check and pins, the
image index's bytes, each platform's status and the build's next step, and their views."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stagewright.api.platforms import Platform
from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import CacheStatus, ImageBuild, Phase, PlatformStatus
from stagewright.build_log import BuildLog, CacheReport
from stagewright.cli.describe import describe
from stagewright.cli.tables import get_rows, platform_lines, status_rows
from stagewright.dockerfile import cross_plan, instructions, numbered_instructions, pin_bases
from stagewright.handlers.build_queue import BuildQueue
from stagewright.handlers.registration import Tracked, running_pods
from stagewright.insight import (
    cache_fields,
    largest_layers_per_platform,
    success_message,
)
from stagewright.platforms.plan import (
    Built,
    Failing,
    Observed,
    Retrying,
    Waiting,
    cross_refusal,
    decide,
    explain_cross_failure,
    launched,
    merged_checks,
    status_fields,
)
from stagewright.queueing import Limits
from stagewright.queueing import Waiting as InLine
from stagewright.registry import ImageInfo, IndexChild, Layer, PlatformImage, image_index
from stagewright.registry.errors import InvalidManifest
from stagewright.registry.index import config_platform, digest_of, match_child
from stagewright.registry.manifests import Descriptor
from stagewright.status import PodOutcome

HERE = Path(__file__).parent
AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")
NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
DEADLINE = timedelta(minutes=10)
KEY = "1"

# The Dockerfile a buildx user writes to cross-compile: the toolchain runs on the build
# platform, the runtime stage only copies. With a check stage and one RUN too many.
BUILDX = """\
# syntax=docker/dockerfile:1
ARG GO=golang:1.22
FROM --platform=$BUILDPLATFORM ${GO} AS build
ARG TARGETARCH
RUN GOARCH=$TARGETARCH go build -o /out/app .

FROM build AS test
RUN go test ./...

FROM alpine:3.20 AS runtime
COPY --from=build /out/app /app
RUN apk add --no-cache \\
    ca-certificates
ENTRYPOINT ["/app"]
"""


# The Dockerfile: what cannot run without emulation, and what to pin


def test_instructions_keep_their_first_and_last_lines() -> None:
    numbered = numbered_instructions(BUILDX)
    run = next(i for i in numbered if i.text.startswith("RUN apk"))
    assert (run.first, run.last) == (12, 13)
    assert run.text == "RUN apk add --no-cache  ca-certificates"
    assert instructions(BUILDX) == [i.text for i in numbered]


def test_a_run_in_a_target_stage_is_named_by_stage_and_line() -> None:
    plan = cross_plan(BUILDX, {}, "runtime", ["test"], build_platform=AMD64,
                      target_platform=ARM64)
    # build and test (FROM build) run on the build platform: only runtime's RUN is a problem.
    assert [(run.stage, run.line, run.base) for run in plan.runs] == [
        ("runtime", 12, "alpine:3.20")]
    assert [(pin.stage, pin.first, pin.image, pin.alias) for pin in plan.pins] == [
        ("build", 3, "golang:1.22", "build")]


def test_nothing_is_in_the_way_when_the_target_is_the_build_platform() -> None:
    plan = cross_plan(BUILDX, {}, "runtime", [], build_platform=AMD64, target_platform=AMD64)
    assert plan.runs == []
    assert plan.pins == []


@pytest.mark.parametrize(("flag", "pinned"), [
    ("--platform=$BUILDPLATFORM", True),
    ("--platform=${BUILDPLATFORM}", True),
    ("--platform=linux/amd64", True),
    ("--platform=$TARGETPLATFORM", False),
    ("--platform=linux/arm64", False),
    ("", False),
])
def test_only_a_build_platform_flag_makes_a_build_stage(flag: str, pinned: bool) -> None:
    text = f"FROM {flag} golang:1.22 AS build\nRUN make\nFROM scratch\nCOPY --from=build /a /a\n"
    plan = cross_plan(text, {}, None, build_platform=AMD64, target_platform=ARM64)
    assert bool(plan.pins) is pinned
    assert [run.line for run in plan.runs] == ([] if pinned else [2])


def test_stages_the_target_does_not_need_are_not_checked() -> None:
    text = "FROM alpine AS unused\nRUN make\nFROM alpine AS runtime\nCOPY a /a\n"
    assert cross_plan(text, {}, "runtime", build_platform=AMD64, target_platform=ARM64).runs == []
    assert [r.stage for r in cross_plan(text, {}, "unused", build_platform=AMD64,
                                        target_platform=ARM64).runs] == ["unused"]


def test_a_run_after_from_scratch_has_no_base_to_look_up() -> None:
    plan = cross_plan("FROM scratch\nRUN true\n", {}, None, build_platform=AMD64,
                      target_platform=ARM64)
    assert [(run.stage, run.line, run.base) for run in plan.runs] == [("#0", 2, None)]


def test_pinning_rewrites_only_the_from_and_keeps_line_numbers() -> None:
    text = "ARG GO=golang:1.22\nFROM --platform=$BUILDPLATFORM \\\n  ${GO} AS build\nRUN make\n"
    plan = cross_plan(text, {}, None, build_platform=AMD64, target_platform=ARM64)
    (pin,) = plan.pins
    image = "index.docker.io/library/golang@sha256:" + "b" * 64
    rewritten = pin_bases(text, {pin: image})
    assert rewritten == f"ARG GO=golang:1.22\nFROM {image} AS build\n\nRUN make\n"
    assert len(rewritten.splitlines()) == len(text.splitlines())


def test_a_cross_refusal_names_platform_stage_line_and_the_way_out() -> None:
    plan = cross_plan(BUILDX, {}, "runtime", build_platform=AMD64, target_platform=ARM64)
    message = cross_refusal([("linux/arm64", run) for run in plan.runs], "linux/amd64")
    assert ("stage runtime, line 12, for linux/arm64: RUN apk add --no-cache  "
            "ca-certificates") in message
    assert "FROM --platform=$BUILDPLATFORM" in message
    assert "platformMode native" in message


def test_exec_format_error_is_explained_and_other_failures_are_not() -> None:
    log = "Kaniko exited with code 1 at step RUN make: exec /bin/sh: exec format error"
    explained = explain_cross_failure(log, "linux/arm64", "linux/amd64")
    assert explained.startswith("A RUN step ran in a stage built for linux/arm64 on a "
                                "linux/amd64 node (exec format error)")
    assert explained.endswith(log)
    assert explain_cross_failure("no space left", "linux/arm64", "linux/amd64") == \
        "no space left"


# The image index


def test_the_index_is_deterministic_oci_json_naming_each_child() -> None:
    children = [IndexChild(AMD64, "sha256:" + "1" * 64, "application/vnd.oci.image.manifest"
                           ".v1+json", 503),
                IndexChild(Platform.parse("linux/arm/v7"), "sha256:" + "2" * 64,
                           "application/vnd.docker.distribution.manifest.v2+json", 428)]
    body = image_index(children)
    golden = HERE / "golden" / "platforms" / "index.json"
    if os.environ.get("STAGEWRIGHT_UPDATE_GOLDEN") == "1":
        golden.write_bytes(body)
    assert body == golden.read_bytes()
    document = json.loads(body)
    assert document["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert document["manifests"][1]["platform"] == {"architecture": "arm", "os": "linux",
                                                    "variant": "v7"}
    assert digest_of(body) == digest_of(image_index(children))


def test_an_images_platform_is_what_its_config_says() -> None:
    assert config_platform({"os": "linux", "architecture": "arm64"}, "x") == ARM64
    assert config_platform({"os": "linux", "architecture": "arm", "variant": "v7"}, "x") == \
        Platform("linux", "arm", "v7")
    with pytest.raises(InvalidManifest, match="names no os and architecture"):
        config_platform({"architecture": "amd64"}, "registry/app@sha256:…")


def test_an_index_entry_is_matched_as_a_builder_picks_it() -> None:
    children = [Descriptor.model_validate({"digest": f"sha256:{i}", "size": 1, "platform": p})
                for i, p in enumerate([{"os": "linux", "architecture": "amd64"},
                                       {"os": "linux", "architecture": "arm64",
                                        "variant": "v8"}])]
    found = match_child(children, ARM64)
    assert found is not None
    assert found.digest == "sha256:1"
    assert match_child(children, Platform.parse("linux/s390x")) is None


# Each platform's status and the build's next step


def multi_build(*, retries: int = 1, mode: str = "native",
                platforms: list[dict[str, Any]] | None = None, **status: Any) -> ImageBuild:
    return ImageBuild.model_validate({
        "metadata": {"name": "web", "namespace": "team-a", "uid": "u", "generation": 1},
        "spec": {"source": {"configMap": {"name": "ctx"}},
                 "output": {"image": "registry.example.com/acme/web"},
                 "platforms": ["linux/amd64", "linux/arm64"], "platformMode": mode,
                 "retries": retries, "checks": ["test"]},
        "status": {"phase": "Building", "reason": "Building", "observedGeneration": 1,
                   "message": "Building target (last stage) for linux/amd64, linux/arm64.",
                   "platforms": platforms, **status},
    })


def pod(name: str, *, phase: str = "Running", created: datetime = NOW,
        node: str | None = "node-1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created.strftime(
        "%Y-%m-%dT%H:%M:%SZ"), "annotations": {"stagewright.dev/checks": "test"}},
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, **status}}


def observed(build: ImageBuild, *outcomes: tuple[PodOutcome, dict[str, Any] | None]
             ) -> list[Observed]:
    entries = build.status.platforms or launched(build, KEY)
    return [Observed(entry, seen_pod, outcome)
            for entry, (outcome, seen_pod) in zip(entries, outcomes, strict=True)]


RUNNING = PodOutcome(finished=False)
DIGESTS = {"linux/amd64": "sha256:" + "a" * 64, "linux/arm64": "sha256:" + "b" * 64}


def test_launched_platforms_name_their_pods_and_attempts() -> None:
    entries = launched(multi_build(), KEY)
    assert [(e.platform, e.pod, e.attempt, e.phase) for e in entries] == [
        ("linux/amd64", "web-1-linux-amd64-1", 1, Phase.BUILDING),
        ("linux/arm64", "web-1-linux-arm64-1", 1, Phase.BUILDING)]
    fields = status_fields(entries)
    assert fields["platform_summary"] == "0/2"
    assert fields["pod_name"] == "web-1-linux-amd64-1"
    assert fields["platforms"][0] == {"platform": "linux/amd64", "phase": "Building",
                                      "reason": "Building", "pod": "web-1-linux-amd64-1",
                                      "attempt": 1}


def test_building_platforms_write_nothing_new() -> None:
    build = multi_build(platforms=[e.model_dump(mode="json", by_alias=True, exclude_none=True)
                                   for e in launched(multi_build(), KEY)])
    step = decide(build, KEY, observed(build, (RUNNING, pod("a")), (RUNNING, pod("b"))),
                  now=NOW, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(step, Waiting)
    assert not step.changed


def test_an_unschedulable_platform_is_pending_with_the_schedulers_words() -> None:
    build = multi_build()
    words = "The scheduler cannot place the build pod: 0/1 nodes are available: 1 node(s) " \
            "didn't match node selector."
    waiting = PodOutcome(finished=False, waiting=words, waiting_reason=Reason.UNSCHEDULABLE)
    step = decide(build, KEY, observed(build, (RUNNING, pod("a")),
                                       (waiting, pod("b", phase="Pending", node=None))),
                  now=NOW + timedelta(minutes=1), deadline=DEADLINE,
                  build_platform="linux/amd64")
    assert isinstance(step, Waiting)
    assert (step.phase, step.reason) == (Phase.PENDING, Reason.UNSCHEDULABLE)
    assert step.message == f"Platform linux/arm64: {words}"
    assert step.changed
    assert step.platforms[1].phase is Phase.PENDING


def test_an_unscheduled_pod_times_out_at_the_deadline_and_a_started_one_gets_grace() -> None:
    build = multi_build()
    waiting = PodOutcome(finished=False, waiting="The scheduler cannot place the build pod: x",
                         waiting_reason=Reason.UNSCHEDULABLE)
    late = NOW + DEADLINE + timedelta(seconds=1)
    step = decide(build, KEY, observed(build, (RUNNING, pod("a")),
                                       (waiting, pod("b", phase="Pending", node=None))),
                  now=late, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(step, Failing)
    assert step.reason is Reason.TIMEOUT
    assert step.message.startswith("Platform linux/arm64: The build did not finish within "
                                   "0:10:00 (pod b never completed: The scheduler cannot")
    assert step.stop == ["a", "b"]
    assert [e.reason for e in step.platforms] == ["Cancelled", "Timeout"]
    scheduled = decide(build, KEY, observed(build, (RUNNING, pod("a")), (RUNNING, pod("b"))),
                       now=late, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(scheduled, Waiting)  # the kubelet enforces its deadline once started


def test_one_platform_failing_stops_the_others_and_names_itself() -> None:
    build = multi_build(mode="cross")
    failed = PodOutcome(finished=True, reason=Reason.BUILD_FAILED,
                        message="Kaniko exited with code 1 at step RUN make: exec /bin/sh: "
                        "exec format error\nLog tail:\n…")
    step = decide(build, KEY, observed(build, (RUNNING, pod("a")),
                                       (failed, pod("b", phase="Failed"))),
                  now=NOW, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(step, Failing)
    assert step.reason is Reason.BUILD_FAILED
    assert step.message.startswith("Platform linux/arm64: A RUN step ran in a stage built for "
                                   "linux/arm64 on a linux/amd64 node")
    assert step.message.endswith("No output tag was moved.")
    assert step.stop == ["a"]
    assert [(e.phase, e.reason) for e in step.platforms] == [
        (Phase.FAILED, "Cancelled"), (Phase.FAILED, "BuildFailed")]
    assert step.platforms[1].message == ("Kaniko exited with code 1 at step RUN make: exec "
                                         "/bin/sh: exec format error")
    assert step.checks == [{"stage": "test", "result": "NotRun"}]


def test_an_evicted_platform_is_retried_alone_then_fails_the_build() -> None:
    build = multi_build(retries=1)
    evicted = PodOutcome(finished=True, reason=Reason.EVICTED, message="The pod was evicted.")
    step = decide(build, KEY, observed(build, (RUNNING, pod("a")),
                                       (evicted, pod("b", phase="Failed"))),
                  now=NOW, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(step, Retrying)
    assert [(e.platform, e.attempt, e.pod) for e in step.retry] == [
        ("linux/arm64", 2, "web-1-linux-arm64-2")]
    assert step.message == ("linux/arm64: attempt 1 failed (Evicted: The pod was evicted.). "
                            "Retrying.")
    again = multi_build(retries=1, platforms=[
        e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in step.platforms])
    final = decide(again, KEY, observed(again, (RUNNING, pod("a")),
                                        (evicted, pod("web-1-linux-arm64-2", phase="Failed"))),
                   now=NOW, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(final, Failing)
    assert final.reason is Reason.EVICTED


def test_every_platform_built_means_assemble_the_index() -> None:
    build = multi_build(platforms=[
        {"platform": "linux/amd64", "phase": "Succeeded", "reason": "Succeeded",
         "pod": "a", "attempt": 1, "digest": DIGESTS["linux/amd64"]},
        {"platform": "linux/arm64", "phase": "Building", "reason": "Building", "pod": "b",
         "attempt": 1}])
    done = PodOutcome(finished=True, succeeded=True, digest=DIGESTS["linux/arm64"],
                      finished_at="2026-12-07T12:00:09Z")
    before = PodOutcome(finished=True, succeeded=True, digest=DIGESTS["linux/amd64"],
                        finished_at="2026-12-07T12:00:05Z")
    check = {"terminated": {"exitCode": 0, "startedAt": "2026-12-07T12:00:00Z",
                            "finishedAt": "2026-12-07T12:00:04Z"}}
    passed: dict[str, Any] = {
        "initContainerStatuses": [{"name": "check-1", "state": check}],
        "containerStatuses": [{"name": "kaniko", "imageID": "docker-pullable://k@sha256:1"}]}
    step = decide(build, KEY, observed(build, (before, pod("a", phase="Succeeded", **passed)),
                                       (done, pod("b", phase="Succeeded", **passed))),
                  now=NOW, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(step, Built)
    assert [e.digest for e in step.platforms] == list(DIGESTS.values())
    assert step.finished_at == "2026-12-07T12:00:09Z"
    assert step.checks == [{"stage": "test", "result": "Passed", "durationSeconds": 4}]
    assert step.builder_image == "k@sha256:1"


def test_the_first_platform_done_is_written_once() -> None:
    build = multi_build(platforms=[e.model_dump(mode="json", by_alias=True, exclude_none=True)
                                   for e in launched(multi_build(), KEY)])
    done = PodOutcome(finished=True, succeeded=True, digest=DIGESTS["linux/amd64"])
    step = decide(build, KEY, observed(build, (done, pod("a", phase="Succeeded")),
                                       (RUNNING, pod("b"))),
                  now=NOW, deadline=DEADLINE, build_platform="linux/amd64")
    assert isinstance(step, Waiting)
    assert step.changed
    assert step.message == "Building linux/arm64; 1/2 platforms built."
    assert status_fields(step.platforms)["platform_summary"] == "1/2"


def test_checks_merge_over_platforms() -> None:
    assert merged_checks([[{"stage": "t", "result": "Passed", "durationSeconds": 3}],
                          [{"stage": "t", "result": "Failed", "durationSeconds": 5}]]) == [
        {"stage": "t", "result": "Failed", "durationSeconds": 5}]
    assert merged_checks([]) is None


# Insight and the views


def index_info() -> ImageInfo:
    def image(platform: Platform, digest: str, sizes: list[int]) -> PlatformImage:
        layers = tuple(Layer(digest=f"sha256:{platform.architecture}{i}", size=size,
                             instruction=f"step {i}") for i, size in enumerate(sizes))
        return PlatformImage(os=platform.os, architecture=platform.architecture, digest=digest,
                             media_type="application/vnd.oci.image.manifest.v1+json",
                             size=sum(sizes) + 100, layers=len(sizes), layer_details=layers)

    platforms = (image(AMD64, DIGESTS["linux/amd64"], [300, 200, 100]),
                 image(ARM64, DIGESTS["linux/arm64"], [400, 10]))
    return ImageInfo(digest="sha256:" + "c" * 64,
                     media_type="application/vnd.oci.image.index.v1+json",
                     size=sum(p.size for p in platforms), layers=5, platforms=platforms)


def test_largest_layers_are_listed_per_platform_within_the_fields_limit() -> None:
    entries = largest_layers_per_platform(index_info(), 2)
    assert [(e["platform"], e["size"]) for e in entries] == [
        ("linux/amd64", 300), ("linux/amd64", 200), ("linux/arm64", 400), ("linux/arm64", 10)]
    assert len(largest_layers_per_platform(index_info(), 16)) == 5  # 8 each at most


def test_the_cache_report_sums_the_platforms_and_the_message_lists_them() -> None:
    logs = [BuildLog(cache=CacheReport(hits=2, misses=1), base_image=None), None,
            BuildLog(cache=CacheReport(hits=1, misses=0), base_image=None)]
    assert cache_fields(logs) == {"hits": 3, "misses": 1, "summary": "3/4"}
    assert cache_fields([None]) is None
    assert success_message(2, index_info(), {}) == (
        "Pushed 2 tag(s): an image index of linux/amd64 (700B), linux/arm64 (510B), 1.2KiB.")


def test_get_describe_and_the_table_show_each_platform() -> None:
    entries = [PlatformStatus(platform="linux/amd64", phase=Phase.SUCCEEDED, reason="Succeeded",
                              pod="web-1-linux-amd64-1", digest=DIGESTS["linux/amd64"],
                              size=1048576,
                              cache=CacheStatus(hits=2, misses=0, summary="2/2")),
               PlatformStatus(platform="linux/arm64", phase=Phase.FAILED, reason="BuildFailed",
                              message="Kaniko exited with code 1", pod="web-1-linux-arm64-1")]
    build = multi_build(**status_fields(entries)).model_dump(mode="json", by_alias=True,
                                                               exclude_none=True)
    build["metadata"]["creationTimestamp"] = "2026-12-07T11:55:00Z"
    lines = platform_lines(build["status"])
    assert lines == [
        "linux/amd64  Succeeded  1.0MiB  sha256:aaaaaaaaaaaa  cache 2/2  pod web-1-linux-amd64-1",
        "linux/arm64  Failed (BuildFailed)  pod web-1-linux-arm64-1: Kaniko exited with code 1"]
    rows = status_rows(build)
    assert ("Platforms", lines[0]) in rows
    assert ("", lines[1]) in rows
    assert get_rows([build], all_namespaces=False, now=NOW)[0][4] == "1/2 amd64,arm64"
    text = describe(build, [], [], NOW)
    assert "Platforms:\n  linux/amd64  Succeeded" in text


# The build queue: one ImageBuild's pods are one build


def test_the_queue_admits_all_of_a_builds_pods_together() -> None:
    tracked = Tracked()
    woken: list[tuple[str, str]] = []
    queue = BuildQueue(Limits(total=1), tracked.running_builds,
                       wake=lambda ns, name: woken.append((ns, name)))
    assert queue.request(InLine("2026-12-07T12:00:00Z", "team-a", "multi")) is None
    for slug in ("linux-amd64", "linux-arm64"):
        tracked.note_pod("team-a", f"multi-1-{slug}-1", running_pods(
            "team-a", f"multi-1-{slug}-1", meta={"ownerReferences": [{
                "kind": "ImageBuild", "apiVersion": "stagewright.dev/v1alpha1",
                "name": "multi"}]}, status={"phase": "Running"}))
    assert tracked.running_builds() == [("team-a", "multi")]  # two pods, one build
    assert queue.request(InLine("2026-12-07T12:00:01Z", "team-a", "next")) == 1
    # The first platform's pod ends: its build still runs, the next waits on.
    tracked.note_pod("team-a", "multi-1-linux-amd64-1", {})
    queue.release("team-a", "multi")
    assert woken == []
    tracked.note_pod("team-a", "multi-1-linux-arm64-1", {})
    queue.release("team-a", "multi")
    assert woken == [("team-a", "next")]
