"""`stagewright build`'s decisions: what applying a file means, and what to follow next."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagewright.api.v1alpha1 import REBUILD_ANNOTATION
from stagewright.cli.apply import (
    Action,
    FileError,
    Wanted,
    apply_order,
    decide,
    load_documents,
    new_rebuild_token,
    placed,
    updated_body,
)
from stagewright.cli.follow import FINISHED, BuildTracker, Step, next_container

FIXTURES = Path(__file__).parent / "fixtures"


def stored(generation: int = 1, rebuild: str | None = None,
           status: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ImageBuild as the API server returns it."""
    annotations = {"team": "a", **({REBUILD_ANNOTATION: rebuild} if rebuild else {})}
    return {
        "apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "web", "namespace": "team-a", "generation": generation,
                     "resourceVersion": "42", "uid": "u-1", "annotations": annotations},
        "spec": {"source": {"configMap": {"name": "ctx"}}, "target": "runtime",
                 "output": {"image": "r.local/web", "tags": ["latest"]}},
        "status": status or {},
    }


def test_load_documents_validates_imagebuilds_before_any_write(tmp_path: Path) -> None:
    text = (FIXTURES / "configmap-insecure.yaml").read_text()
    documents = load_documents(text, "f.yaml")
    assert {d["kind"] for d in documents} >= {"ImageBuild"}
    bad = yaml.safe_load((FIXTURES / "git-runtime.yaml").read_text())
    bad["spec"]["output"]["tags"] = ["not ok!"]
    with pytest.raises(FileError, match=r"ImageBuild web is invalid:\n  spec.output.tags.0"):
        load_documents(yaml.safe_dump(bad), "bad.yaml")
    with pytest.raises(FileError, match="holds no ImageBuild"):
        load_documents("kind: ConfigMap\nmetadata: {name: x}\n", "cm.yaml")
    with pytest.raises(FileError, match="not valid YAML"):
        load_documents("a: [", "broken.yaml")
    with pytest.raises(FileError, match=r"needs kind and metadata\.name"):
        load_documents("- 1\n", "list.yaml")


def test_placed_follows_kubectls_namespace_rules() -> None:
    bare = {"kind": "ImageBuild", "metadata": {"name": "web"}}
    own = {"kind": "ConfigMap", "metadata": {"name": "ctx", "namespace": "shop"}}
    # Without -n: an object without a namespace takes the context's; one with its own keeps it.
    assert placed(bare, "default", explicit=False)["metadata"]["namespace"] == "default"
    assert placed(own, "default", explicit=False)["metadata"]["namespace"] == "shop"
    assert "namespace" not in bare["metadata"]  # the caller's dict is left alone
    # With -n: objects without one take it; the same namespace is fine; another is refused.
    assert placed(bare, "team-a", explicit=True)["metadata"]["namespace"] == "team-a"
    assert placed(own, "shop", explicit=True)["metadata"]["namespace"] == "shop"
    with pytest.raises(FileError, match=r"the namespace from the provided object 'shop' does "
                       r"not match the namespace 'team-a'\. You must pass '--namespace=shop'"):
        placed(own, "team-a", explicit=True)


def test_apply_order_puts_namespaces_first_and_imagebuilds_last() -> None:
    documents = [{"kind": kind, "metadata": {"name": name}} for kind, name in (
        ("ImageBuild", "a"), ("ConfigMap", "ctx"), ("Namespace", "shop"), ("Secret", "s"),
        ("ImageBuild", "b"))]
    ordered = [(d["kind"], d["metadata"]["name"]) for d in apply_order(documents)]
    assert ordered == [("Namespace", "shop"), ("ConfigMap", "ctx"), ("Secret", "s"),
                       ("ImageBuild", "a"), ("ImageBuild", "b")]


def test_updated_body_replaces_spec_and_merges_metadata() -> None:
    existing = stored(rebuild="r1", status={"phase": "Succeeded"})
    document = {"metadata": {"name": "web", "annotations": {"owner": "me"},
                             "labels": {"app": "web"}},
                "spec": {"source": {"configMap": {"name": "ctx"}},
                         "output": {"image": "r.local/web"}}}
    body = updated_body(existing, document)
    assert body["spec"] == document["spec"]  # target removed in the file: removed here too
    assert body["metadata"]["annotations"] == {"team": "a", REBUILD_ANNOTATION: "r1",
                                               "owner": "me"}
    assert body["metadata"]["labels"] == {"app": "web"}
    assert body["metadata"]["resourceVersion"] == "42"  # optimistic concurrency
    assert "status" not in body
    assert existing["spec"]["target"] == "runtime"  # the stored copy is left alone


@pytest.mark.parametrize(("before", "after", "rebuild", "action"), [
    (None, 1, False, Action.CREATED),
    (None, 1, True, Action.CREATED),
    (1, 2, False, Action.CONFIGURED),
    (1, 2, True, Action.CONFIGURED),  # a changed spec builds anyway: no annotation needed
    (3, 3, False, Action.UNCHANGED),
    (3, 3, True, Action.REBUILD),
])
def test_decide_reads_the_servers_generation(before: int | None, after: int, rebuild: bool,
                                             action: Action) -> None:
    assert decide(before, after, rebuild=rebuild) is action


def test_rebuild_tokens_are_new_values() -> None:
    now = datetime(2026, 11, 30, 2, 3, 4, 567, tzinfo=UTC)
    token = new_rebuild_token(None, now)
    assert token == "cli-20261130T020304.000567Z"
    assert new_rebuild_token(token, now) != token


def test_wanted_matches_only_the_status_of_its_own_build() -> None:
    wanted = Wanted.current(stored(generation=2, rebuild="r2"))
    assert wanted == Wanted("web", "team-a", 2, "r2")
    assert wanted.answered_by({"observedGeneration": 2, "rebuild": "r2"})
    assert not wanted.answered_by({"observedGeneration": 2, "rebuild": "r1"})
    assert not wanted.answered_by({"observedGeneration": 1, "rebuild": "r2"})
    plain = Wanted.current(stored(generation=1))
    assert plain.answered_by({"observedGeneration": 1})
    assert not plain.answered_by({"observedGeneration": 1, "rebuild": "r0"})


def test_tracker_waits_follows_each_attempt_then_stops() -> None:
    tracker = BuildTracker(Wanted.current(stored(generation=2)))
    old = stored(generation=2, status={"observedGeneration": 1, "phase": "Succeeded",
                                       "podName": "web-1-1"})
    assert tracker.next_step(old) == (Step.WAIT, None)  # the last build's status: not ours
    first = stored(generation=2, status={"observedGeneration": 2, "phase": "Building",
                                         "podName": "web-2-1", "attempt": 1})
    assert tracker.next_step(first) == (Step.FOLLOW_POD, "web-2-1")
    tracker.followed.append("web-2-1")
    assert tracker.next_step(first) == (Step.WAIT, None)
    retry = stored(generation=2, status={"observedGeneration": 2, "phase": "Building",
                                         "podName": "web-2-2", "attempt": 2})
    assert tracker.next_step(retry) == (Step.FOLLOW_POD, "web-2-2")
    tracker.followed.append("web-2-2")
    done = stored(generation=2, status={"observedGeneration": 2, "phase": "Failed",
                                        "podName": "web-2-2"})
    assert tracker.next_step(done) == (Step.DONE, None)


def test_tracker_follows_each_platforms_pod_in_turn() -> None:
    tracker = BuildTracker(Wanted.current(stored(generation=1)))
    building = stored(generation=1, status={
        "observedGeneration": 1, "phase": "Building", "podName": "web-1-linux-amd64-1",
        "platforms": [{"platform": "linux/amd64", "pod": "web-1-linux-amd64-1"},
                      {"platform": "linux/arm64", "pod": "web-1-linux-arm64-1"}]})
    assert tracker.next_step(building) == (Step.FOLLOW_POD, "web-1-linux-amd64-1")
    tracker.followed.append("web-1-linux-amd64-1")
    assert tracker.next_step(building) == (Step.FOLLOW_POD, "web-1-linux-arm64-1")
    tracker.followed.append("web-1-linux-arm64-1")
    assert tracker.next_step(building) == (Step.WAIT, None)


def test_tracker_reports_a_newer_spec_or_rebuild_request() -> None:
    tracker = BuildTracker(Wanted.current(stored(generation=2)))
    assert tracker.next_step(stored(generation=3))[0] is Step.SUPERSEDED
    assert tracker.next_step(stored(generation=2, rebuild="again"))[0] is Step.SUPERSEDED


def pod(phase: str, **states: dict[str, Any]) -> dict[str, Any]:
    """A pod with one init container (a stage check) and the kaniko container."""
    def status(name: str) -> dict[str, Any]:
        return {"name": name, "state": states.get(name, {"waiting": {}})}
    return {"spec": {"initContainers": [{"name": "check-test"}],
                     "containers": [{"name": "kaniko"}]},
            "status": {"phase": phase, "initContainerStatuses": [status("check-test")],
                       "containerStatuses": [status("kaniko")]}}


def test_containers_are_read_in_the_order_they_run() -> None:
    done: list[str] = []
    assert next_container(pod("Pending"), done) is None
    running_check = pod("Pending", **{"check-test": {"running": {}}})
    assert next_container(running_check, done) == "check-test"
    done.append("check-test")
    assert next_container(running_check, done) is None  # kaniko has not started yet
    states: dict[str, dict[str, Any]] = {"check-test": {"terminated": {"exitCode": 0}},
                                         "kaniko": {"running": {}}}
    building = pod("Running", **states)
    assert next_container(building, done) == "kaniko"
    done.append("kaniko")
    assert next_container(building, done) == FINISHED


def test_containers_that_never_ran_in_a_finished_pod_are_skipped() -> None:
    failed_check = pod("Failed", **{"check-test": {"terminated": {"exitCode": 1}}})
    done = ["check-test"]
    assert next_container(failed_check, done) == FINISHED
    assert done == ["check-test", "kaniko"]
