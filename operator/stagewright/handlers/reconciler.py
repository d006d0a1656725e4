"""Level-based reconciliation of one ImageBuild: read the truth, take one step, record it.

Every trigger (an ImageBuild event, a build pod event, the periodic resync) lands here, and
each run re-reads the ImageBuild and its pods, so a lost event or an operator restart never
loses or duplicates a build. State lives in ``status`` only: no finalizer, no annotations.
A happy build costs three writes: create the pod, status Building, status Succeeded.
What follows a build pod's successful end (the registry's confirmation, insight, the size
budget, the tags) is the completion path's (``handlers.completion``); the write is still here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, cast

import kopf
from pydantic import ValidationError

from stagewright.admission import Answer, pod_refusal
from stagewright.api.reasons import WARNINGS, Reason
from stagewright.api.triggers import BuildInputs, TriggerStatus
from stagewright.api.v1alpha1 import (
    BuildRecord,
    ContextFile,
    ImageBuild,
    ImageBuildStatus,
    Phase,
)
from stagewright.handlers.build_queue import BuildQueue
from stagewright.handlers.completion import Completion, Logger, Verdict
from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.handlers.metrics import Metrics
from stagewright.handlers.platforms import PlatformBuilds, Prepared, Refused
from stagewright.handlers.pod_outcome import pod_outcome
from stagewright.handlers.references import build_references
from stagewright.handlers.trigger_watch import TriggerWatch
from stagewright.platforms.plan import (
    Built,
    Failing,
    Retrying,
    Waiting,
    building_message,
    launched,
    status_fields,
)
from stagewright.queueing import Waiting as InLine
from stagewright.queueing import queued_message
from stagewright.registry import ImageReference, RegistryClient
from stagewright.registry.egress import host_allowed
from stagewright.resources.build_pod import build_pod
from stagewright.resources.events import build_event
from stagewright.resources.pod_common import (
    ANNOTATION_PLATFORM,
    LABEL_IMAGEBUILD,
    build_key,
    deadline_seconds,
    imagebuild_label,
    pod_name,
)
from stagewright.settings import Settings
from stagewright.status import (
    DEADLINE_GRACE,
    PodOutcome,
    builder_image,
    check_results,
    history_with,
    now_iso,
    parse_iso,
    status_patch,
    trigger_status_patch,
)
from stagewright.triggers.plan import Start, describe_causes, requested, started
from stagewright.triggers.webhook import webhook_path

#: The status fields of a build's result, cleared when a new build starts.
_NO_RESULT: dict[str, Any] = dict(
    image=None, digest=None, short_digest=None, size=None, size_human=None, layers=None,
    largest_layers=None, base_image=None, base_size=None, size_delta=None, cache=None,
    checks=None, platforms=None, platform_summary=None,
)

_log = logging.getLogger("stagewright")


class Reconciler:
    """Drives ImageBuilds towards a finished build of their current spec."""

    def __init__(self, api: KubeApi, registry: RegistryClient, settings: Settings,
                 kopf_settings: kopf.OperatorSettings | None = None,
                 queue: BuildQueue | None = None, metrics: Metrics | None = None,
                 triggers: TriggerWatch | None = None) -> None:
        self.api = api
        self.settings = settings
        #: What ImageBuilds' triggers watch (git refs, base images) and what they saw; None
        #: runs no triggers (an ImageBuild's spec.triggers is then ignored).
        self.triggers = triggers
        #: The path from a build pod's successful end to the build's final status.
        self.completion = Completion(api, registry, settings, triggers)
        #: Multi-platform builds' preparation, pods, following and image index.
        self.platforms = PlatformBuilds(api, registry, settings, self.completion)
        #: Admission under STAGEWRIGHT_MAX_RUNNING_BUILDS*; None starts every build at once.
        self.queue = queue
        self.metrics = metrics
        # With kopf's settings, log lines name the ImageBuild as kopf's own do.
        self._kopf_settings = kopf_settings
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._lock_users: Counter[tuple[str, str]] = Counter()
        #: When each unfinished build was last reconciled, so the resync skips fresh ones.
        self._reconciled_at: dict[tuple[str, str], float] = {}
        #: The ImageBuild as our last status write left it, per unfinished build: the next
        #: reconcile starts from it instead of reading it again (read-your-writes), until an
        #: event says the object changed since (``saw``) or the resync asks for the truth.
        self._written: dict[tuple[str, str], dict[str, Any]] = {}

    def seconds_since_reconciled(self, namespace: str, name: str) -> float:
        """How long ago this build was last reconciled (infinite if never)."""
        when = self._reconciled_at.get((namespace, name))
        return float("inf") if when is None else time.monotonic() - when

    def saw(self, namespace: str, name: str, resource_version: str | None) -> None:
        """An event showed the ImageBuild at ``resource_version``: unless that is our last
        write itself, the body that write returned is no longer known to be the latest."""
        written = self._written.get((namespace, name))
        if written is not None and written["metadata"].get("resourceVersion") != (
                resource_version):
            del self._written[(namespace, name)]

    def unwritten(self, namespace: str, name: str) -> None:
        """Read the ImageBuild afresh next time (the resync's level-based look)."""
        self._written.pop((namespace, name), None)

    def forget(self, namespace: str, name: str) -> None:
        """Drop per-object state once an ImageBuild is deleted."""
        self._locks.pop((namespace, name), None)
        self._reconciled_at.pop((namespace, name), None)
        self._written.pop((namespace, name), None)
        self._leave_queue(namespace, name)

    async def stop_orphan(self, pod: dict[str, Any]) -> None:
        """Delete an unfinished build pod whose ImageBuild is gone (deleted as an orphan).

        Its build would push an image that no status records. A pod whose ImageBuild exists
        and is not being deleted (one made by hand from ``stagewright render``, say) is left
        alone.
        """
        meta = pod["metadata"]
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp") or phase not in ("Pending", "Running"):
            return
        build = (meta.get("labels") or {}).get(LABEL_IMAGEBUILD)
        owner = await self.api.get_imagebuild(meta["namespace"], build) if build else None
        # Orphan deletion strips the pods' owner references before the ImageBuild goes: one
        # still there but marked for deletion is as good as gone.
        if owner is not None and not owner["metadata"].get("deletionTimestamp"):
            return
        if await self.api.delete_pod(meta["namespace"], meta["name"]):
            _log.info(f"Deleted pod {meta['namespace']}/{meta['name']}: its ImageBuild "
                      f"{build} was deleted and orphaned it.")

    async def reconcile(self, namespace: str, name: str, *, body: dict[str, Any] | None = None,
                        pod: dict[str, Any] | None = None) -> None:
        """Take the next step for one ImageBuild; serialised per object.

        ``body`` is the ImageBuild as an event just delivered it (else it is read), and ``pod``
        a build pod as its event delivered it: under a burst every read saved is a request
        fewer per build, and an event's body is as fresh as a read made a moment earlier.
        """
        key = (namespace, name)
        self._lock_users[key] += 1
        try:
            async with self._locks[key]:
                self._reconciled_at[key] = time.monotonic()
                await self._reconcile_locked(namespace, name, body, pod)
        finally:
            # Locks live only while used, so memory does not grow with builds ever seen.
            self._lock_users[key] -= 1
            if not self._lock_users[key]:
                del self._lock_users[key]
                self._locks.pop(key, None)

    async def _reconcile_locked(self, namespace: str, name: str, body: dict[str, Any] | None,
                                pod: dict[str, Any] | None) -> None:
        if body is None:
            body = self._written.get((namespace, name))
        if body is None:
            body = await self.api.get_imagebuild(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return
        if body["metadata"].get("deletionTimestamp"):
            self._leave_queue(namespace, name)
            return  # going away: its pods go with it; never start another
        log = self._logger(body)
        try:
            build = ImageBuild.model_validate(body)
        except ValidationError as exc:
            self._leave_queue(namespace, name)
            await self._reject(body, exc, log)
            return
        await self._step(build, log, pod)

    def _leave_queue(self, namespace: str, name: str) -> None:
        """A build that will not start (finished, invalid, deleted) gives its place back."""
        if self.queue is not None and self.queue.holds(namespace, name):
            self.queue.release(namespace, name)

    def _logger(self, body: dict[str, Any]) -> Logger:
        if self._kopf_settings is None:
            return _log
        return kopf.ObjectLogger(body=kopf.Body(cast(kopf.RawBody, body)),
                                 settings=self._kopf_settings)

    async def _step(self, build: ImageBuild, log: Logger, pod: dict[str, Any] | None) -> None:
        status = build.status
        # observedGeneration 0 is the API server's default: never handled (UNOBSERVED_STATUS).
        new_request = not status.observed_generation or build_key(
            build.generation, build.rebuild_token) != build_key(status.observed_generation,
                                                                 status.rebuild)
        # The build being followed: the request's, and the trigger's token when one started it.
        key = build_key(build.generation, build.rebuild_token,
                        None if new_request else status.trigger)
        if new_request:
            await self._start_new_build(build, log, build_key(
                build.generation, build.rebuild_token), await self._requested(build))
            return
        if status.phase is None or (status.phase is Phase.PENDING and not status.pod_name):
            # Waiting to launch (queued, or for a reference): the start its status records.
            await self._start_new_build(build, log, key, started(
                status, build.generation, build.rebuild_token))
            return
        if status.phase in (Phase.SUCCEEDED, Phase.FAILED):
            self._reconciled_at.pop((build.namespace, build.name), None)
            self._leave_queue(build.namespace, build.name)
            # A finished build is never repeated; a new generation, a rebuild request or a
            # trigger's change starts another.
            if self.triggers is not None and build.spec.triggers is not None:
                await self._on_triggers(build, log)
            return
        await self._follow(build, log, key, pod)

    async def _requested(self, build: ImageBuild) -> Start:
        """A build a person asked for (spec change, rebuild request): why, and from what.

        With the source trigger on, the branch is resolved now and that commit is built, so
        status says which commit a branch build built, and later moves compare against it.
        """
        status = build.status
        causes = requested(status.observed_generation, status.rebuild, build.generation,
                           build.rebuild_token)
        if self.triggers is None or build.spec.triggers is None:
            return Start(causes)
        resolved = await self.triggers.resolve_source(build)
        bases = status.inputs.base_images if status.inputs else None
        # The webhook's path goes out with the build's first write, not in a write of its own.
        hook = TriggerStatus(webhook_path=webhook_path(build.uid)) if (
            build.spec.triggers.webhook is not None) else None
        return Start(causes, inputs=BuildInputs(
            commit=resolved.commit if resolved else None, ref=resolved.ref if resolved else None,
            base_images=bases, seen_at=now_iso()), window=hook)

    async def _on_triggers(self, build: ImageBuild, log: Logger) -> None:
        """A finished ImageBuild with triggers: build what changed, or keep the triggers'
        health and webhook path in status (each written only when it changes)."""
        assert self.triggers is not None
        assert build.spec.triggers is not None
        start = self.triggers.decide(build)
        if start is not None:
            summary = describe_causes(start.causes)
            log.info(f"Triggered: {summary}.")
            await self._post_event(build.metadata, Reason.TRIGGERED, f"Building: {summary}.",
                                   kind="Normal")
            await self._start_new_build(
                build, log, build_key(build.generation, build.rebuild_token, start.trigger),
                start)
            return
        health = self.triggers.health((build.namespace, build.name))
        hook = webhook_path(build.uid) if build.spec.triggers.webhook is not None else None
        patch = trigger_status_patch(build.status, generation=build.generation,
                                     webhook_path=hook, healthy=health.ok,
                                     reason=health.reason, message=health.message,
                                     now=now_iso())
        if patch is not None:
            await self.api.patch_imagebuild_status(build.namespace, build.name, patch)

    async def _start_new_build(self, build: ImageBuild, log: Logger, key: str,
                               start: Start) -> None:
        if build.status.observed_generation:
            # Handled before: pods of an earlier generation or rebuild request may run. (Never
            # handled: no pod of it can exist but the one this launch adopts.)
            await self._clean_up_pods(build.namespace, build.name, build.uid, build.status, log,
                                      current=self._first_pods(build, key))
        refused = self._disallowed_registries(build)
        if refused:
            await self._write(
                build, phase=Phase.FAILED, reason=Reason.REGISTRY_NOT_ALLOWED, completion=True,
                message=f"{refused} is not among the registries this operator may use "
                f"({', '.join(self.settings.registry_allow)}); ask your cluster admin, or "
                "push to an allowed registry.", pod_name=None, start=start, **_NO_RESULT)
            return
        refs = await build_references(self.api, self.settings, build)
        if refs.missing:
            # A pod would only wait on the missing volume without saying why: say it here,
            # and launch once the object exists (the resync looks again).
            await self._write_if_changed(
                build, log, phase=Phase.PENDING, reason=Reason.REFERENCE_NOT_FOUND,
                message=f"Waiting for {', '.join(refs.missing)} in namespace "
                f"{build.namespace}; the build starts when it exists.", start=start)
            return
        prepared: Prepared | None = None
        if build.spec.platforms:
            # A cross build's Dockerfile is checked, and its build-platform FROMs pinned,
            # before it takes a place in the queue.
            checked = await self.platforms.prepare(build, log, refs.dockerfile)
            if isinstance(checked, Refused):
                await self._write(build, phase=Phase.FAILED, reason=checked.reason,
                                  message=checked.message, completion=True, pod_name=None,
                                  start=start, **_NO_RESULT)
                return
            prepared = checked
        launch = partial(self._launch, build, log, key, attempt=1, note="", files=refs.files,
                         start=start, prepared=prepared)
        if self.queue is None:
            await launch()
            return
        place = self.queue.request(InLine(str(build.metadata.get("creationTimestamp") or ""),
                                          build.namespace, build.name))
        if place is not None:
            await self._write_queued(build, log, place, start)
            return
        launched = False
        try:
            launched = await launch()
        finally:
            if not launched:  # the slot goes to the next in line
                self.queue.release(build.namespace, build.name)

    async def _write_queued(self, build: ImageBuild, log: Logger, place: int,
                            start: Start) -> None:
        """Pending/Queued with the place in line, written once per build request.

        The place is not rewritten as the line moves: that would cost a write per queued
        build per start. The build starts the moment a slot frees, without a write until then.
        """
        status = build.status
        if (status.phase, status.reason, status.observed_generation, status.rebuild,
                status.trigger) == (Phase.PENDING, Reason.QUEUED, build.generation,
                                    build.rebuild_token, start.trigger):
            return
        message = queued_message(place, build.namespace)
        log.info(f"Queued: {message}.")
        await self._write(build, phase=Phase.PENDING, reason=Reason.QUEUED, message=message,
                          pod_name=None, attempt=None, start_time=None, completion_time=None,
                          start=start, **_NO_RESULT)

    def _disallowed_registries(self, build: ImageBuild) -> str | None:
        """The output or cache registry outside STAGEWRIGHT_REGISTRY_ALLOW, described."""
        spec = build.spec
        cache = ImageReference.parse(spec.cache_repo).registry if spec.cache.enabled else None
        for what, host in (("output.image's registry", spec.output.registry),
                           ("cache.repo's registry", cache)):
            if host is not None and not host_allowed(host, self.settings.registry_allow):
                return f"{what} {host}"
        return None

    async def _clean_up_pods(self, namespace: str, name: str, uid: str,
                             status: ImageBuildStatus, log: Logger,
                             current: Collection[str] = ()) -> None:
        """Cancel every unfinished build but ``current``; keep only the last finished pod(s).

        Found by label and owner, not from status alone, so a pod whose status write was lost
        (an operator crash between the two) is cancelled too, and old pods do not pile up.
        ``current`` are the pods this build request would create: launching adopts them.
        """
        pods = await self.api.list_pods(namespace, f"{LABEL_IMAGEBUILD}={imagebuild_label(name)}")
        last = {status.pod_name, *(entry.pod for entry in status.platforms or [])}
        for pod in pods:
            meta = pod["metadata"]
            if not any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
                continue
            finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            if meta["name"] in current or (finished and meta["name"] in last):
                continue  # the pod to adopt, or the last build's pod(s) (kept for their logs)
            deleted = await self.api.delete_pod(namespace, meta["name"])
            if deleted and not finished:
                log.info(f"Cancelled pod {meta['name']}: the spec or the rebuild request "
                         "changed while it was building.")

    @staticmethod
    def _first_pods(build: ImageBuild, key: str) -> list[str]:
        """The pods of a build request's first attempt: one, or one per platform."""
        if build.spec.platforms:
            return [entry.pod for entry in launched(build, key) if entry.pod]
        return [pod_name(build.name, key, 1)]

    async def _launch(self, build: ImageBuild, log: Logger, key: str, *, attempt: int,
                      note: str, files: list[ContextFile], start: Start | None = None,
                      prepared: Prepared | None = None) -> bool:
        """Create (or adopt) the build pod, one per platform with ``prepared`` (a
        multi-platform build), and record it; False when no pod runs for it.

        ``start``: the build's first attempt (its causes and inputs are written with it); a
        retry builds from the inputs its first attempt recorded.
        """
        inputs = start.inputs if start is not None else build.status.inputs
        commit = inputs.commit if inputs else None
        if prepared is None:
            pods = [build_pod(build, self.settings, key=key, attempt=attempt, files=files,
                              commit=commit)]
        else:
            entries = launched(build, key, attempt)
            pods = self.platforms.pods(build, key, prepared, entries, files=files, commit=commit)
        for index, pod in enumerate(pods):
            if not await self._create(build, log, pod, start):
                for sibling in pods[:index]:  # no platform builds alone
                    await self.api.delete_pod(build.namespace, sibling["metadata"]["name"])
                return False
        name = pods[0]["metadata"]["name"]
        if prepared is None:
            message = f"{note}Building target {build.spec.target or '(last stage)'} in pod {name}."
            fields: dict[str, Any] = {}
        else:
            message = building_message(build, entries, self.settings.build_platform,
                                       prepared.pinned)
            fields = status_fields(entries)
        await self._write(
            build, phase=Phase.BUILDING, reason=Reason.RETRYING if note else Reason.BUILDING,
            message=message, attempt=attempt, start_time=now_iso(), completion_time=None,
            start=start, **{**_NO_RESULT, "pod_name": name, **fields},
        )
        return True

    async def _create(self, build: ImageBuild, log: Logger, pod: dict[str, Any],
                      start: Start | None) -> bool:
        """Create (or adopt) one build pod; False, with the status saying why, when it
        cannot be."""
        name = pod["metadata"]["name"]
        try:
            created, new = await self.api.create_pod(pod)
        except ApiError as exc:
            await self._pod_refused(build, log, exc, start)
            return False
        owners = created["metadata"].get("ownerReferences") or []
        if build.uid and not any(o.get("uid") == build.uid for o in owners):
            await self._write(build, phase=Phase.FAILED, reason=Reason.POD_CONFLICT,
                              message=f"Pod {name} already exists and is not owned by this "
                              "ImageBuild. Delete or rename that pod, then set the "
                              "stagewright.dev/rebuild annotation to build again.",
                              completion=True, pod_name=None)
            return False
        platform = pod["metadata"]["annotations"].get(ANNOTATION_PLATFORM)
        log.info(f"{'Created' if new else 'Adopted'} pod {name} for target "
                 f"{build.spec.target or '(last stage)'}"
                 + (f" on {platform}." if platform else "."))
        return True

    async def _pod_refused(self, build: ImageBuild, log: Logger, exc: ApiError,
                           start: Start | None) -> None:
        """The API server would not create the build pod: fail, wait, or drop the build as
        the refusal says (``admission``)."""
        refusal = pod_refusal(exc.status, exc.message, build.namespace)
        if refusal is None:
            raise exc
        if refusal.answer is Answer.DROP:
            log.info(refusal.message)
        elif refusal.answer is Answer.WAIT:  # the resync tries again
            await self._write_if_changed(build, log, phase=Phase.PENDING,
                                         reason=refusal.reason, message=refusal.message,
                                         start=start)
        else:
            log.error(refusal.message)
            await self._write(build, phase=Phase.FAILED, reason=refusal.reason,
                              message=refusal.message, pod_name=None, completion=True)

    async def _follow(self, build: ImageBuild, log: Logger, key: str,
                      seen: dict[str, Any] | None) -> None:
        if build.spec.platforms:
            await self._follow_platforms(build, log, key)
            return
        status = build.status
        if seen is not None and seen["metadata"]["name"] == status.pod_name:
            pod: dict[str, Any] | None = seen
        elif status.pod_name:
            pod = await self.api.get_pod(build.namespace, status.pod_name)
        else:
            pod = None
        if pod is None:
            outcome = PodOutcome(finished=True, reason=Reason.POD_LOST,
                                 message=f"Build pod {status.pod_name} disappeared.")
        else:
            outcome = await pod_outcome(self.api, self.settings, build, pod)
        checks = check_results(pod) if pod is not None and build.spec.checks else None
        if not outcome.finished:
            await self._while_running(build, log, outcome)
        elif outcome.succeeded and outcome.digest:
            await self.completion.complete(build, log, outcome.digest, outcome.finished_at,
                                           checks, record=partial(self._finish, build),
                                           builder_image=builder_image(pod) if pod else None)
        elif outcome.infrastructure_failure and (status.attempt or 1) <= build.spec.retries:
            log.warning(f"Build pod {status.pod_name} failed ({outcome.reason}); retrying.")
            refs = await build_references(self.api, self.settings, build)
            await self._launch(build, log, key, attempt=(status.attempt or 1) + 1,
                               note=f"Attempt {status.attempt or 1} failed "
                               f"({outcome.reason}: {outcome.message}). ", files=refs.files)
        else:
            assert outcome.reason is not None
            first_line = outcome.message.splitlines()[0] if outcome.message else ""
            log.warning(f"Build failed ({outcome.reason}): {first_line}")
            await self._write(build, phase=Phase.FAILED, reason=outcome.reason,
                              message=outcome.message, completion=True, checks=checks)

    async def _follow_platforms(self, build: ImageBuild, log: Logger, key: str) -> None:
        """A multi-platform build: every platform's pod, and the one step they call for."""
        step = await self.platforms.observe(build, key)
        match step:
            case Built():
                await self.platforms.complete(build, log, step, partial(self._finish, build))
            case Failing():
                await self.platforms.stop(build, log, step.stop)
                log.warning(f"Build failed ({step.reason}): {step.message.splitlines()[0]}")
                await self._write(build, phase=Phase.FAILED, reason=step.reason,
                                  message=step.message, completion=True, checks=step.checks,
                                  **status_fields(step.platforms))
            case Retrying():
                log.warning(step.message)
                refs = await build_references(self.api, self.settings, build)
                prepared = await self.platforms.prepare(build, log, refs.dockerfile)
                if isinstance(prepared, Refused):  # its ConfigMap changed since
                    await self._write(build, phase=Phase.FAILED, reason=prepared.reason,
                                      message=prepared.message, completion=True,
                                      **status_fields(step.platforms))
                    return
                inputs = build.status.inputs
                for pod in self.platforms.pods(build, key, prepared, step.retry,
                                               files=refs.files,
                                               commit=inputs.commit if inputs else None):
                    if not await self._create(build, log, pod, None):
                        return
                await self._write(build, phase=Phase.BUILDING, reason=Reason.RETRYING,
                                  message=step.message, **status_fields(step.platforms))
            case Waiting(changed=True):
                await self._write(build, phase=step.phase, reason=step.reason,
                                  message=step.message, **status_fields(step.platforms))

    async def _while_running(self, build: ImageBuild, log: Logger, outcome: PodOutcome) -> None:
        """Surface a pod that cannot start, and enforce the deadline if it never does."""
        status = build.status
        started = parse_iso(status.start_time)
        deadline = timedelta(seconds=deadline_seconds(build.spec, self.settings))
        if started and datetime.now(UTC) - started > deadline + DEADLINE_GRACE:
            await self.api.delete_pod(build.namespace, status.pod_name or "")
            await self._write(build, phase=Phase.FAILED, reason=Reason.TIMEOUT,
                              message=f"The build did not finish within {deadline} "
                              f"(pod {status.pod_name} never completed).", completion=True)
        elif outcome.waiting:
            await self._write_if_changed(build, log, phase=Phase.PENDING,
                                         reason=outcome.waiting_reason,
                                         message=outcome.waiting, keep_pod=True)
        elif status.phase is Phase.PENDING:
            await self._write(build, phase=Phase.BUILDING, reason=Reason.BUILDING,
                              message=f"Building in pod {status.pod_name}.")

    async def _reject(self, body: dict[str, Any], error: ValidationError, log: Logger) -> None:
        """An ImageBuild the API server accepted but the operator cannot build: say why."""
        meta = body["metadata"]
        generation = int(meta.get("generation") or 1)
        message = "Invalid spec: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        try:
            previous = ImageBuildStatus.model_validate(body.get("status") or {})
        except ValidationError:
            previous = ImageBuildStatus()  # an unreadable status is overwritten, not obeyed
        if previous.observed_generation == generation and previous.reason == Reason.INVALID_SPEC:
            return  # already said; never a retry loop on bad input
        await self._clean_up_pods(meta["namespace"], meta["name"], str(meta.get("uid") or ""),
                                  previous, log)
        log.error(message)
        patch = status_patch(previous, phase=Phase.FAILED, reason=Reason.INVALID_SPEC,
                             message=message, generation=generation, pod_name=None,
                             completion_time=now_iso(), **_NO_RESULT)
        await self.api.patch_imagebuild_status(meta["namespace"], meta["name"], patch)
        self._reconciled_at.pop((meta["namespace"], meta["name"]), None)
        self._written.pop((meta["namespace"], meta["name"]), None)
        if self.metrics is not None:
            self.metrics.build_finished(Phase.FAILED.value, Reason.INVALID_SPEC.value, None)
        await self._post_event(meta, Reason.INVALID_SPEC, message)

    async def _finish(self, build: ImageBuild, verdict: Verdict) -> None:
        """The completion path's one write: the build's end, as it decided it."""
        await self._write(build, phase=verdict.phase, reason=verdict.reason,
                          message=verdict.message, completion=True,
                          conditions=verdict.conditions, **verdict.fields)
        if verdict.warning is not None:
            await self._post_event(build.metadata, *verdict.warning)

    async def _write_if_changed(self, build: ImageBuild, log: Logger, *, phase: Phase,
                                reason: Reason, message: str, keep_pod: bool = False,
                                start: Start | None = None) -> None:
        """A waiting state, written once: the resync re-checks it without re-writing it.

        Unless the wait is for this build's pod (``keep_pod``), there is no pod, attempt or
        result to show, so the last build's are cleared.
        """
        status = build.status
        trigger = start.trigger if start is not None else status.trigger
        if (status.phase, status.reason, status.message, status.observed_generation,
                status.rebuild, status.trigger) == (phase, reason, message, build.generation,
                                                    build.rebuild_token, trigger):
            return
        log.warning(message)
        fields: dict[str, Any] = {} if keep_pod else dict(
            pod_name=None, attempt=None, start_time=None, completion_time=None, **_NO_RESULT)
        await self._write(build, phase=phase, reason=reason, message=message, start=start,
                          **fields)

    async def _write(self, build: ImageBuild, *, phase: Phase, reason: Reason, message: str,
                     completion: bool = False, start: Start | None = None,
                     **fields: Any) -> None:
        """One status patch for one transition of the current generation and rebuild.

        ``start``: the transition starts a build (or waits to): its causes and inputs, and a
        trigger's token and hourly count, go in the same patch.
        """
        if start is not None:
            fields.update(start.status_fields())
        if completion:
            fields["completion_time"] = now_iso()
            causes = start.causes if start is not None else build.status.causes
            fields["history"] = history_with(build.status, BuildRecord(
                generation=build.generation, rebuild=build.rebuild_token, phase=phase,
                reason=reason.value, digest=fields.get("digest"), size=fields.get("size"),
                start_time=build.status.start_time, completion_time=fields["completion_time"],
                cache_hits=(fields.get("cache") or {}).get("hits"), causes=causes,
                signed_by=(fields.get("signing") or {}).get("keyId")))
        patch = status_patch(build.status, phase=phase, reason=reason, message=message,
                             generation=build.generation, rebuild=build.rebuild_token, **fields)
        updated = await self.api.patch_imagebuild_status(build.namespace, build.name, patch)
        key = (build.namespace, build.name)
        if updated is not None and not completion:
            updated["metadata"].pop("managedFields", None)  # half its size; never read here
            self._written[key] = updated
        else:
            self._written.pop(key, None)
        if completion:
            self._reconciled_at.pop((build.namespace, build.name), None)
            self._leave_queue(build.namespace, build.name)  # if its pod's end went unseen
        if completion and self.metrics is not None:
            started = parse_iso(build.status.start_time)
            seconds = (datetime.now(UTC) - started).total_seconds() if started else None
            self.metrics.build_finished(phase.value, reason.value, seconds)
        if reason in WARNINGS:
            await self._post_event(build.metadata, reason, message)

    async def _post_event(self, metadata: dict[str, Any], reason: Reason, message: str,
                          kind: str = "Warning") -> None:
        """Tell a person through an Event (Warning by default); a refused Event never stops
        a build."""
        event = build_event({"namespace": "default", **metadata}, reason=reason.value,
                            message=message, now=now_iso(), event_type=kind)
        try:
            await self.api.create_event(event)
        except ApiError as exc:
            _log.warning(f"Could not post the {reason} Event for "
                         f"{event['metadata']['namespace']}/{metadata.get('name')}: {exc}")


__all__ = ["ApiError", "Reconciler"]
