"""The pure parts of a HEAD digest look-up: Retry-After, and the digest a HEAD names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stagewright.registry import ImageReference, InvalidManifest
from stagewright.registry.manifests import announced_digest
from stagewright.registry.transport import parse_retry_after

NOW = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("1.5", 1.5),
    ("Sun, 01 Mar 2026 12:01:00 GMT", 60.0),  # 59.75 s away, rounded up
    ("Sun, 01 Mar 2026 12:01:00 -0000", 60.0),
    ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # already past
    ("Sunday, 01-Mar-26 12:01:00 GMT", 60.0),  # obsolete RFC 850 form, which RFC 9110 reads
    (None, None), ("", None), ("soon", None), ("-5", None), ("9" * 400, None),
])
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_the_digest_a_head_names() -> None:
    by_tag = ImageReference.parse("registry.test/app:v1")
    assert announced_digest(by_tag, "v1", DIGEST) == DIGEST
    by_digest = ImageReference.parse(f"registry.test/app@{DIGEST}")
    assert announced_digest(by_digest, DIGEST, DIGEST) == DIGEST
    with pytest.raises(InvalidManifest, match="without a Docker-Content-Digest"):
        announced_digest(by_tag, "v1", None)
    with pytest.raises(InvalidManifest, match="unsupported digest 'md5:abc'"):
        announced_digest(by_tag, "v1", "md5:abc")
    with pytest.raises(InvalidManifest, match=r"named sha256:cdcd\S+ when asked for .*@sha256:ab"):
        announced_digest(by_digest, DIGEST, "sha256:" + "cd" * 32)
