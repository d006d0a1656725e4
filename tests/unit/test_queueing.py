"""The build queue's ordering: creation order, limits, fairness across namespaces, places."""

from __future__ import annotations

from stagewright.queueing import (
    Limits,
    Waiting,
    admit,
    ordinal,
    place_in_line,
    places,
    queued_message,
)


def _w(namespace: str, name: str, second: int) -> Waiting:
    return Waiting(f"2026-11-30T02:00:{second:02d}Z", namespace, name)


def test_unlimited_admits_everyone_in_creation_order() -> None:
    waiting = [_w("a", "late", 9), _w("a", "early", 1), _w("b", "mid", 5)]
    started = admit(waiting, {}, Limits())
    assert [w.name for w in started] == ["early", "mid", "late"]


def test_total_limit_counts_running_builds() -> None:
    waiting = [_w("a", f"b{i}", i) for i in range(5)]
    assert [w.name for w in admit(waiting, {"a": 1}, Limits(total=3))] == ["b0", "b1"]
    assert admit(waiting, {"a": 2, "b": 1}, Limits(total=3)) == []


def test_per_namespace_limit_lets_other_namespaces_start() -> None:
    waiting = [_w("busy", f"b{i}", i) for i in range(5)] + [_w("quiet", "q", 30)]
    started = admit(waiting, {"busy": 2}, Limits(per_namespace=2))
    assert [w.key for w in started] == [("quiet", "q")]


def test_a_busy_namespace_cannot_starve_another() -> None:
    """100 older builds in one namespace; a newer one elsewhere still gets the next slot."""
    waiting = [_w("busy", f"b{i:03d}", 0) for i in range(100)] + [_w("quiet", "q", 59)]
    started = admit(waiting, {"busy": 3}, Limits(total=4))
    assert [w.key for w in started] == [("quiet", "q")]


def test_free_slots_alternate_between_namespaces_oldest_first() -> None:
    waiting = [_w("a", "a1", 1), _w("a", "a2", 2), _w("a", "a3", 3),
               _w("b", "b1", 4), _w("b", "b2", 5)]
    started = admit(waiting, {}, Limits(total=4))
    assert [w.name for w in started] == ["a1", "b1", "a2", "b2"]


def test_same_second_ties_break_by_name() -> None:
    waiting = [_w("a", "b0002", 0), _w("a", "b0001", 0)]
    assert [w.name for w in admit(waiting, {}, Limits(total=1))] == ["b0001"]


def test_places_are_per_namespace() -> None:
    waiting = [_w("a", "x", 3), _w("b", "y", 1), _w("a", "z", 2), _w("a", "w", 1)]
    assert places(waiting) == {("a", "w"): 1, ("a", "z"): 2, ("a", "x"): 3, ("b", "y"): 1}
    assert [place_in_line(waiting, w) for w in waiting] == [3, 1, 2, 1]


def test_message_names_the_place_and_namespace() -> None:
    assert queued_message(3, "team-a") == "3rd in line for namespace team-a"
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
