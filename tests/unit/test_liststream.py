"""A list response read item by item, however its bytes are split."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from stagewright.handlers.liststream import ListParser

ITEMS = [{"metadata": {"name": f"b{n}", "namespace": "team-ü"}, "spec": {"n": n, "ok": True,
                                                                         "none": None}}
         for n in range(50)]


def parse(body: bytes, cut: list[int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    parser = ListParser()
    items: list[dict[str, Any]] = []
    start = 0
    for end in [*cut, len(body)]:
        items += parser.feed(body[start:end])
        start = end
    parser.close()
    return items, parser.fields


@pytest.mark.parametrize("metadata_first", [True, False], ids=["typed", "custom-resource"])
def test_items_come_out_in_order_however_the_bytes_are_cut(metadata_first: bool) -> None:
    metadata = {"resourceVersion": "4711", "continue": ""}
    fields: dict[str, Any] = {"kind": "ImageBuildList", "apiVersion": "stagewright.dev/v1"}
    document = ({**fields, "metadata": metadata, "items": ITEMS} if metadata_first
                else {**fields, "items": ITEMS, "metadata": metadata})
    body = json.dumps(document, indent=1, ensure_ascii=False).encode()
    generator = random.Random(7)
    for chunks in (1, 3, 40, 400):
        cut = sorted(generator.sample(range(1, len(body)), chunks))
        items, read = parse(body, cut)
        assert items == ITEMS
        assert read == {**fields, "metadata": metadata}
    one_byte_at_a_time = list(range(1, len(body)))
    assert parse(body, one_byte_at_a_time)[0] == ITEMS


@pytest.mark.parametrize("items", ["[]", "null"])
def test_an_empty_list(items: str) -> None:
    body = f'{{"metadata":{{"resourceVersion":"9"}},"items":{items}}}'.encode()
    assert parse(body, [5, 20]) == ([], {"metadata": {"resourceVersion": "9"}})


def test_a_cut_off_response_is_an_error() -> None:
    body = json.dumps({"metadata": {}, "items": ITEMS}).encode()
    parser = ListParser()
    assert parser.feed(body[: len(body) // 2])
    with pytest.raises(ValueError, match="ended early"):
        parser.close()


def test_only_whole_items_are_held() -> None:
    body = json.dumps({"metadata": {}, "items": ITEMS}).encode()
    parser = ListParser()
    held = 0
    for start in range(0, len(body), 100):
        parser.feed(body[start:start + 100])
        held = max(held, len(parser._buffer) - parser._pos)
    assert held < 2 * len(json.dumps(ITEMS[0])) + 100
