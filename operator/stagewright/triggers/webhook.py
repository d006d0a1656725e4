"""Webhook deliveries: who may ask for a check, and whether one was already answered. Pure.

A delivery is only ever a hint to check the source now: the operator resolves the branch
itself and never builds a commit named in a payload (Flux's Receiver model; OpenShift's
webhooks trusted a secret in the URL and built the payload's commit). So the payload is not
parsed at all; it is only authenticated:

- GitHub: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>``, delivery ``X-GitHub-Delivery``;
- GitLab: ``X-Gitlab-Token: <the secret>`` (compared in constant time), delivery
  ``X-Gitlab-Event-UUID``;
- anything else: ``X-Stagewright-Signature: sha256=<HMAC-SHA256 of the body>``, delivery
  ``X-Stagewright-Delivery``.

The path is a hash of the ImageBuild's UID: it names neither namespace nor ImageBuild, and a
new object of the same name gets a new path.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

PATH_PREFIX = "/hooks/"
#: Delivery IDs remembered (per operator process), for replay detection.
REMEMBERED_DELIVERIES = 10_000


class WebhookRefusedError(Exception):
    """The delivery is not authentic (401); the message says why, without secrets."""


@dataclass(frozen=True)
class Delivery:
    """An authentic delivery: who sent it, and its ID (for replays)."""

    provider: str
    delivery_id: str


def webhook_path(uid: str) -> str:
    """``/hooks/<40 hex>``: derived from the ImageBuild's UID, revealing nothing else."""
    return PATH_PREFIX + hashlib.sha256(f"stagewright-webhook:{uid}".encode()).hexdigest()[:40]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), None)


def _hmac_matches(secret: bytes, body: bytes, signature: str) -> bool:
    algorithm, _, given = signature.strip().partition("=")
    if algorithm != "sha256" or not given:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given.lower())


def authenticate(headers: Mapping[str, str], body: bytes, secret: bytes) -> Delivery:
    """The delivery, if its signature or token proves it knows ``secret``; else refused."""
    if not secret:
        raise WebhookRefusedError("the webhook Secret's key `token` is empty")
    body_id = hashlib.sha256(body).hexdigest()
    if (signature := _header(headers, "X-Hub-Signature-256")) is not None:
        if not _hmac_matches(secret, body, signature):
            raise WebhookRefusedError("X-Hub-Signature-256 does not match the body")
        return Delivery("github", _header(headers, "X-GitHub-Delivery") or body_id)
    if (token := _header(headers, "X-Gitlab-Token")) is not None:
        if not hmac.compare_digest(token.encode(), secret):
            raise WebhookRefusedError("X-Gitlab-Token is not the webhook's token")
        return Delivery("gitlab", _header(headers, "X-Gitlab-Event-UUID") or body_id)
    if (signature := _header(headers, "X-Stagewright-Signature")) is not None:
        if not _hmac_matches(secret, body, signature):
            raise WebhookRefusedError("X-Stagewright-Signature does not match the body")
        return Delivery("generic", _header(headers, "X-Stagewright-Delivery") or body_id)
    raise WebhookRefusedError("no signature: send X-Hub-Signature-256 (GitHub), "
                              "X-Gitlab-Token (GitLab) or X-Stagewright-Signature")


class Replays:
    """The delivery IDs already answered, per path (bounded: the oldest are forgotten)."""

    def __init__(self, limit: int = REMEMBERED_DELIVERIES) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._limit = limit

    def first_time(self, path: str, delivery: Delivery) -> bool:
        """True once per (path, delivery ID); later calls with the same are replays."""
        key = (path, f"{delivery.provider}:{delivery.delivery_id}")
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return True
