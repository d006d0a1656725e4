"""When a trigger builds, and why (triggers/plan.py), and the budget per registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from stagewright.api.triggers import (
    BuildCause,
    BuildInputs,
    CauseType,
    ImageDigest,
    Triggers,
    TriggerStatus,
)
from stagewright.api.v1alpha1 import ImageBuildStatus
from stagewright.triggers.budget import RegistryBudget
from stagewright.triggers.plan import (
    Observations,
    Observed,
    Start,
    Wait,
    changes,
    decide,
    describe_causes,
    requested,
    started,
    token,
)

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
OLD, NEW = "a" * 40, "b" * 40
BASE_OLD, BASE_NEW = "sha256:" + "1" * 64, "sha256:" + "2" * 64
BUILT = BuildInputs(commit=OLD, ref="refs/heads/main",
                    base_images=[ImageDigest(image="python:3.12-slim", digest=BASE_OLD),
                                 ImageDigest(image="golang:1.22", digest=None)])
TRIGGERS = Triggers.model_validate({"source": {}, "baseImages": {}, "debounce": "30s",
                                    "maxBuildsPerHour": 2})


def seen(commit: str | None = None, since: timedelta = timedelta(minutes=5),
         images: dict[str, str] | None = None) -> Observations:
    at = NOW - since
    return Observations(
        commit=Observed(commit, at) if commit else None, ref="refs/heads/main",
        images={image: Observed(digest, at) for image, digest in (images or {}).items()})


def test_nothing_changed_nothing_to_build() -> None:
    assert changes(BUILT, seen(OLD, images={"python:3.12-slim": BASE_OLD})) == []
    assert decide(TRIGGERS, BUILT, None, seen(OLD), NOW) is None
    assert decide(TRIGGERS, BUILT, None, Observations(), NOW) is None  # not looked yet


def test_a_moved_branch_builds_that_commit_with_old_and_new() -> None:
    start = decide(TRIGGERS, BUILT, None, seen(NEW), NOW)
    assert isinstance(start, Start)
    assert start.causes == [BuildCause(type=CauseType.COMMIT, old=OLD, new=NEW)]
    assert start.inputs is not None
    assert (start.inputs.commit, start.inputs.ref) == (NEW, "refs/heads/main")
    assert start.inputs.seen_at == "2026-12-07T11:55:00Z"  # when the new head was first seen
    assert start.trigger == token(start.causes)
    assert start.window == TriggerStatus(window_start="2026-12-07T12:00:00Z",
                                         builds_in_window=1)


def test_a_repushed_base_image_builds_with_its_digests() -> None:
    start = decide(TRIGGERS, BUILT, None, seen(OLD, images={"python:3.12-slim": BASE_NEW}), NOW)
    assert isinstance(start, Start)
    assert start.causes == [BuildCause(type=CauseType.BASE_IMAGE, image="python:3.12-slim",
                                       old=BASE_OLD, new=BASE_NEW)]
    assert start.inputs is not None
    assert start.inputs.base_images is not None
    assert start.inputs.base_images[0] == ImageDigest(image="python:3.12-slim", digest=BASE_NEW)
    assert start.inputs.commit == OLD


def test_several_changes_are_one_build_naming_each() -> None:
    start = decide(TRIGGERS, BUILT, None, seen(NEW, images={"python:3.12-slim": BASE_NEW}), NOW)
    assert isinstance(start, Start)
    assert [c.type for c in start.causes] == [CauseType.COMMIT, CauseType.BASE_IMAGE]


def test_unknown_baselines_are_no_change() -> None:
    """A digest the last build did not record (golang:1.22 here) cannot have changed."""
    assert changes(BUILT, seen(OLD, images={"golang:1.22": BASE_NEW})) == []
    assert changes(BuildInputs(), seen(NEW)) == []


def test_a_change_waits_out_the_debounce_window() -> None:
    fresh = seen(NEW, since=timedelta(seconds=10))
    decision = decide(TRIGGERS, BUILT, None, fresh, NOW)
    assert isinstance(decision, Wait)
    assert decision.until == NOW + timedelta(seconds=20)
    assert isinstance(decide(TRIGGERS, BUILT, None, fresh, NOW + timedelta(seconds=20)), Start)


def test_the_hourly_limit_waits_for_the_next_hour_and_survives_restarts() -> None:
    window = TriggerStatus(window_start="2026-12-07T11:30:00Z", builds_in_window=2)
    decision = decide(TRIGGERS, BUILT, window, seen(NEW), NOW)
    assert isinstance(decision, Wait)
    assert decision.until == datetime(2026, 12, 7, 12, 30, tzinfo=UTC)
    later = decide(TRIGGERS, BUILT, window, seen(NEW), decision.until)
    assert isinstance(later, Start)
    assert later.window == TriggerStatus(window_start="2026-12-07T12:30:00Z",
                                         builds_in_window=1)


def test_a_failed_build_is_not_retried_only_a_new_change_builds() -> None:
    """The comparison is with what the build was built from, whatever its outcome."""
    tried = BuildInputs(commit=NEW, ref="refs/heads/main")
    assert decide(TRIGGERS, tried, None, seen(NEW), NOW) is None
    assert isinstance(decide(TRIGGERS, tried, None, seen("c" * 40), NOW), Start)


def test_the_token_is_deterministic_per_change() -> None:
    one = [BuildCause(type=CauseType.COMMIT, old=OLD, new=NEW)]
    assert token(one) == token(list(one))
    assert token(one) != token([BuildCause(type=CauseType.COMMIT, old=OLD, new="c" * 40)])
    assert token(one).startswith("t")
    assert len(token(one)) == 8


def test_requested_builds_say_spec_or_rebuild() -> None:
    assert requested(None, None, 1, None) == [BuildCause(type=CauseType.SPEC, new="1")]
    assert requested(1, None, 2, None) == [BuildCause(type=CauseType.SPEC, old="1", new="2")]
    assert requested(2, "r1", 2, "r2") == [BuildCause(type=CauseType.REBUILD, old="r1",
                                                      new="r2")]


def test_a_waiting_build_launches_with_what_its_status_records() -> None:
    status = ImageBuildStatus.model_validate({
        "phase": "Pending", "reason": "Queued", "observedGeneration": 1, "trigger": "tabc1234",
        "causes": [{"type": "Commit", "old": OLD, "new": NEW}],
        "inputs": {"commit": NEW, "ref": "refs/heads/main"}})
    start = started(status, 1, None)
    assert (start.trigger, start.causes[0].new, start.inputs) == ("tabc1234", NEW, status.inputs)


def test_start_fields_replace_the_last_builds_inputs() -> None:
    fields = Start([BuildCause(type=CauseType.SPEC, new="2")],
                   inputs=BuildInputs(commit=NEW)).status_fields()
    assert fields["inputs"] == {"commit": NEW, "ref": None, "baseImages": None, "seenAt": None}
    assert fields["trigger"] is None
    assert Start([BuildCause(type=CauseType.SPEC, new="2")]).status_fields()["inputs"] is None


def test_causes_read_as_sentences() -> None:
    assert describe_causes([BuildCause(type=CauseType.COMMIT, old=OLD, new=NEW),
                            BuildCause(type=CauseType.BASE_IMAGE, image="python:3.12",
                                       old=BASE_OLD, new=BASE_NEW)]) == (
        f"new commit {NEW[:12]} (was {OLD[:12]}); base image python:3.12 re-pushed "
        f"(sha256:{'2' * 12}, was sha256:{'1' * 12})")


def test_a_registry_budget_spaces_lookups_and_honours_retry_after() -> None:
    budget = RegistryBudget(per_minute=2)
    assert budget.reserve("r.example", 0.0) == 0.0
    assert budget.reserve("r.example", 0.0) == 0.0
    assert budget.reserve("r.example", 0.0) == pytest.approx(30.0)  # the third waits
    assert budget.reserve("other.example", 0.0) == 0.0  # each registry has its own
    budget.rate_limited("other.example", 1.0, retry_after=120.0)
    assert budget.reserve("other.example", 2.0) == pytest.approx(119.0)
    budget.rate_limited("third.example", 0.0, retry_after=None)
    assert budget.reserve("third.example", 0.0) == pytest.approx(60.0)
    with pytest.raises(ValueError, match="at least one"):
        RegistryBudget(per_minute=0)
