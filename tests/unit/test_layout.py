"""The test tree itself: pytest imports test modules by basename (no packages), so two tiers'
modules of the same name break the whole run's collection."""

from __future__ import annotations

from collections import Counter

from tests.tooling import ROOT


def test_test_modules_have_unique_names_across_tiers() -> None:
    names = Counter(path.name for path in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
