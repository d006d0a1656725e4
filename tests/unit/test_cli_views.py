"""What the CLI prints about an ImageBuild: the final table, `get`, `describe`, the last line."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from stagewright.cli.describe import describe
from stagewright.cli.display import Reporter, make_console
from stagewright.cli.outcome import (
    EXIT_FAILED,
    EXIT_SUCCEEDED,
    EXIT_TIMEOUT,
    build_outcome,
    timeout_outcome,
)
from stagewright.cli.progress import Progress
from stagewright.cli.tables import (
    age_text,
    get_columns,
    get_rows,
    key_value_table,
    status_rows,
)

NOW = datetime(2026, 11, 30, 2, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def imagebuild(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "web", "namespace": "team-a", "generation": 2,
                     "creationTimestamp": "2026-11-30T01:55:00Z"},
        "spec": {"source": {"configMap": {"name": "ctx"}},
                 "output": {"image": "registry.local/team-a/web"}, **spec},
        "status": status or {},
    }


SUCCEEDED = {
    "phase": "Succeeded", "reason": "Succeeded", "message": "Pushed 1 tag(s), 12.3MiB.",
    "observedGeneration": 2, "image": f"registry.local/team-a/web@{DIGEST}", "digest": DIGEST,
    "shortDigest": "abababababab", "size": 12_897_484, "sizeHuman": "12.3MiB", "layers": 3,
    "startTime": "2026-11-30T01:55:02Z", "completionTime": "2026-11-30T01:56:14Z",
}
#: Fields a newer operator adds (cache, largest layers, checks, history, size delta).
INSIGHT = {
    "cache": {"hits": 3, "misses": 1},
    "layersTop": [{"size": 10_485_760, "instruction": "RUN make"},
                  {"sizeHuman": "2.0MiB", "createdBy": "COPY . /src"}],
    "checks": [{"stage": "test", "result": "Passed", "durationSeconds": 12},
               {"stage": "lint", "result": "NotRun"}],
    "sizeDelta": -1024,
    "history": [{"phase": "Succeeded", "generation": 1, "sizeHuman": "12.3MiB",
                 "digest": DIGEST, "completionTime": "2026-11-29T10:00:00Z"}],
}


def test_the_final_table_of_a_success_shows_what_was_pushed() -> None:
    rows = dict(status_rows(imagebuild(SUCCEEDED, target="runtime")))
    assert rows["Phase"] == "Succeeded"
    assert rows["Target"] == "runtime"
    assert rows["Digest"] == DIGEST
    assert rows["Size"] == "12.3MiB"
    assert rows["Duration"] == "72s"
    assert "Cache" not in rows  # an operator without cache counts: no row, no error
    assert "Message" not in rows


def test_the_final_table_shows_newer_status_fields_when_present() -> None:
    rows = status_rows(imagebuild({**SUCCEEDED, **INSIGHT}))
    as_dict = dict(rows)
    assert as_dict["Cache"] == "3 hits, 1 miss"
    assert as_dict["Size"] == "12.3MiB (-1.0KiB)"
    assert ("Largest layers", "10.0MiB  RUN make") in rows
    assert ("", "2.0MiB  COPY . /src") in rows
    assert ("Checks", "test: Passed (12s)") in rows
    assert ("", "lint: NotRun") in rows


def test_status_fields_in_unexpected_shapes_do_not_break_the_table() -> None:
    odd = {**SUCCEEDED, "cache": "warm", "layersTop": "n/a", "checks": {"lint": "Failed"},
           "history": 3}
    rows = status_rows(imagebuild(odd))
    assert ("Checks", "lint: Failed") in rows
    assert "Cache" not in dict(rows)
    assert "Largest layers" not in dict(rows)
    assert "History" not in describe(imagebuild(odd), [], [], NOW)


def test_a_failure_shows_its_reason_and_the_message_headline() -> None:
    failed = {"phase": "Failed", "reason": "BuildFailed", "observedGeneration": 2,
              "message": "Kaniko exited with code 1 at step RUN make\nLog tail:\n..."}
    rows = dict(status_rows(imagebuild(failed)))
    assert rows["Phase"] == "Failed (BuildFailed)"
    assert rows["Message"] == "Kaniko exited with code 1 at step RUN make"
    assert rows["Target"] == "(last stage)"


def test_outcomes_give_ci_an_exit_code_and_the_reason_last() -> None:
    ok = build_outcome(imagebuild(SUCCEEDED))
    assert (ok.code, ok.line) == (EXIT_SUCCEEDED,
                                  f"ImageBuild web Succeeded: registry.local/team-a/web@{DIGEST}")
    failed = build_outcome(imagebuild({"phase": "Failed", "reason": "PushFailed",
                                       "message": "The push failed\nmore"}))
    assert (failed.code, failed.line) == (EXIT_FAILED,
                                          "ImageBuild web Failed: PushFailed: The push failed")
    late = timeout_outcome("web", "5m", imagebuild({"phase": "Building"}))
    assert late.code == EXIT_TIMEOUT
    assert late.line.startswith("ImageBuild web Timeout: not finished after 5m (phase Building)")


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59, "59s"), (119, "119s"), (192, "3m12s"), (900, "15m"), (3 * 3600 + 600, "3h10m"),
    (9 * 3600, "9h"), (4 * 86400 + 5, "4d"), (-3, "0s"),
])
def test_ages_read_like_kubectls(seconds: float, text: str) -> None:
    assert age_text(seconds) == text


def test_get_rows_match_the_columns_with_and_without_all_namespaces() -> None:
    builds = [imagebuild({**SUCCEEDED, **INSIGHT}, target="runtime"), imagebuild()]
    rows = get_rows(builds, all_namespaces=False, now=NOW)
    assert rows[0] == ["web", "Succeeded", "Succeeded", "runtime", "-", "12.3MiB (-1.0KiB)",
                       "abababababab", "3 hits, 1 miss", "-", "5m0s"]
    assert rows[1] == ["web", "-", "-", "-", "-", "-", "-", "-", "-", "5m0s"]
    wide = get_rows(builds, all_namespaces=True, now=NOW)
    assert get_columns(all_namespaces=True)[0] == "NAMESPACE"
    assert all(len(row) == len(get_columns(all_namespaces=True)) for row in wide)
    assert wide[0][0] == "team-a"


def test_describe_lays_out_status_conditions_history_pods_and_events() -> None:
    build = imagebuild({**SUCCEEDED, **INSIGHT, "conditions": [
        {"type": "Ready", "status": "True", "reason": "Succeeded",
         "lastTransitionTime": "2026-11-30T01:56:14Z"}]})
    build["metadata"]["annotations"] = {"stagewright.dev/rebuild": "cli-1"}
    pods = [{"metadata": {"name": "web-2-1", "creationTimestamp": "2026-11-30T01:55:01Z",
                          "labels": {"stagewright.dev/attempt": "1"}},
             "status": {"phase": "Succeeded"}}]
    events = [{"type": "Warning", "reason": "PodWaiting", "message": "ErrImagePull: ...",
               "lastTimestamp": "2026-11-30T01:55:30Z", "count": 2}]
    text = describe(build, pods, events, NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["Name:", "web"]
    assert "Rebuild:" in lines[3]
    for section in ("Status:", "Source:", "Conditions:", "Checks:", "Largest layers:",
                    "History:", "Pods:", "Events:"):
        assert section in lines
    assert any(line.split() == ["Ready:", "True", "Succeeded", "3m46s", "ago"] for line in lines)
    assert any("web-2-1:" in line and "Succeeded, attempt 1, 4m59s old" in line
               for line in lines)
    assert any("Warning" in line and "PodWaiting (4m30s ago, x2): ErrImagePull" in line
               for line in lines)
    assert any("Succeeded  gen 1  12.3MiB  sha256:abababababab" in line for line in lines)


def test_describe_of_a_new_build_has_no_empty_sections() -> None:
    text = describe(imagebuild(), [], [], NOW)
    assert "History:" not in text
    assert "Conditions:" not in text
    assert "Events:\n  <none>" in text


def test_plain_output_has_no_escape_codes_and_no_trailing_spaces() -> None:
    out = io.StringIO()
    reporter = Reporter(make_console(out))
    with reporter:
        reporter.note("Pod web-2-1, container kaniko")
        reporter.log("\x1b[36mINFO\x1b[0m[0001] RUN make")
        reporter.progress(Progress(stage="build", step=1))
        reporter.show(key_value_table(status_rows(imagebuild(SUCCEEDED))))
        reporter.last_line("ImageBuild web Succeeded: x")
    text = out.getvalue()
    assert "\x1b" not in text
    assert all(line == line.rstrip() for line in text.splitlines())
    assert text.splitlines()[:2] == ["==> Pod web-2-1, container kaniko", "INFO[0001] RUN make"]
    assert f"Digest      {DIGEST}" in text
    assert text.splitlines()[-1] == "ImageBuild web Succeeded: x"


def test_a_terminal_gets_the_live_progress_line() -> None:
    out = io.StringIO()
    reporter = Reporter(make_console(out, tty=True))
    with reporter:
        reporter.phase("web", "Building")
        reporter.progress(Progress(stage="build", step=2, steps=3, instruction="RUN make",
                                   cache_hits=1))
        reporter.console.print("")  # a print makes Live redraw its line below it
    text = out.getvalue()
    assert "\x1b[" in text
    assert "web Building" in text
    assert "stage build · step 2/3 RUN make · cache 1 hit, 0 misses" in text


TRIGGERED = {"causes": [{"type": "Commit", "old": "a" * 40, "new": "b" * 40}],
             "inputs": {"commit": "b" * 40, "ref": "refs/heads/main",
                        "baseImages": [{"image": "python:3.12-slim",
                                        "digest": "sha256:" + "c" * 64}]},
             "triggers": {"webhookPath": "/hooks/" + "d" * 40},
             "conditions": [{"type": "TriggersHealthy", "status": "False",
                             "reason": "BaseImageUnreachable",
                             "message": "base image python:3.12-slim: 401 Unauthorized",
                             "lastTransitionTime": "2026-11-30T01:56:14Z"}],
             "history": [{"generation": 1, "phase": "Succeeded", "reason": "Succeeded",
                          "causes": [{"type": "Commit"}]}]}


def test_get_describe_and_the_table_say_why_a_build_ran_and_what_triggers_saw() -> None:
    build = imagebuild({**SUCCEEDED, **TRIGGERED})
    build["spec"]["triggers"] = {"source": {"pollInterval": "2m"},
                                 "baseImages": {"exclude": ["internal/*"]},
                                 "webhook": {"secretRef": {"name": "hook"}}}
    assert get_rows([build], all_namespaces=False, now=NOW)[0][8] == "Commit"
    rows = dict(status_rows(build))
    assert rows["Cause"] == f"new commit {'b' * 12} (was {'a' * 12})"
    assert rows["Built from"] == f"commit {'b' * 40} (refs/heads/main)"
    text = describe(build, [], [], NOW)
    assert re.search(r"^  Source: +the git ref, every 2m$", text, re.M)
    assert re.search(r"^  Base images: +every 15m, except internal/\*$", text, re.M)
    assert re.search(rf"^  Webhook: +/hooks/{'d' * 40}$", text, re.M)
    assert re.search(r"^  Failing: +base image python:3.12-slim: 401 Unauthorized$", text, re.M)
    assert re.search(r"^  Succeeded +Succeeded +gen 1 +Commit", text, re.M)
