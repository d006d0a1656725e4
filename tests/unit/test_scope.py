"""Which namespaces a shard serves (STAGEWRIGHT_NAMESPACES), and how they are watched."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stagewright.scope import Scope
from stagewright.settings import Settings


def test_empty_is_the_whole_cluster_in_one_watch() -> None:
    scope = Scope.parse([])
    assert scope.whole_cluster
    assert scope.covers("anything")
    assert scope.watches() == [("", "")]


def test_plain_names_are_watched_one_by_one_as_before() -> None:
    scope = Scope.parse(["team-a", "team-b"])
    assert scope.names_only
    assert scope.watches() == [("team-a", ""), ("team-b", "")]
    assert scope.covers("team-a")
    assert not scope.covers("team-c")


def test_patterns_are_one_cluster_wide_watch_filtered_on_sight() -> None:
    scope = Scope.parse(["team-*", "ci-?"])
    assert scope.watches() == [("", "")]
    assert scope.covers("team-a")
    assert scope.covers("ci-1")
    assert not scope.covers("ci-12")
    assert not scope.covers("default")


def test_a_catch_all_shard_excludes_the_others_names_on_the_server() -> None:
    """The catch-all: everything but the namespaces other shards take. Plain excluded names
    are left out by the API server (a field selector); patterns on sight."""
    for entries in (["*", "!team-a", "!build-*"], ["!team-a", "!build-*"]):
        scope = Scope.parse(entries)
        assert scope.watches() == [("", "metadata.namespace!=team-a")]
        assert scope.covers("default")
        assert not scope.covers("team-a")
        assert not scope.covers("build-7")


def test_two_shards_and_a_catch_all_split_every_namespace_once() -> None:
    shards = [Scope.parse(["team-*"]), Scope.parse(["ci", "release"]),
              Scope.parse(["!team-*", "!ci", "!release"])]
    for namespace in ("team-a", "team-zz", "ci", "release", "default", "kube-system", "ci-2"):
        assert sum(shard.covers(namespace) for shard in shards) == 1, namespace


@pytest.mark.parametrize("entry", ["Team_A", "a b", "!", "team/*", "x" * 64])
def test_a_bad_entry_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(ValueError, match="is not a namespace name"):
        Scope.parse([entry])


def test_the_setting_parses_and_checks_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEWRIGHT_NAMESPACES", " team-*, !team-x ")
    assert Settings().scope == Scope(("team-*",), ("team-x",))
    monkeypatch.setenv("STAGEWRIGHT_NAMESPACES", "Team_A")
    with pytest.raises(ValidationError, match="Team_A"):
        Settings()
