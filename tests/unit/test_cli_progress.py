"""Kaniko's log lines read into progress: stage, step i of n, cache hits, push."""

from __future__ import annotations

from pathlib import Path

from stagewright.build_log import parse_build_log
from stagewright.cli.progress import ProgressParser, Stage, dockerfile_stages

#: A real log: Kaniko v1.28.3 on the sandbox's node, through `stagewright build --follow`.
REAL_LOG = Path(__file__).parent / "fixtures" / "kaniko-v1.28.3-two-stages.log"
REAL_DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS build
RUN echo "compiling the app" && mkdir -p /out && echo app > /out/app
COPY app.sh /src/app.sh
FROM ${BASE} AS runtime
COPY --from=build /out/app /app
"""

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS build
RUN mkdir -p /out \\
 && echo built > /out/app
COPY app.sh /src/app.sh
# a comment between instructions
RUN cp /src/app.sh /out/app

FROM build AS test
RUN /out/app --self-test

FROM --platform=linux/amd64 ${BASE} AS runtime
COPY --from=build /out/app /usr/local/bin/app
USER 65532
ENTRYPOINT ["/usr/local/bin/app"]
"""

#: The shape of Kaniko v1.28's log for the runtime target (colour codes as a TTY-less pod
#: still gets them when logrus is forced to colour).
KANIKO_LOG = """\
INFO[0000] Resolved base name ${BASE} to build
INFO[0000] Retrieving image manifest 10.244.0.1:5000/base:latest
INFO[0000] Built cross stage deps: map[0:[/out/app]]
INFO[0000] Executing 0 build triggers
INFO[0000] Building stage '10.244.0.1:5000/base:latest' [idx: '0', base-idx: '-1']
INFO[0000] Checking for cached layer 10.244.0.1:5000/demo/cache:1f2e...
INFO[0000] Using caching version of cmd: RUN mkdir -p /out  && echo built > /out/app
INFO[0000] Checking for cached layer 10.244.0.1:5000/demo/cache:9a8b...
INFO[0000] No cached layer found for cmd RUN cp /src/app.sh /out/app
INFO[0000] Unpacking rootfs as cmd COPY app.sh /src/app.sh requires it.
INFO[0001] RUN mkdir -p /out  && echo built > /out/app
INFO[0001] Found cached layer, extracting to filesystem
\x1b[36mINFO\x1b[0m[0001] COPY app.sh /src/app.sh
INFO[0001] Taking snapshot of files...
INFO[0001] RUN cp /src/app.sh /out/app
INFO[0001] Cmd: /bin/sh
INFO[0002] Pushing layer 10.244.0.1:5000/demo/cache:9a8b to cache now
INFO[0002] Pushing image to 10.244.0.1:5000/demo/cache:9a8b
INFO[0002] Pushed 10.244.0.1:5000/demo/cache@sha256:4567
INFO[0002] Saving file out/app for later use
INFO[0002] Building stage '10.244.0.1:5000/base:latest' [idx: '2', base-idx: '-1']
INFO[0002] COPY --from=build /out/app /usr/local/bin/app
INFO[0002] USER 65532
INFO[0003] Pushing image to 10.244.0.1:5000/demo/app:latest
INFO[0003] Pushed 10.244.0.1:5000/demo/app@sha256:0123
"""


def feed(parser: ProgressParser, log: str) -> list[str]:
    """Each progress summary the log produced, in order."""
    return [parser.progress.summary() for line in log.splitlines() if parser.feed(line)]


def test_dockerfile_stages_count_the_steps_kaniko_logs() -> None:
    assert dockerfile_stages(DOCKERFILE) == [
        Stage("${BASE}", "build", 3),
        Stage("build", "test", 1),
        Stage("${BASE}", "runtime", 3),
    ]


def test_progress_follows_stages_steps_and_cache_hits() -> None:
    parser = ProgressParser(dockerfile_stages(DOCKERFILE))
    summaries = feed(parser, KANIKO_LOG)
    assert summaries[0] == "stage build"
    assert "stage build · cache 1 hit, 0 misses" in summaries
    assert "stage build · step 1/3 RUN mkdir -p /out  && echo built > /out/app · cache 1 hit, " \
           "1 miss" in summaries
    assert "stage build · step 3/3 RUN cp /src/app.sh /out/app · cache 1 hit, 1 miss" in summaries
    assert "stage runtime · step 2/3 USER 65532 · cache 1 hit, 1 miss" in summaries
    progress = parser.progress
    assert (progress.stage, progress.step, progress.steps) == ("runtime", 2, 3)
    assert progress.pushing == "10.244.0.1:5000/demo/app:latest"
    assert progress.pushed == ["10.244.0.1:5000/demo/app@sha256:0123"]
    assert summaries[-1].endswith("pushed 1")


def test_progress_without_the_dockerfile_counts_steps_and_names_the_base() -> None:
    parser = ProgressParser()
    feed(parser, KANIKO_LOG)
    assert parser.progress.stage == "10.244.0.1:5000/base:latest"
    assert (parser.progress.step, parser.progress.steps) == (2, None)
    assert "step 2 USER 65532" in parser.progress.summary()


def test_lines_that_say_nothing_new_change_nothing() -> None:
    parser = ProgressParser()
    for line in ["", "plain text from a RUN step", "INFO[0001] Taking snapshot of files...",
                 "INFO[0001] Cmd: /bin/sh", "RUN looks like an instruction but is no log line"]:
        assert parser.feed(line) is False
    assert parser.progress.summary() == "starting"


def test_errors_are_kept_in_both_log_formats() -> None:
    parser = ProgressParser()
    assert parser.feed("ERRO[0004] Error: error building image: exit status 3")
    assert parser.progress.error == "Error: error building image: exit status 3"
    assert parser.feed('time="2026-11-30T01:00:00Z" level=fatal msg="push failed"')
    assert parser.progress.error == "push failed"
    assert parser.feed('time="2026-11-30T01:00:00Z" level=info msg="RUN make test"')
    assert parser.progress.instruction == "RUN make test"


def test_a_stage_kaniko_names_differently_from_the_dockerfile_is_not_guessed() -> None:
    parser = ProgressParser([Stage("golang:1.22", "build", 4)])
    parser.feed("INFO[0000] Building stage 'alpine:3.20' [idx: '0', base-idx: '-1']")
    assert (parser.progress.stage, parser.progress.steps) == ("alpine:3.20", None)
    parser.feed("INFO[0000] Building stage 'golang:1.22' [idx: '3', base-idx: '-1']")
    assert (parser.progress.stage, parser.progress.steps) == ("build", 4)


def test_a_real_kaniko_log_reads_as_two_stages_one_miss_and_one_push() -> None:
    parser = ProgressParser(dockerfile_stages(REAL_DOCKERFILE))
    summaries = feed(parser, REAL_LOG.read_text())
    assert 'stage build · step 1/2 RUN echo "compiling the app" && mkdir -p /out && echo app >… ' \
           "· cache 0 hits, 1 miss" in summaries
    assert "stage build · step 2/2 COPY app.sh /src/app.sh · cache 0 hits, 1 miss" in summaries
    assert "stage runtime · step 1/1 COPY --from=build /out/app /app · cache 0 hits, 1 miss" \
        in summaries
    progress = parser.progress
    # The cache layer Kaniko pushes on the way is not the image.
    assert progress.pushed == ["10.244.0.1:5000/team-a/web@sha256:62f8973c4980f8bbea5e72cfb49e8"
                               "82f8d4ff1628b5c4683e70b0ad7a2bb2538"]
    assert progress.pushing == "10.244.0.1:5000/team-a/web:latest"
    assert progress.error is None


def test_live_progress_and_the_cache_report_read_the_same_line_shapes() -> None:
    # Kaniko's three prefixes: its default, --log-timestamp, and --log-format=text.
    for prefix in ("INFO[0001] ", "INFO[2026-11-30T01:00:00Z] ",
                   'time="2026-11-30T01:00:00Z" level=info msg="'):
        end = '"' if prefix.startswith("time=") else ""
        lines = [f"{prefix}{message}{end}" for message in (
            "Building stage 'golang:1.22' [idx: '0', base-idx: '-1']",
            "Using caching version of cmd: RUN make",
            "No cached layer found for cmd RUN make test",
            "RUN make",
            "RUN make test",
        )]
        parser = ProgressParser()
        for line in lines:
            parser.feed(line)
        report = parse_build_log(lines)
        assert (parser.progress.stage, parser.progress.cache_hits,
                parser.progress.cache_misses) == ("golang:1.22", 1, 1), prefix
        assert (report.cache.hits, report.cache.misses, report.base_image) == (
            1, 1, "golang:1.22"), prefix
