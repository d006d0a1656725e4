"""Level-based reconciliation of one ImageBuild: read the truth, take one step, record it.

Every trigger (an ImageBuild event, a build pod event, the periodic resync) lands here, and
each run re-reads the ImageBuild and its pods, so a lost event or an operator restart never
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
from typing import Any, cast

import kopf
from pydantic import ValidationError

from stagewright.api.reasons import WARNINGS, Reason
from stagewright.api.v1alpha1 import ContextFile, ImageBuild, ImageBuildStatus, Phase
from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.registry import (
    ImageInfo,
    ImageNotFound,
    ImageReference,
    InvalidManifest,
    RegistryClient,
    RegistryError,
)
from stagewright.registry.egress import host_allowed
from stagewright.resources.events import build_event
from stagewright.resources.kaniko_pod import (
    LABEL_IMAGEBUILD,
    build_key,
    build_pod,
    context_files,
    deadline_seconds,
    imagebuild_label,
    missing_context_keys,
    pod_name,
)
from stagewright.settings import Settings
from stagewright.status import PodOutcome, classify_pod, human_size, now_iso, status_patch

#: How long past its deadline a pod that never started is given before the operator gives up
#: on it (activeDeadlineSeconds only counts once a kubelet has started the pod).
_DEADLINE_GRACE = timedelta(minutes=2)
#: How long after Kaniko's exit a registry that does not (yet) serve the digest, or cannot be
#: reached, is asked again before the operator records what it knows.
_VERIFY_GRACE = timedelta(minutes=5)
#: The status fields of a build's result, cleared when a new build starts.
_NO_RESULT: dict[str, Any] = dict(
    image=None, digest=None, short_digest=None, size=None, size_human=None, layers=None,
)

Logger = logging.Logger | logging.LoggerAdapter[Any]
_log = logging.getLogger("stagewright")


class Reconciler:
    """Drives ImageBuilds towards a finished build of their current spec."""

    def __init__(self, api: KubeApi, registry: RegistryClient, settings: Settings,
                 kopf_settings: kopf.OperatorSettings | None = None) -> None:
        self.api = api
        self.registry = registry
        self.settings = settings
        # With kopf's settings, log lines name the ImageBuild as kopf's own do.
        self._kopf_settings = kopf_settings
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def forget(self, namespace: str, name: str) -> None:
        """Drop per-object state once an ImageBuild is deleted."""
        self._locks.pop((namespace, name), None)

    async def reconcile(self, namespace: str, name: str) -> None:
        """Take the next step for one ImageBuild; serialised per object."""
        async with self._locks[(namespace, name)]:
            body = await self.api.get_imagebuild(namespace, name)
            if body is None:
                self.forget(namespace, name)
                return
            if body["metadata"].get("deletionTimestamp"):
                return  # going away: its pods go with it; never start another
            log = self._logger(body)
            try:
                build = ImageBuild.model_validate(body)
            except ValidationError as exc:
                await self._reject(body, exc, log)
                return
            await self._step(build, log)

    def _logger(self, body: dict[str, Any]) -> Logger:
        if self._kopf_settings is None:
            return _log
        return kopf.ObjectLogger(body=kopf.Body(cast(kopf.RawBody, body)),
                                 settings=self._kopf_settings)

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
        await self._clean_up_pods(build.namespace, build.name, build.uid, build.status, log,
                                  current=pod_name(build.name, key, 1))
        refused = self._disallowed_registries(build)
        if refused:
            await self._write(
                build, phase=Phase.FAILED, reason=Reason.REGISTRY_NOT_ALLOWED, completion=True,
                message=f"{refused} is not among the registries this operator may use "
                f"({', '.join(self.settings.registry_allow)}); ask your cluster admin, or "
                "push to an allowed registry.", pod_name=None, **_NO_RESULT)
            return
        missing, files = await self._references(build)
        if missing:
            # A pod would only wait on the missing volume without saying why: say it here,
            # and launch once the object exists (the resync looks again).
            await self._write_if_changed(
                build, log, phase=Phase.PENDING, reason=Reason.REFERENCE_NOT_FOUND,
                message=f"Waiting for {', '.join(missing)} in namespace {build.namespace}; "
                "the build starts when it exists.")
            return
        await self._launch(build, log, key, attempt=1, note="", files=files)

    def _disallowed_registries(self, build: ImageBuild) -> str | None:
        """The output or cache registry outside STAGEWRIGHT_REGISTRY_ALLOW, described."""
        spec = build.spec
        cache = ImageReference.parse(spec.cache_repo).registry if spec.cache.enabled else None
        for what, host in (("output.image's registry", spec.output.registry),
                           ("cache.repo's registry", cache)):
            if host is not None and not host_allowed(host, self.settings.registry_allow):
                return f"{what} {host}"
        return None

    async def _references(self, build: ImageBuild) -> tuple[list[str], list[ContextFile]]:
        """What the build pod would mount or read that does not exist, and the context files.

        The ConfigMap context is read here anyway (to report it missing), so its keys, which
        the pod mounts one by one, come from the same read.
        """
        spec, namespace = build.spec, build.namespace
        missing: list[str] = []
        files: list[ContextFile] = []
        source = spec.source.config_map
        if source is not None:
            config_map = await self.api.get_configmap(namespace, source.name)
            if config_map is None:
                missing.append(f"ConfigMap {source.name}")
            else:
                keys = [*(config_map.get("data") or {}), *(config_map.get("binaryData") or {})]
                missing += [f"key {key} of ConfigMap {source.name}"
                            for key in missing_context_keys(source, keys)]
                files = context_files(source, keys)
        bundle = self.settings.ca_bundle_configmap
        if bundle and await self.api.get_configmap(namespace, bundle) is None:
            missing.append(f"ConfigMap {bundle} (the operator's CA bundle)")
        git_secret = spec.source.git.secret_ref if spec.source.git else None
        for ref in (spec.output.push_secret_ref, git_secret):
            if ref is not None and await self.api.get_secret(namespace, ref.name) is None:
                missing.append(f"Secret {ref.name}")
        return missing, files

    async def _clean_up_pods(self, namespace: str, name: str, uid: str,
                             status: ImageBuildStatus, log: Logger,
                             current: str | None = None) -> None:
        """Cancel every unfinished build but ``current``; keep only the last finished pod.

        Found by label and owner, not from status alone, so a pod whose status write was lost
        (an operator crash between the two) is cancelled too, and old pods do not pile up.
        ``current`` is the pod this build request would create: launching adopts it.
        """
        pods = await self.api.list_pods(namespace, f"{LABEL_IMAGEBUILD}={imagebuild_label(name)}")
        for pod in pods:
            meta = pod["metadata"]
            if not any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
                continue
            finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            if meta["name"] == current or (finished and meta["name"] == status.pod_name):
                continue  # the pod to adopt, or the last build's pod (kept for its logs)
            deleted = await self.api.delete_pod(namespace, meta["name"])
            if deleted and not finished:
                log.info(f"Cancelled pod {meta['name']}: the spec or the rebuild request "
                         "changed while it was building.")

    async def _launch(self, build: ImageBuild, log: Logger, key: str, *, attempt: int,
                      note: str, files: list[ContextFile]) -> None:
        pod = build_pod(build, self.settings, key=key, attempt=attempt, files=files)
        name = pod["metadata"]["name"]
        try:
            created, new = await self.api.create_pod(pod)
        except ApiError as exc:
            await self._pod_refused(build, log, exc)
            return
        owners = created["metadata"].get("ownerReferences") or []
        if build.uid and not any(o.get("uid") == build.uid for o in owners):
            await self._write(build, phase=Phase.FAILED, reason=Reason.POD_CONFLICT,
                              message=f"Pod {name} already exists and is not owned by this "
                              "ImageBuild. Delete or rename that pod, then set the "
                              "stagewright.dev/rebuild annotation to build again.",
                              completion=True, pod_name=None)
            return
        log.info(f"{'Created' if new else 'Adopted'} pod {name} for target "
                 f"{build.spec.target or '(last stage)'}.")
        message = f"{note}Building target {build.spec.target or '(last stage)'} in pod {name}."
        await self._write(
            build, phase=Phase.BUILDING, reason=Reason.RETRYING if note else Reason.BUILDING,
            message=message, pod_name=name, attempt=attempt, start_time=now_iso(),
            completion_time=None, **_NO_RESULT,
        )

    async def _pod_refused(self, build: ImageBuild, log: Logger, exc: ApiError) -> None:
        """The API server would not create the build pod: say why in status, or retry."""
        if exc.status in (400, 422):
            # The spec passed the CRD schema but makes an invalid Pod (e.g. a bad quantity).
            await self._write(build, phase=Phase.FAILED, reason=Reason.INVALID_SPEC,
                              message=f"The API server rejected the build pod: {exc.message}",
                              pod_name=None, completion=True)
        elif exc.status == 403 and "exceeded quota" in exc.message:
            # A ResourceQuota: the build starts when capacity frees up (the resync retries).
            await self._write_if_changed(build, log, phase=Phase.PENDING,
                                         reason=Reason.POD_REJECTED, message=exc.message)
        elif exc.status == 403:
            # Pod Security admission, a policy webhook, or the operator's own RBAC.
            log.error(f"The build pod was refused: {exc.message}")
            await self._write(build, phase=Phase.FAILED, reason=Reason.POD_REJECTED,
                              message=f"The API server refused the build pod: {exc.message}",
                              pod_name=None, completion=True)
        else:
            raise exc

    async def _follow(self, build: ImageBuild, log: Logger, key: str) -> None:
        status = build.status
        pod = await self.api.get_pod(build.namespace, status.pod_name) if status.pod_name else None
        if pod is None:
            outcome = PodOutcome(finished=True, reason=Reason.POD_LOST,
                                 message=f"Build pod {status.pod_name} disappeared.")
        else:
            outcome = classify_pod(pod, message_limit=self.settings.message_limit)
        if not outcome.finished:
            await self._while_running(build, log, outcome)
        elif outcome.succeeded and outcome.digest:
            await self._succeed(build, log, outcome.digest, outcome.finished_at)
        elif outcome.infrastructure_failure and (status.attempt or 1) <= build.spec.retries:
            log.warning(f"Build pod {status.pod_name} failed ({outcome.reason}); retrying.")
            _, files = await self._references(build)
            await self._launch(build, log, key, attempt=(status.attempt or 1) + 1,
                               note=f"Attempt {status.attempt or 1} failed "
                               f"({outcome.reason}: {outcome.message}). ", files=files)
        else:
            assert outcome.reason is not None
            first_line = outcome.message.splitlines()[0] if outcome.message else ""
            log.warning(f"Build failed ({outcome.reason}): {first_line}")
            await self._write(build, phase=Phase.FAILED, reason=outcome.reason,
                              message=outcome.message, completion=True)

    async def _while_running(self, build: ImageBuild, log: Logger, outcome: PodOutcome) -> None:
        """Surface a pod that cannot start, and enforce the deadline if it never does."""
        status = build.status
        started = _parse_time(status.start_time)
        deadline = timedelta(seconds=deadline_seconds(build.spec, self.settings))
        if started and datetime.now(UTC) - started > deadline + _DEADLINE_GRACE:
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

    async def _succeed(self, build: ImageBuild, log: Logger, digest: str,
                       finished_at: str | None) -> None:
        """Confirm Kaniko's digest at the registry and record the image's size."""
        image = f"{build.spec.output.image}@{digest}"
        finished = _parse_time(finished_at) or datetime.now(UTC)
        patient = datetime.now(UTC) - finished < _VERIFY_GRACE
        try:
            info = await self._resolve(build, ImageReference.parse(image))
        except (ImageNotFound, InvalidManifest) as exc:
            if isinstance(exc, ImageNotFound) and patient:
                raise  # a replicated registry may lag behind the push: the resync asks again
            await self._write(build, phase=Phase.FAILED, reason=Reason.DIGEST_UNVERIFIED,
                              message=f"Kaniko reported {digest}, but the registry does not "
                              f"serve it: {exc}", completion=True)
            return
        except RegistryError as exc:
            if exc.temporary and patient:
                raise  # the registry is down or busy: the resync tries again
            # Kaniko pushed (exit code 0) with access the operator lacks (a node's workload
            # identity, a network policy): the build succeeded, its size is unknown.
            log.warning(f"Could not check {digest} at the registry: {exc}")
            await self._write(
                build, phase=Phase.SUCCEEDED, reason=Reason.SUCCEEDED, completion=True,
                message=f"Pushed; digest not checked at the registry ({exc}).",
                image=image, digest=digest, short_digest=_short(digest),
            )
            return
        size_text = human_size(info.size)
        log.info(f"Built {image} ({size_text}, {info.layers} layers).")
        await self._write(
            build, phase=Phase.SUCCEEDED, reason=Reason.SUCCEEDED,
            message=f"Pushed {len(build.spec.output.tags)} tag(s), {size_text}.",
            completion=True, image=f"{build.spec.output.image}@{info.digest}",
            digest=info.digest, short_digest=_short(info.digest),
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
        if secret is None:
            raise RegistryError(f"Secret {ref.name} was deleted after the push; the operator "
                                "cannot check the pushed image")
        encoded = (secret.get("data") or {}).get(".dockerconfigjson")
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
        await self._post_event(meta, Reason.INVALID_SPEC, message)

    async def _write_if_changed(self, build: ImageBuild, log: Logger, *, phase: Phase,
                                reason: Reason, message: str, keep_pod: bool = False) -> None:
        """A waiting state, written once: the resync re-checks it without re-writing it.

        Unless the wait is for this build's pod (``keep_pod``), there is no pod, attempt or
        result to show, so the last build's are cleared.
        """
        status = build.status
        if (status.phase, status.reason, status.message, status.observed_generation,
                status.rebuild) == (phase, reason, message, build.generation, build.rebuild_token):
            return
        log.warning(message)
        fields: dict[str, Any] = {} if keep_pod else dict(
            pod_name=None, attempt=None, start_time=None, completion_time=None, **_NO_RESULT)
        await self._write(build, phase=phase, reason=reason, message=message, **fields)

    async def _write(self, build: ImageBuild, *, phase: Phase, reason: Reason, message: str,
                     completion: bool = False, **fields: Any) -> None:
        """One status patch for one transition of the current generation and rebuild."""
        if completion:
            fields["completion_time"] = now_iso()
        patch = status_patch(build.status, phase=phase, reason=reason, message=message,
                             generation=build.generation, rebuild=build.rebuild_token, **fields)
        await self.api.patch_imagebuild_status(build.namespace, build.name, patch)
        if reason in WARNINGS:
            await self._post_event(build.metadata, reason, message)

    async def _post_event(self, metadata: dict[str, Any], reason: Reason, message: str) -> None:
        """Tell a person through a Warning Event; a refused Event never stops a build."""
        event = build_event({"namespace": "default", **metadata}, reason=reason.value,
                            message=message, now=now_iso())
        try:
            await self.api.create_event(event)
        except ApiError as exc:
            _log.warning(f"Could not post the {reason} Event for "
                         f"{event['metadata']['namespace']}/{metadata.get('name')}: {exc}")


def _short(digest: str) -> str:
    """The first 12 hex digits, as the printer column shows them."""
    return digest.split(":", 1)[1][:12]


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


__all__ = ["ApiError", "Reconciler"]
