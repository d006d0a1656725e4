"""The triggers' runtime: shared polls of git refs and base images, and what they saw.

One poll per thing watched, not per ImageBuild: a git repository, ref and credentials (a
``SourceTarget``), or a base image and credentials (an ``ImageTarget``), each polled at the
shortest interval any of its subscribers asks for (never below the operator's minimum),
jittered so a thousand ImageBuilds started together do not poll together. A thousand
ImageBuilds on twenty branches and ten base images cost thirty look-ups per interval.

A poll keeps what it saw in memory (value, and since when); only a change wakes its
subscribers (the controller's work queue), and only a subscriber whose status differs from
what was seen gets a build, decided by ``triggers.plan``. Nothing is written while nothing
changes. A failing look-up backs off (doubling up to half an hour) and wakes its subscribers
once, so the reconciler can write the ``TriggersHealthy`` condition; it never fails a build.
Base-image look-ups are HEADs (the registry client's ``head_digest``), within a per-registry
budget that honours ``429`` and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from stagewright.api.triggers import BuildInputs, ImageDigest, Triggers, TriggerStatus
from stagewright.api.types import parse_duration
from stagewright.api.v1alpha1 import ImageBuild
from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.handlers.push_secret import secret_docker_config
from stagewright.registry import (
    ImageReference,
    RegistryClient,
    RegistryError,
    RegistryRateLimited,
)
from stagewright.settings import Settings
from stagewright.triggers.budget import RegistryBudget
from stagewright.triggers.gitrefs import GitRefError, GitRefs, ResolvedRef, is_commit
from stagewright.triggers.plan import Decision, Observations, Observed, Start, Wait, decide
from stagewright.triggers.webhook import webhook_path

_log = logging.getLogger("stagewright")

Key = tuple[str, str]
#: The longest back-off of a failing look-up.
MAX_BACKOFF = 1800.0
#: How close together two forced checks (webhooks) of one source may be.
FORCED_SPACING = 5.0


@dataclass(frozen=True)
class SourceTarget:
    """A git ref as one credential sees it."""

    url: str
    revision: str | None
    namespace: str | None  # with secret: whose Secret; None for anonymous look-ups
    secret: str | None


@dataclass(frozen=True)
class ImageTarget:
    """A base image tag as one credential sees it."""

    image: str
    namespace: str | None
    secret: str | None
    insecure: bool


Target = SourceTarget | ImageTarget


@dataclass
class _Poll:
    """One look-up, shared by its subscribers."""

    target: Target
    subscribers: dict[Key, float] = field(default_factory=dict)  # key -> its interval (s)
    seen: Observed | None = None
    ref: str | None = None
    error: str | None = None
    failures: int = 0
    checked_at: float = 0.0
    forced: asyncio.Event = field(default_factory=asyncio.Event)
    #: One look-up at a time: a reconcile asking for a fresh value joins the poll's own.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        return min(self.subscribers.values())


@dataclass
class _Subscriber:
    """What the watch keeps of one ImageBuild with triggers (a few hundred bytes)."""

    triggers: Triggers
    targets: set[Target]
    inputs: BuildInputs | None
    window: TriggerStatus | None
    #: The webhook's path and its Secret (namespace, name), when it has one.
    webhook: str | None
    webhook_secret: tuple[str, str] | None

    def has_work(self, seen: Observations, now: datetime) -> bool:
        """A change since its last build (to build now or after a wait)."""
        return decide(self.triggers, self.inputs, self.window, seen, now) is not None


@dataclass(frozen=True)
class Health:
    """Whether the look-ups for an ImageBuild work: the TriggersHealthy condition."""

    ok: bool
    reason: str
    message: str


class TriggerWatch:
    """Polls what ImageBuilds' triggers watch; answers the reconciler's questions."""

    def __init__(self, api: KubeApi, registry: RegistryClient, git: GitRefs, settings: Settings,
                 wake: Callable[[Key], None]) -> None:
        self.api = api
        self.registry = registry
        self.git = git
        self.settings = settings
        self._wake = wake
        self._minimum = parse_duration(settings.trigger_min_poll_interval).total_seconds()
        self._budget = RegistryBudget(settings.trigger_registry_budget)
        self._polls: dict[Target, _Poll] = {}
        self._subscribers: dict[Key, _Subscriber] = {}
        self._webhooks: dict[str, Key] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        #: Look-ups made, by kind: the benchmark reads them (``/metrics`` too).
        self.lookups = {"git": 0, "registry": 0}

    # Subscriptions -------------------------------------------------------------------------

    def track(self, body: Mapping[str, Any]) -> bool:
        """Note an ImageBuild as an event shows it; True when it has trigger work to do now
        (a change seen since its last build, or a webhook path not yet in its status)."""
        meta = body["metadata"]
        key: Key = (meta.get("namespace") or "", meta["name"])
        if not (body.get("spec") or {}).get("triggers") or meta.get("deletionTimestamp"):
            self.forget(key)
            return False
        try:
            build = ImageBuild.model_validate(body)
        except ValidationError:
            self.forget(key)  # the reconciler says what is wrong with it
            return False
        triggers = build.spec.triggers
        assert triggers is not None
        status = build.status
        hook = triggers.webhook
        path = webhook_path(build.uid) if hook is not None else None
        subscriber = _Subscriber(triggers, self._targets(build, status.inputs), status.inputs,
                                 status.triggers, path,
                                 (build.namespace, hook.secret_ref.name) if hook else None)
        self._subscribe(key, subscriber, build)
        unshown = bool(path) and (status.triggers is None or status.triggers.webhook_path != path)
        return unshown or subscriber.has_work(self.observations(key), _now())

    def forget(self, key: Key) -> None:
        """Stop watching for an ImageBuild (deleted, or its triggers removed)."""
        subscriber = self._subscribers.pop(key, None)
        if subscriber is None:
            return
        if subscriber.webhook:
            self._webhooks.pop(subscriber.webhook, None)
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        for target in subscriber.targets:
            self._unsubscribe(key, target)

    def _targets(self, build: ImageBuild, inputs: BuildInputs | None) -> set[Target]:
        triggers, spec, namespace = build.spec.triggers, build.spec, build.namespace
        assert triggers is not None
        targets: set[Target] = set()
        git = spec.source.git
        if git is not None and (triggers.source or triggers.webhook) and not is_commit(
                git.revision):
            secret = git.secret_ref.name if git.secret_ref else None
            targets.add(SourceTarget(git.url, git.revision, namespace if secret else None,
                                     secret))
        if triggers.base_images is not None:
            push = spec.output.push_secret_ref.name if spec.output.push_secret_ref else None
            for image in inputs.base_images if inputs and inputs.base_images else []:
                if any(fnmatch.fnmatchcase(image.image, pattern)
                       for pattern in triggers.base_images.exclude):
                    continue
                targets.add(ImageTarget(image.image, namespace if push else None, push,
                                        spec.output.insecure_for(_registry_of(image.image))))
        return targets

    def _interval(self, build: ImageBuild, target: Target) -> float:
        triggers = build.spec.triggers
        assert triggers is not None
        trigger = triggers.source if isinstance(target, SourceTarget) else triggers.base_images
        asked = parse_duration(trigger.poll_interval).total_seconds() if trigger else 3600.0
        return max(asked, self._minimum)

    def _subscribe(self, key: Key, subscriber: _Subscriber, build: ImageBuild) -> None:
        old = self._subscribers.get(key)
        for target in (old.targets - subscriber.targets) if old else set():
            self._unsubscribe(key, target)
        if old is not None and old.webhook and old.webhook != subscriber.webhook:
            self._webhooks.pop(old.webhook, None)
        self._subscribers[key] = subscriber
        if subscriber.webhook:
            self._webhooks[subscriber.webhook] = key
        for target in subscriber.targets:
            poll = self._polls.get(target)
            if poll is None:
                poll = self._polls[target] = _Poll(target)
            poll.subscribers[key] = self._interval(build, target)
            if poll.task is None:
                poll.task = asyncio.create_task(self._run(poll))

    def _unsubscribe(self, key: Key, target: Target) -> None:
        poll = self._polls.get(target)
        if poll is None:
            return
        poll.subscribers.pop(key, None)
        if not poll.subscribers:
            del self._polls[target]
            if poll.task is not None:
                poll.task.cancel()

    async def stop(self) -> None:
        """Cancel every poll and wake-up, and forget every subscription: a replica that
        stops leading polls nothing, and its next term tracks afresh from its list."""
        for timer in self._timers.values():
            timer.cancel()
        tasks = [poll.task for poll in self._polls.values() if poll.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._polls.clear()
        self._timers.clear()
        self._subscribers.clear()
        self._webhooks.clear()

    # What the reconciler asks --------------------------------------------------------------

    def observations(self, key: Key) -> Observations:
        """What the look-ups for ``key`` saw last."""
        subscriber = self._subscribers.get(key)
        if subscriber is None:
            return Observations()
        commit, ref, images = None, None, {}
        for target in subscriber.targets:
            poll = self._polls.get(target)
            if poll is None or poll.seen is None:
                continue
            if isinstance(target, SourceTarget):
                commit, ref = poll.seen, poll.ref
            else:
                images[target.image] = poll.seen
        return Observations(commit=commit, ref=ref, images=images)

    def decide(self, build: ImageBuild) -> Start | None:
        """A triggered build to start now, or None; a wait is scheduled as a wake-up."""
        triggers = build.spec.triggers
        if triggers is None:
            return None
        key = (build.namespace, build.name)
        decision: Decision = decide(triggers, build.status.inputs, build.status.triggers,
                                    self.observations(key), _now())
        if isinstance(decision, Wait):
            self._wake_at(key, decision.until)
            _log.info(f"Change seen for {key[0]}/{key[1]}; {decision.why}.")
            return None
        return decision

    def health(self, key: Key) -> Health:
        """The first failing look-up of ``key``, or healthy."""
        subscriber = self._subscribers.get(key)
        for target in sorted(subscriber.targets if subscriber else (), key=str):
            poll = self._polls.get(target)
            if poll is not None and poll.error is not None:
                what = "SourceUnreachable" if isinstance(target, SourceTarget) else (
                    "BaseImageUnreachable")
                return Health(False, what, poll.error)
        return Health(True, "Watching", "The triggers' look-ups succeed.")

    def webhook_key(self, path: str) -> Key | None:
        """The ImageBuild whose webhook path this is."""
        return self._webhooks.get(path)

    def webhook_secret(self, key: Key) -> tuple[str, str] | None:
        """(namespace, Secret name) of ``key``'s webhook secret."""
        subscriber = self._subscribers.get(key)
        return subscriber.webhook_secret if subscriber else None

    def check_now(self, key: Key) -> bool:
        """A webhook's hint: look at ``key``'s source at once (spaced a few seconds apart).
        False when ``key`` watches no source."""
        subscriber = self._subscribers.get(key)
        sources = [t for t in subscriber.targets if isinstance(t, SourceTarget)] if (
            subscriber) else []
        for target in sources:
            poll = self._polls.get(target)
            if poll is not None:
                poll.forced.set()
        return bool(sources)

    async def resolve_source(self, build: ImageBuild) -> ResolvedRef | None:
        """The commit to build now (a fresh look-up, shared with the poll); None when the
        source is not watched or cannot be resolved (the build then takes the ref as it is)."""
        key = (build.namespace, build.name)
        subscriber = self._subscribers.get(key)
        target = next((t for t in subscriber.targets if isinstance(t, SourceTarget)), None) if (
            subscriber) else None
        if target is None:
            return None
        poll = self._polls.get(target)
        if poll is None:
            return None
        await self._check(poll, fresh=True)
        if poll.seen is None or poll.ref is None:
            return None
        return ResolvedRef(poll.ref, poll.seen.value)

    async def base_digests(self, build: ImageBuild, images: list[str]) -> list[ImageDigest]:
        """Each image's digest now, from a poll that looked within its interval or a HEAD."""
        spec = build.spec
        push = spec.output.push_secret_ref.name if spec.output.push_secret_ref else None
        digests = []
        for image in images:
            target = ImageTarget(image, build.namespace if push else None, push,
                                 spec.output.insecure_for(_registry_of(image)))
            poll = self._polls.get(target) or _Poll(target, {(build.namespace, build.name):
                                                             self._minimum})
            if poll.seen is None or time.monotonic() - poll.checked_at > poll.interval:
                await self._check(poll, wake=False)
            digests.append(ImageDigest(image=image, digest=poll.seen.value if poll.seen else None))
        return digests

    # Polling -------------------------------------------------------------------------------

    def _wake_at(self, key: Key, until: datetime) -> None:
        if key in self._timers:
            self._timers[key].cancel()
        delay = max(0.0, (until - _now()).total_seconds()) + 0.5
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._woken, key)

    def _woken(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._wake(key)

    async def _run(self, poll: _Poll) -> None:
        """Look, then sleep the interval (jittered) or a back-off, or until forced."""
        await asyncio.sleep(random.uniform(0, min(poll.interval, 5.0)))  # noqa: S311 - jitter
        while True:
            await self._check(poll)
            delay = poll.interval * random.uniform(0.9, 1.1)  # noqa: S311 - jitter, not crypto
            if poll.error is not None:
                delay = min(poll.interval * 2 ** min(poll.failures, 10), MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(poll.forced.wait(), delay)
            if poll.forced.is_set():
                poll.forced.clear()
                spacing = FORCED_SPACING - (time.monotonic() - poll.checked_at)
                if spacing > 0:
                    await asyncio.sleep(spacing)

    async def _check(self, poll: _Poll, *, wake: bool = True, fresh: bool = False) -> None:
        """One look-up (or the one in flight, joined); wakes the subscribers that now have
        work, or whose look-up started or stopped failing (their condition changes)."""
        started = time.monotonic()
        async with poll.lock:
            if fresh and poll.checked_at >= started:
                return  # a look-up that began while we waited answered already
            before = (poll.seen.value if poll.seen else None, poll.error)
            try:
                value, ref = await self._look(poll.target)
            except (GitRefError, RegistryError, ApiError) as exc:
                poll.failures += 1
                poll.error = _describe(poll.target, exc)
                if before[1] is None:
                    _log.warning(f"Trigger look-up failed: {poll.error}")
            else:
                poll.failures, poll.error, poll.ref = 0, None, ref
                if poll.seen is None or poll.seen.value != value:
                    poll.seen = Observed(value, _now())
            finally:
                poll.checked_at = time.monotonic()
        if not wake or (poll.seen.value if poll.seen else None, poll.error) == before:
            return
        health_changed = (poll.error is None) != (before[1] is None)
        now = _now()
        for key in list(poll.subscribers):
            subscriber = self._subscribers.get(key)
            if subscriber is not None and (health_changed or subscriber.has_work(
                    self.observations(key), now)):
                self._wake(key)

    async def _look(self, target: Target) -> tuple[str, str | None]:
        if isinstance(target, SourceTarget):
            self.lookups["git"] += 1
            resolved = await self.git.resolve(target.url, target.revision,
                                              await self._basic_auth(target))
            return resolved.commit, resolved.ref
        registry = _registry_of(target.image)
        delay = self._budget.reserve(registry, time.monotonic())
        if delay > 0:
            await asyncio.sleep(delay)
        config = (await secret_docker_config(self.api, target.namespace, target.secret)
                  if target.namespace and target.secret else None)
        self.lookups["registry"] += 1
        try:
            digest = await self.registry.head_digest(ImageReference.parse(target.image),
                                                     insecure=target.insecure,
                                                     docker_config=config)
        except RegistryRateLimited as exc:
            self._budget.rate_limited(registry, time.monotonic(), exc.retry_after)
            raise
        return digest, None

    async def _basic_auth(self, target: SourceTarget) -> tuple[str, str] | None:
        if not target.namespace or not target.secret:
            return None
        secret = await self.api.get_secret(target.namespace, target.secret)
        if secret is None:
            raise GitRefError(f"Secret {target.secret} (source.git.secretRef) does not exist",
                              temporary=False)
        data = secret.get("data") or {}
        try:
            return (base64.b64decode(data.get("username", "")).decode(),
                    base64.b64decode(data.get("password", "")).decode())
        except ValueError as exc:
            raise GitRefError(f"Secret {target.secret} holds no readable username and "
                              "password", temporary=False) from exc


def _registry_of(image: str) -> str:
    try:
        return ImageReference.parse(image).registry
    except ValueError:
        return ""


def _describe(target: Target, exc: Exception) -> str:
    if isinstance(target, SourceTarget):
        return f"git ref {target.revision or 'HEAD'} of {target.url}: {exc}"
    return f"base image {target.image}: {exc}"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
