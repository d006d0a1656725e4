"""How many look-ups each registry gets from the base-image trigger. Pure (the clock is given).

Public registries meter anonymous and per-account requests (Docker Hub counts manifest
requests, HEADs included on some plans); a cluster with a thousand ImageBuilds must not spend
a team's quota. Each registry gets a token bucket of ``per_minute`` look-ups (bursts up to one
minute's worth), and a ``429`` pauses that registry for its ``Retry-After`` (or a minute when
it names none) before anything else is asked of it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The pause after a 429 that gives no Retry-After.
DEFAULT_RETRY_AFTER = 60.0


@dataclass
class _Bucket:
    tokens: float
    updated: float
    paused_until: float = 0.0


class RegistryBudget:
    """``reserve(registry, now)``: the seconds to wait before the look-up it books may go.

    Like Go's ``rate.Limiter.Reserve``: each call books the next token (the bucket may go
    below zero), so callers sleep once and go in the order they asked.
    """

    def __init__(self, per_minute: int) -> None:
        if per_minute < 1:
            raise ValueError("a registry budget needs at least one look-up per minute")
        self.per_minute = per_minute
        self._buckets: dict[str, _Bucket] = {}

    def reserve(self, registry: str, now: float) -> float:
        """Book one look-up of ``registry``; the seconds until it may be sent (0: now)."""
        bucket = self._buckets.setdefault(registry, _Bucket(float(self.per_minute), now))
        rate = self.per_minute / 60.0
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        bucket.tokens -= 1.0
        wait = 0.0 if bucket.tokens >= 0 else -bucket.tokens / rate
        return max(wait, bucket.paused_until - now)

    def rate_limited(self, registry: str, now: float, retry_after: float | None) -> None:
        """The registry answered 429: ask it nothing until its Retry-After has passed."""
        bucket = self._buckets.setdefault(registry, _Bucket(0.0, now))
        pause = retry_after if retry_after is not None and retry_after > 0 else (
            DEFAULT_RETRY_AFTER)
        bucket.paused_until = max(bucket.paused_until, now + pause)
