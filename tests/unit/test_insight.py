"""Build insight, pure parts: Kaniko's log, layer history, largest layers, base bytes, history."""

from __future__ import annotations

from pathlib import Path

import pytest

from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import (
    BuildRecord,
    ImageBuildSpec,
    ImageBuildStatus,
    Output,
    Phase,
    parse_quantity,
)
from stagewright.build_log import parse_build_log
from stagewright.insight import base_size, build_insight, largest_layer_fields
from stagewright.registry import ImageInfo, Layer, PlatformImage, base_bytes, clean_instruction
from stagewright.registry.layers import layer_instructions, pair_layers
from stagewright.status import (
    HISTORY_LIMIT,
    check_results,
    classify_pod,
    history_with,
    signed_size,
    size_delta,
)

#: Kaniko v1.28 log lines of a two-stage build whose target's first RUN was cached, the second
#: missed, and a third ran after the miss (Kaniko checks no further once a stage misses).
COLD_THEN_WARM = """\
\x1b[36mINFO\x1b[0m[0000] Retrieving image manifest 127.0.0.1:5000/base:latest
INFO[0000] Built cross stage deps: map[0:[/out]]
INFO[0000] Building stage '127.0.0.1:5000/base:latest' [idx: '0', base-idx: '-1']
INFO[0000] Checking for cached layer 127.0.0.1:5000/app/cache:aaa...
INFO[0000] Using caching version of cmd: RUN make deps
INFO[0000] Checking for cached layer 127.0.0.1:5000/app/cache:bbb...
INFO[0000] Using caching version of cmd: RUN make build
INFO[0000] Unpacking rootfs as cmd RUN make deps requires it.
INFO[0001] RUN make deps
INFO[0001] Found cached layer, extracting to filesystem
INFO[0001] RUN make build
INFO[0001] Found cached layer, extracting to filesystem
INFO[0001] Building stage 'build' [idx: '1', base-idx: '0']
INFO[0001] Checking for cached layer 127.0.0.1:5000/app/cache:ccc...
INFO[0001] Using caching version of cmd: RUN adduser -D app
INFO[0001] Checking for cached layer 127.0.0.1:5000/app/cache:ddd...
INFO[0001] No cached layer found for cmd RUN echo $VERSION > /version
INFO[0001] RUN adduser -D app
INFO[0001] Found cached layer, extracting to filesystem
INFO[0002] COPY --from=0 /out /app
INFO[0002] RUN echo $VERSION > /version
INFO[0002] RUN chmod -R a+r /app
INFO[0003] Pushing image to 127.0.0.1:5000/app:latest
"""


def test_cache_report_counts_hits_and_every_step_that_ran() -> None:
    facts = parse_build_log(COLD_THEN_WARM.splitlines())
    assert (facts.cache.hits, facts.cache.misses) == (3, 2)
    assert facts.cache.summary == "3/5"


def test_a_rebuild_with_everything_cached_is_all_hits() -> None:
    lines = [line for line in COLD_THEN_WARM.splitlines()
             if "No cached layer" not in line and "echo" not in line and "chmod" not in line]
    assert parse_build_log(lines).cache.summary == "3/3"


def test_the_base_image_follows_the_target_back_to_an_external_image() -> None:
    facts = parse_build_log(COLD_THEN_WARM.splitlines())
    assert facts.base_image == "127.0.0.1:5000/base:latest"
    scratch = parse_build_log(["INFO[0000] Building stage 'scratch' [idx: '0', base-idx: '-1']"])
    assert scratch.base_image == "scratch"
    assert parse_build_log(["error building image"]).base_image is None


def test_json_log_format_is_read_too() -> None:
    lines = ['time="2026-11-30T02:00:00Z" level=info msg="Using caching version of cmd: RUN make"',
             'time="2026-11-30T02:00:00Z" level=info msg="RUN make"',
             'level=info msg="RUN make test"']
    assert parse_build_log(lines).cache.summary == "1/2"


@pytest.mark.parametrize(("created_by", "instruction"), [
    ("/bin/sh -c #(nop) COPY dir:abc in /app ", "COPY dir:abc in /app"),
    ("/bin/sh -c #(nop)  CMD [\"sh\"]", 'CMD ["sh"]'),
    ("/bin/sh -c apk add --no-cache curl", "RUN apk add --no-cache curl"),
    ("RUN /bin/sh -c make # buildkit", "RUN /bin/sh -c make"),
    ("RUN make", "RUN make"),
])
def test_instructions_are_cleaned_of_shell_noise(created_by: str, instruction: str) -> None:
    assert clean_instruction(created_by) == instruction


def test_long_instructions_are_cut() -> None:
    assert len(clean_instruction("RUN " + "x" * 1000)) == 200


CONFIG = {"history": [
    {"created_by": "/bin/sh -c #(nop) ADD file:base in / "},
    {"created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": True},
    {"created_by": "RUN make", "author": "kaniko"},
    {"created_by": "ENV A=b", "empty_layer": True},
    {"created_by": "COPY /out /app", "author": "kaniko"},
]}
LAYERS = [("sha256:base", 3000), ("sha256:make", 9000), ("sha256:copy", 500)]


def test_history_entries_that_made_layers_pair_with_the_layers_in_order() -> None:
    assert [layer.instruction for layer in pair_layers(CONFIG, LAYERS)] == [
        "ADD file:base in /", "RUN make", "COPY /out /app",
    ]


def test_missing_history_pairs_from_the_end() -> None:
    short = {"history": CONFIG["history"][2:]}
    assert layer_instructions(short, 3) == [None, "RUN make", "COPY /out /app"]
    assert layer_instructions({}, 2) == [None, None]
    assert layer_instructions(CONFIG, 2) == ["RUN make", "COPY /out /app"]


def test_base_bytes_are_the_leading_layers_shared_with_the_base() -> None:
    layers = pair_layers(CONFIG, LAYERS)
    assert base_bytes(layers, ["sha256:base"]) == 3000
    assert base_bytes(layers, ["sha256:other"]) == 0
    assert base_bytes(layers, ["sha256:base", "sha256:not-ours"]) == 3000


def _image(layers: list[tuple[str, int]]) -> ImageInfo:
    details = pair_layers(CONFIG, layers)
    return ImageInfo(digest="sha256:img", media_type="m", size=sum(s for _, s in layers) + 100,
                     layers=len(layers), layer_details=details)


def test_largest_layers_come_largest_first_with_their_instruction() -> None:
    assert largest_layer_fields(_image(LAYERS), 2) == [
        {"size": 9000, "digest": "sha256:make", "instruction": "RUN make"},
        {"size": 3000, "digest": "sha256:base", "instruction": "ADD file:base in /"},
    ]


def test_an_index_lists_layers_of_every_platform_with_the_platform() -> None:
    def platform(arch: str, sizes: list[int]) -> PlatformImage:
        return PlatformImage(os="linux", architecture=arch, digest=f"sha256:{arch}",
                             media_type="m", size=sum(sizes), layers=len(sizes),
                             layer_details=tuple(Layer(digest=f"sha256:{arch}{i}", size=s)
                                                 for i, s in enumerate(sizes)))
    index = ImageInfo(digest="sha256:i", media_type="m", size=0, layers=0, platforms=(
        platform("amd64", [10, 50]), platform("arm64", [40])))
    assert [(e["size"], e["platform"]) for e in largest_layer_fields(index, 2)] == [
        (50, "linux/amd64"), (40, "linux/arm64")]
    assert base_size(index, "base", [["sha256:amd640"], ["sha256:arm640"]]) == 50


def test_base_size_is_zero_from_scratch_and_unknown_without_the_base() -> None:
    image = _image(LAYERS)
    assert base_size(image, "scratch", []) == 0
    assert base_size(image, None, []) is None
    assert base_size(image, "base", [["sha256:base"]]) == 3000


def _record(size: int | None, phase: Phase = Phase.SUCCEEDED, generation: int = 1) -> BuildRecord:
    return BuildRecord(generation=generation, phase=phase, reason=phase.value, size=size)


def test_history_is_newest_first_and_bounded() -> None:
    status = ImageBuildStatus()
    for generation in range(1, 9):
        history = history_with(status, _record(generation * 10, generation=generation))
        status = ImageBuildStatus.model_validate({"history": history})
    assert [r.generation for r in status.history or []] == [8, 7, 6, 5, 4][:HISTORY_LIMIT]


def test_size_delta_is_against_the_last_successful_build() -> None:
    status = ImageBuildStatus.model_validate({"history": history_with(
        ImageBuildStatus(history=[_record(1000)]), _record(None, Phase.FAILED, 2))})
    assert size_delta(status, 1500) == 500
    assert size_delta(ImageBuildStatus(), 1500) is None
    assert (signed_size(500), signed_size(-2048), signed_size(0)) == ("+500B", "-2.0KiB", "±0B")


def test_build_insight_fills_the_status_fields() -> None:
    facts = parse_build_log(COLD_THEN_WARM.splitlines())
    previous = ImageBuildStatus(history=[_record(10000)])
    fields = build_insight(previous, _image(LAYERS), facts, [["sha256:base"]], largest=1,
                           cache_enabled=True)
    assert fields == {
        "largest_layers": [{"size": 9000, "digest": "sha256:make", "instruction": "RUN make"}],
        "size_delta": 12600 - 10000,
        "base_image": "127.0.0.1:5000/base:latest",
        "base_size": 3000,
        "cache": {"hits": 3, "misses": 2, "summary": "3/5"},
    }
    without_cache = build_insight(previous, _image(LAYERS), facts, [], largest=1,
                                  cache_enabled=False)
    assert without_cache["cache"] is None
    assert without_cache["base_size"] is None


@pytest.mark.parametrize(("quantity", "size"), [
    ("200Mi", 200 * 2**20), ("1G", 10**9), (1024, 1024), ("1.5Ki", 1536), ("5e3", 5000),
])
def test_quantities_are_bytes(quantity: str | int, size: int) -> None:
    assert parse_quantity(quantity) == size


def test_an_invalid_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="quantity"):
        Output(image="r/app", max_size="200MB")
    assert Output(image="r/app", max_size="1Gi").max_size_bytes == 2**30


def _checked_pod(phase: str, checks: dict[str, dict[str, object]]) -> dict[str, object]:
    """A build pod with check stages test and lint, and the init container states given."""
    return {
        "metadata": {"annotations": {"stagewright.dev/checks": "test,lint"}},
        "status": {"phase": phase,
                   "initContainerStatuses": [{"name": name, "state": state}
                                             for name, state in checks.items()],
                   "containerStatuses": [{"name": "kaniko", "state": {
                       "waiting": {"reason": "PodInitializing"}}}]},
    }


def test_a_failing_check_names_its_stage_and_log_tail() -> None:
    pod = _checked_pod("Failed", {
        "check-1": {"terminated": {"exitCode": 0, "startedAt": "2026-11-30T01:00:00Z",
                                   "finishedAt": "2026-11-30T01:00:42Z"}},
        "check-2": {"terminated": {
            "exitCode": 1, "startedAt": "2026-11-30T01:00:42Z",
            "finishedAt": "2026-11-30T01:00:50Z",
            "message": "INFO[0003] RUN golangci-lint run\nmain.go:3: unused variable x\n"
                       "error building image: error building stage: exit status 1"}}})
    outcome = classify_pod(pod)
    assert outcome.reason is Reason.CHECK_FAILED
    first = outcome.message.splitlines()[0]
    assert first.startswith("Check stage lint failed (exit code 1)")
    assert "nothing was pushed" in first
    assert "unused variable x" in outcome.message
    assert check_results(pod) == [
        {"stage": "test", "result": "Passed", "durationSeconds": 42},
        {"stage": "lint", "result": "Failed", "durationSeconds": 8},
    ]


def test_checks_not_reached_are_not_run_and_a_timeout_stays_a_timeout() -> None:
    pod = _checked_pod("Failed", {"check-1": {"running": {}}})
    pod["status"]["reason"] = "DeadlineExceeded"  # type: ignore[index]
    assert classify_pod(pod).reason is Reason.TIMEOUT
    assert [c["result"] for c in check_results(pod)] == ["NotRun", "NotRun"]


def test_checks_must_be_unique_stage_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        ImageBuildSpec.model_validate({"source": {"url": "s3://b/c.tgz"},
                                       "output": {"image": "r/app"}, "checks": ["t", "t"]})


KANIKO_LOGS = Path(__file__).parent / "fixtures" / "kaniko-logs"


@pytest.mark.parametrize(("log", "summary"), [
    ("check.log", "0/3"), ("cold.log", "2/3"), ("warm.log", "3/3"),
])
def test_real_kaniko_logs_give_the_cache_report(log: str, summary: str) -> None:
    """Real v1.28.3 output: a check fills the cache the target then hits, a rebuild is all hits."""
    facts = parse_build_log((KANIKO_LOGS / log).read_text().splitlines())
    assert facts.cache.summary == summary
    assert facts.base_image is not None
    assert facts.base_image.endswith("/stagewright-sandbox/busybox:latest")


def test_real_kaniko_history_pairs_one_entry_per_layer() -> None:
    """v1.28.3 with the cache on writes a history entry and a (possibly empty) layer for
    every instruction, metadata ones included, and no empty_layer flags."""
    config = {"history": [
        {"created_by": "/bin/sh"},
        {"author": "kaniko", "created_by": "COPY --from=build /out/app /usr/local/bin/app"},
        {"author": "kaniko", "created_by": "RUN echo built > /built"},
        {"author": "kaniko", "created_by": "USER 65532"},
        {"author": "kaniko", "created_by": 'ENTRYPOINT ["/usr/local/bin/app"]'},
    ]}
    layers = [("sha256:base", 1084809), ("sha256:copy", 442), ("sha256:run", 187),
              ("sha256:empty", 39), ("sha256:empty", 39)]
    assert [layer.instruction for layer in pair_layers(config, layers)] == [
        "/bin/sh", "COPY --from=build /out/app /usr/local/bin/app", "RUN echo built > /built",
        "USER 65532", 'ENTRYPOINT ["/usr/local/bin/app"]']


def test_timestamped_log_lines_are_read_too() -> None:
    lines = ["INFO[2026-11-30T02:00:00Z] Using caching version of cmd: RUN make",
             "INFO[2026-11-30T02:00:01Z] RUN make"]
    assert parse_build_log(lines).cache.summary == "1/1"


def test_the_demo_table_shows_cache_checks_and_the_largest_layer() -> None:
    from sandbox.demo import table  # noqa: PLC0415 - test and demo infrastructure

    status = {"phase": "Succeeded", "sizeHuman": "1.0MiB", "layers": 4,
              "cache": {"summary": "2/2"}, "checks": [{"stage": "test", "result": "Passed"}],
              "largestLayers": [{"size": 1084809, "digest": "sha256:1a5c",
                                 "instruction": "/bin/sh"}],
              "digest": "sha256:" + "ab" * 32}
    lines = table([("demo-runtime", {"spec": {"target": "runtime"}, "status": status})])
    header, row = lines.splitlines()
    assert header.split()[:8] == ["IMAGEBUILD", "TARGET", "PHASE", "SIZE", "LAYERS", "CACHE",
                                  "CHECKS", "LARGEST"]
    assert "2/2" in row
    assert "test:Passed" in row
    assert "1.0MiB /bin/sh" in row
