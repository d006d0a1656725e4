"""Level-based reconciliation of one ImageBuild: read the truth, take one step, record it.

Every trigger (an ImageBuild event, a build pod event, the periodic resync) lands here, and
each run re-reads the ImageBuild and its pod, so a lost event or an operator restart never
loses or duplicates a build. State lives in ``status`` only: no finalizer, no annotations.
A happy build costs three writes: create the pod, status Building, status Succeeded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import ImageBuild, ImageBuildStatus, Phase
from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.registry import (
    ImageInfo,
    ImageNotFound,
    ImageReference,
    RegistryClient,
    RegistryError,
)
from stagewright.resources.kaniko_pod import build_key, build_pod, deadline_seconds
from stagewright.settings import Settings
from stagewright.status import PodOutcome, classify_pod, human_size, now_iso, status_patch

#: How long past its deadline a pod that never started is given before the operator gives up
#: on it (activeDeadlineSeconds only counts once a kubelet has started the pod).
_DEADLINE_GRACE = timedelta(minutes=2)

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class Reconciler:
    """Drives ImageBuilds towards a finished build of their current spec."""

    def __init__(self, api: KubeApi, registry: RegistryClient, settings: Settings) -> None:
        self.api = api
        self.registry = registry
        self.settings = settings
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def forget(self, namespace: str, name: str) -> None:
        """Drop per-object state once an ImageBuild is deleted."""
        self._locks.pop((namespace, name), None)

    async def reconcile(self, namespace: str, name: str, logger: Logger) -> None:
        """Take the next step for one ImageBuild; serialised per object.

        ``logger`` is kopf's per-object logger where there is one: its messages become
        Kubernetes Events on the ImageBuild.
        """
        async with self._locks[(namespace, name)]:
            body = await self.api.get_imagebuild(namespace, name)
            if body is None:
                self.forget(namespace, name)
                return
            try:
                build = ImageBuild.model_validate(body)
            except ValidationError as exc:
                await self._reject(body, exc, logger)
                return
            await self._step(build, logger)

    async def _step(self, build: ImageBuild, log: Logger) -> None:
        status = build.status
        key = build_key(build.generation, build.rebuild_token)
        new_request = status.observed_generation is None or key != build_key(
            status.observed_generation, status.rebuild)
        waiting_to_launch = status.phase is Phase.PENDING and not status.pod_name
        if new_request or status.phase is None or waiting_to_launch:
            await self._start_new_build(build, log, key)
            return
        if status.phase in (Phase.SUCCEEDED, Phase.FAILED):
            return  # a finished build is never repeated; a new generation or rebuild is
        await self._follow(build, log, key)

    async def _start_new_build(self, build: ImageBuild, log: Logger, key: str) -> None:
        await self._cancel_running(build.namespace, build.status, log)
        missing = await self._missing_references(build)
        if missing:
            # A pod would only wait on the missing volume without saying why: say it here,
            # and launch once the object exists (the resync looks again).
            message = (f"Waiting for {', '.join(missing)} in namespace {build.namespace}; "
                       "the build starts when it exists.")
            if build.status.message != message or build.status.pod_name:
                log.warning(message)
                await self._write(build, phase=Phase.PENDING, reason=Reason.REFERENCE_NOT_FOUND,
                                  message=message, rebuild=build.rebuild_token, pod_name=None)
            return
        await self._launch(build, log, key, attempt=1, note="")

    async def _missing_references(self, build: ImageBuild) -> list[str]:
        """The ConfigMap and Secrets the build pod would mount or read, that do not exist."""
        spec, namespace = build.spec, build.namespace
        secrets = [ref.name for ref in (spec.output.push_secret_ref,
                                        spec.source.git.secret_ref if spec.source.git else None)
                   if ref is not None]
        missing = [f"Secret {name}" for name in secrets
                   if await self.api.get_secret(namespace, name) is None]
        config_map = spec.source.config_map
        if config_map and await self.api.get_configmap(namespace, config_map.name) is None:
            missing.insert(0, f"ConfigMap {config_map.name}")
        return missing

    async def _cancel_running(self, namespace: str, status: ImageBuildStatus,
                              log: Logger) -> None:
        """Delete the pod of a superseded build: one build per generation, never two."""
        running = status.phase in (Phase.PENDING, Phase.BUILDING)
        if running and status.pod_name and await self.api.delete_pod(namespace, status.pod_name):
            log.info(f"Cancelled pod {status.pod_name}: the spec or the rebuild request "
                     "changed while it was building.")

    async def _launch(self, build: ImageBuild, log: Logger, key: str, *, attempt: int,
                      note: str) -> None:
        pod = build_pod(build, self.settings, key=key, attempt=attempt)
        name = pod["metadata"]["name"]
        try:
            created, new = await self.api.create_pod(pod)
        except ApiError as exc:
            if exc.status not in (400, 422):
                raise
            # The spec passed the CRD schema but makes an invalid Pod (e.g. a bad quantity).
            await self._write(build, phase=Phase.FAILED, reason=Reason.INVALID_SPEC,
                              message=f"The API server rejected the build pod: {exc.message}",
                              rebuild=build.rebuild_token, pod_name=None, completion=True)
            return
        owners = created["metadata"].get("ownerReferences") or []
        if build.uid and not any(o.get("uid") == build.uid for o in owners):
            await self._write(build, phase=Phase.FAILED, reason=Reason.POD_CONFLICT,
                              message=f"Pod {name} already exists and is not owned by this "
                              "ImageBuild. Delete or rename that pod, then set the "
                              "stagewright.dev/rebuild annotation to build again.",
                              completion=True)
            return
        log.info(f"{'Created' if new else 'Adopted'} pod {name} for target "
                         f"{build.spec.target or '(last stage)'}.")
        message = f"{note}Building target {build.spec.target or '(last stage)'} in pod {name}."
        await self._write(
            build, phase=Phase.BUILDING, reason=Reason.RETRYING if note else Reason.BUILDING,
            message=message, rebuild=build.rebuild_token, pod_name=name, attempt=attempt,
            start_time=now_iso(), completion_time=None, image=None, digest=None,
            short_digest=None, size=None, size_human=None, layers=None,
        )

    async def _follow(self, build: ImageBuild, log: Logger, key: str) -> None:
        status = build.status
        pod = await self.api.get_pod(build.namespace, status.pod_name) if status.pod_name else None
        if pod is None:
            outcome = PodOutcome(finished=True, reason=Reason.POD_LOST,
                                 message=f"Build pod {status.pod_name} disappeared.")
        else:
            outcome = classify_pod(pod, message_limit=self.settings.message_limit)
        if not outcome.finished:
            await self._while_running(build, outcome)
        elif outcome.succeeded and outcome.digest:
            await self._succeed(build, log, outcome.digest)
        elif outcome.infrastructure_failure and (status.attempt or 1) <= build.spec.retries:
            log.warning(f"Build pod {status.pod_name} failed ({outcome.reason}); "
                                "retrying.")
            await self._launch(build, log, key, attempt=(status.attempt or 1) + 1,
                               note=f"Attempt {status.attempt or 1} failed "
                               f"({outcome.reason}: {outcome.message}). ")
        else:
            assert outcome.reason is not None
            log.warning(f"Build failed ({outcome.reason}): "
                                f"{outcome.message.splitlines()[0] if outcome.message else ''}")
            await self._write(build, phase=Phase.FAILED, reason=outcome.reason,
                              message=outcome.message, completion=True)

    async def _while_running(self, build: ImageBuild, outcome: PodOutcome) -> None:
        """Surface a pod that cannot start, and enforce the deadline if it never does."""
        status = build.status
        started = _parse_time(status.start_time)
        deadline = timedelta(seconds=deadline_seconds(build.spec, self.settings))
        if started and datetime.now(UTC) - started > deadline + _DEADLINE_GRACE:
            await self.api.delete_pod(build.namespace, status.pod_name or "")
            await self._write(build, phase=Phase.FAILED, reason=Reason.TIMEOUT,
                              message=f"The build did not finish within {deadline} "
                              f"(pod {status.pod_name} never completed).", completion=True)
        elif outcome.waiting and status.message != outcome.waiting:
            await self._write(build, phase=Phase.PENDING, reason=Reason.WAITING,
                              message=outcome.waiting)
        elif not outcome.waiting and status.phase is Phase.PENDING:
            await self._write(build, phase=Phase.BUILDING, reason=Reason.BUILDING,
                              message=f"Building in pod {status.pod_name}.")

    async def _succeed(self, build: ImageBuild, log: Logger, digest: str) -> None:
        """Confirm Kaniko's digest at the registry and record the image's size."""
        reference = ImageReference.parse(f"{build.spec.output.image}@{digest}")
        try:
            info = await self._resolve(build, reference)
        except ImageNotFound as exc:
            await self._write(build, phase=Phase.FAILED, reason=Reason.DIGEST_UNVERIFIED,
                              message=f"Kaniko reported {digest}, but the registry does not "
                              f"serve it: {exc}", completion=True)
            return
        except RegistryError as exc:
            if exc.temporary:
                raise  # the registry is down or busy: the resync tries again
            # Kaniko pushed (exit code 0) with credentials the operator cannot use, e.g. a
            # node's workload identity: the build succeeded, its size is unknown.
            log.warning(f"Could not check {digest} at the registry: {exc}")
            await self._write(
                build, phase=Phase.SUCCEEDED, reason=Reason.SUCCEEDED, completion=True,
                message=f"Pushed; digest not checked at the registry ({exc}).",
                image=f"{build.spec.output.image}@{digest}", digest=digest,
                short_digest=digest.split(":", 1)[1][:12],
            )
            return
        size_text = human_size(info.size)
        log.info(f"Built {build.spec.output.image}@{digest} ({size_text}, "
                         f"{info.layers} layers).")
        await self._write(
            build, phase=Phase.SUCCEEDED, reason=Reason.SUCCEEDED,
            message=f"Pushed {len(build.spec.output.tags)} tag(s), {size_text}.",
            completion=True, image=f"{build.spec.output.image}@{info.digest}",
            digest=info.digest, short_digest=info.digest.split(":", 1)[1][:12],
            size=info.size, size_human=size_text, layers=info.layers,
        )

    async def _resolve(self, build: ImageBuild, reference: ImageReference) -> ImageInfo:
        docker_config = await self._docker_config(build)
        return await self.registry.resolve(reference, insecure=build.spec.output.insecure,
                                           docker_config=docker_config)

    async def _docker_config(self, build: ImageBuild) -> dict[str, Any] | None:
        """The push Secret's dockerconfigjson, which also grants the operator read access."""
        ref = build.spec.output.push_secret_ref
        if ref is None:
            return None
        secret = await self.api.get_secret(build.namespace, ref.name)
        encoded = ((secret or {}).get("data") or {}).get(".dockerconfigjson")
        if not encoded:
            raise RegistryError(f"Secret {ref.name} has no .dockerconfigjson key; the "
                                "operator cannot check the pushed image")
        try:
            config = json.loads(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise RegistryError(f"Secret {ref.name} holds no valid .dockerconfigjson "
                                f"({exc})") from exc
        if not isinstance(config, dict):
            raise RegistryError(f"Secret {ref.name}: .dockerconfigjson is not a JSON object")
        return config

    async def _reject(self, body: dict[str, Any], error: ValidationError, log: Logger) -> None:
        """An ImageBuild the API server accepted but the operator cannot build: say why."""
        generation = int(body.get("metadata", {}).get("generation") or 1)
        message = "Invalid spec: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        previous = ImageBuildStatus.model_validate(body.get("status") or {})
        if previous.observed_generation == generation and previous.reason == Reason.INVALID_SPEC:
            return  # already said; never a retry loop on bad input
        meta = body["metadata"]
        await self._cancel_running(meta["namespace"], previous, log)
        log.error(message)
        patch = status_patch(previous, phase=Phase.FAILED, reason=Reason.INVALID_SPEC,
                             message=message, generation=generation, pod_name=None,
                             completion_time=now_iso())
        await self.api.patch_imagebuild_status(meta["namespace"], meta["name"], patch)

    async def _write(self, build: ImageBuild, *, phase: Phase, reason: Reason, message: str,
                     completion: bool = False, **fields: Any) -> None:
        """One status patch for one transition."""
        if completion:
            fields["completion_time"] = now_iso()
        patch = status_patch(build.status, phase=phase, reason=reason, message=message,
                             generation=build.generation, **fields)
        await self.api.patch_imagebuild_status(build.namespace, build.name, patch)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


__all__ = ["ApiError", "Reconciler"]
