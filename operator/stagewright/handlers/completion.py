"""The completion path: from a build pod that ended in success to the build's final status.

The builder's digest is trusted only once the registry serves it, which is also where the
size comes from; the build log gives the cache report and the base image; then insight, the
size budget, and the output tags when a budget staged the push. Signing and multi-platform
index assembly are the next steps to join them.

Decisions are pure functions (``is_patient``, ``unverified``, ``over_budget``, ``untagged``,
``built``) that turn a registry's answer or an image's size into a ``Verdict``; ``Completion``
does the I/O and hands exactly one verdict to ``record``, a callback the reconciler passes in,
or raises the registry's error, recording nothing, for the resync to try again.

A callback rather than a returned verdict: the build log is read alongside the registry
look-up, and where the registry says no, the status is written while that read may still run
(it is cancelled only after the write, and a failure it meets meanwhile is logged); returning
the verdict would end the read before the write. The callback is the reconciler's own status
write, so history, metrics, Events and the build queue stay there, and a test passes a
function that keeps the verdict.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from stagewright.api.reasons import Reason
from stagewright.api.triggers import BuildInputs, ImageDigest
from stagewright.api.v1alpha1 import ImageBuild, Phase
from stagewright.build_log import BuildLog, parse_build_log
from stagewright.dockerfile import base_images
from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.handlers.push_secret import docker_config
from stagewright.handlers.trigger_watch import TriggerWatch
from stagewright.insight import SCRATCH, build_insight, over_budget_message, success_message
from stagewright.registry import (
    ImageInfo,
    ImageNotFound,
    ImageReference,
    InvalidManifest,
    RegistryClient,
    RegistryError,
)
from stagewright.resources.pod_common import dockerfile_key
from stagewright.settings import Settings
from stagewright.signing.provenance import BuildFacts, operator_version
from stagewright.status import ConditionUpdate, human_size, parse_iso

if TYPE_CHECKING:
    from stagewright.handlers.signer import Signer

#: How long after the builder's exit a registry that does not (yet) serve the digest, or cannot be
#: reached, is asked again before the operator records what it knows.
VERIFY_GRACE = timedelta(minutes=5)

#: kopf's per-object logger (its lines name the ImageBuild), or the plain one without kopf.
Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True)
class Verdict:
    """How the build ends: the one status write that records it.

    ``fields`` are the result's ImageBuildStatus fields by Python name, in the order the
    patch lists them.
    """

    phase: Phase
    reason: Reason
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    #: Conditions beyond kstatus's the write sets (Signed, Attested).
    conditions: list[ConditionUpdate] = field(default_factory=list)
    #: Something a person should hear of though the build succeeded (signing failed, not
    #: required): a Warning Event with this reason and message.
    warning: tuple[Reason, str] | None = None


#: The reconciler's status write, called once with the verdict.
Record = Callable[[Verdict], Awaitable[None]]


def is_patient(finished_at: str | None, now: datetime) -> bool:
    """Whether the builder exited within VERIFY_GRACE (or when is unknown): a registry
    failure may still pass."""
    finished = parse_iso(finished_at) or now
    return now - finished < VERIFY_GRACE


def unverified(build: ImageBuild, digest: str, error: RegistryError, *,
               patient: bool) -> Verdict | None:
    """How a build ends when the registry would not confirm its digest; None while the
    failure may pass (the resync asks again)."""
    if isinstance(error, (ImageNotFound, InvalidManifest)):
        if isinstance(error, ImageNotFound) and patient:
            return None  # a replicated registry may lag behind the push: the resync asks again
        return Verdict(Phase.FAILED, Reason.DIGEST_UNVERIFIED,
                       f"{build.spec.builder.title()} reported {digest}, but the registry "
                       f"does not serve it: {error}")
    if error.temporary and patient:
        return None  # the registry is down or busy: the resync tries again
    if build.spec.output.max_size is not None:
        return Verdict(Phase.FAILED, Reason.DIGEST_UNVERIFIED,
                       f"The size budget could not be checked ({error}); the image was not "
                       "given the output tags.")
    # The builder pushed (exit code 0) with access the operator lacks (a node's workload
    # identity, a network policy): the build succeeded, its size is unknown.
    return Verdict(Phase.SUCCEEDED, Reason.SUCCEEDED,
                   f"Pushed; digest not checked at the registry ({error}).",
                   dict(image=f"{build.spec.output.image}@{digest}", digest=digest,
                        short_digest=_short(digest)))


def over_budget(info: ImageInfo, budget: int | None, result: dict[str, Any]) -> Verdict | None:
    """SizeBudgetExceeded for an image bigger than ``budget`` bytes; None within it or
    without one. ``result`` holds the status fields of the image (largest layers included)."""
    if budget is None or info.size <= budget:
        return None
    return Verdict(Phase.FAILED, Reason.SIZE_BUDGET_EXCEEDED,
                   over_budget_message(info, budget, result["largest_layers"]), result)


def untagged(info: ImageInfo, error: RegistryError, *, patient: bool) -> Verdict | None:
    """How a build within its budget ends when the output tags could not be given; None
    while the failure is temporary and may pass (the resync tags it later)."""
    if error.temporary and patient:
        return None
    return Verdict(Phase.FAILED, Reason.PUSH_FAILED,
                   f"The image ({info.digest}) is within its size budget but could not be "
                   f"given the output tags: {error}")


def built(build: ImageBuild, info: ImageInfo, insight: dict[str, Any],
          result: dict[str, Any]) -> Verdict:
    """A build whose image the registry confirmed, within its budget and tagged."""
    return Verdict(Phase.SUCCEEDED, Reason.SUCCEEDED,
                   success_message(len(build.spec.output.tags), info, insight),
                   dict(image=f"{build.spec.output.image}@{info.digest}", **result))


class Completion:
    """Confirms a successful build's image at the registry and says how the build ends."""

    def __init__(self, api: KubeApi, registry: RegistryClient, settings: Settings,
                 triggers: TriggerWatch | None = None) -> None:
        self.api = api
        self.registry = registry
        self.settings = settings
        #: Resolves the base images' digests for builds with a base-image trigger.
        self.triggers = triggers
        self._signer: Signer | None = None

    async def complete(self, build: ImageBuild, log: Logger, digest: str,
                       finished_at: str | None, checks: list[dict[str, Any]] | None,
                       record: Record, builder_image: str | None = None) -> None:
        """Confirm the builder's digest at the registry and record the image's size.

        The build log is read while the registry answers: the two do not depend on each
        other, and under a burst one round trip fewer before the status write is what keeps
        pod done -> status short. A log read still running when the registry says no is
        cancelled; nobody waits for it.
        """
        facts = asyncio.ensure_future(self.read_build_log(build, log, build.status.pod_name))
        try:
            await self._verify(build, log, digest, finished_at, checks, facts,
                               _Recorder(record, builder_image))
        finally:
            if not facts.done():
                facts.cancel()
            elif not facts.cancelled() and facts.exception() is not None:
                log.debug(f"Build log read failed: {facts.exception()}")

    async def _verify(self, build: ImageBuild, log: Logger, digest: str,
                      finished_at: str | None, checks: list[dict[str, Any]] | None,
                      facts_read: asyncio.Future[BuildLog | None], recorder: _Recorder) -> None:
        """The registry's answer decides the outcome; the log, awaited only on success,
        adds the cache report and the base image's share."""
        record = recorder.record
        image = f"{build.spec.output.image}@{digest}"
        patient = is_patient(finished_at, datetime.now(UTC))
        try:
            info = await self._resolve(build, ImageReference.parse(image))
        except RegistryError as exc:
            verdict = unverified(build, digest, exc, patient=patient)
            if verdict is None:
                raise  # it may pass (see unverified): the resync asks again
            if verdict.phase is Phase.SUCCEEDED:
                log.warning(f"Could not check {digest} at the registry: {exc}")
            await record(verdict)
            return
        facts = await facts_read
        base_layers = await self.base_layers(build, facts.base_image if facts else None, log)
        insight = build_insight(build.status, info, facts, base_layers,
                                largest=self.settings.largest_layers,
                                cache_enabled=build.spec.cache.enabled)
        result = dict(digest=info.digest, short_digest=_short(info.digest), size=info.size,
                      size_human=human_size(info.size), layers=info.layers, checks=checks,
                      **insight)
        budget = build.spec.output.max_size_bytes
        over = over_budget(info, budget, result)
        if over is not None:
            log.warning(over.message)
            await record(over)
            return
        if budget is not None and not await self._tag(build, log, info, patient, record):
            return
        inputs = await self.inputs_used(build, facts, log)
        if inputs is not None:
            result["inputs"] = inputs
        verdict = built(build, info, insight, result)
        if build.spec.signing is not None:
            verdict = await self.signed(build, log, verdict, inputs, recorder.builder_image,
                                        finished_at)
        log.info(f"Built {image} ({result['size_human']}, {info.layers} layers).")
        await record(verdict)

    @property
    def signer(self) -> Signer:
        """Signs confirmed images of ImageBuilds with spec.signing. Imported on first use:
        its cryptography and NaCl cost ~11 MiB of resident memory, for operators that sign."""
        if self._signer is None:
            from stagewright.handlers.signer import Signer  # noqa: PLC0415 - see above

            self._signer = Signer(self.api, self.registry)
        return self._signer

    async def signed(self, build: ImageBuild, log: Logger, verdict: Verdict,
                     inputs: dict[str, Any] | None, builder_image: str | None,
                     finished_at: str | None) -> Verdict:
        """The verdict with the image signed and attested (or why not): only now, with the
        digest confirmed at the registry, tagged and within its budget."""
        signing = build.spec.signing
        assert signing is not None
        used = BuildInputs.model_validate(inputs or {})
        facts = BuildFacts(
            digest=str(verdict.fields["digest"]), commit=used.commit, ref=used.ref,
            base_images=[(i.image, i.digest) for i in used.base_images or []],
            builder_image=builder_image, pod=build.status.pod_name,
            started=build.status.start_time, finished=finished_at,
            operator_version=operator_version())
        signed = await self.signer.sign(build, facts)
        fields = {**verdict.fields, "signing": signed.status}
        if signed.failure is None:
            return Verdict(verdict.phase, verdict.reason, verdict.message, fields,
                           signed.conditions)
        reason, message = signed.failure
        log.warning(f"Signing failed ({reason}): {message}")
        if signing.required:
            return Verdict(Phase.FAILED, reason, f"{message} The image was pushed and "
                           "tagged, but spec.signing.required is set.", fields,
                           signed.conditions)
        return Verdict(verdict.phase, verdict.reason, verdict.message, fields,
                       signed.conditions, warning=signed.failure)

    async def inputs_used(self, build: ImageBuild, facts: BuildLog | None,
                           log: Logger) -> dict[str, Any] | None:
        """status.inputs with the base images the build used and their digests, for a build
        the base-image trigger watches or that is signed (its provenance names them); None
        for others: nothing is looked up.

        The images: the Dockerfile's FROM closure of the target when it is in a ConfigMap
        (``COPY --from=image`` included), else the external bases of the stages the builder
        logged building. Their digests: the shared polls' (a HEAD if none looked lately),
        read as the build ends, so a base re-pushed during the build is seen as a change.
        """
        triggers = build.spec.triggers
        watched = triggers is not None and triggers.base_images is not None
        if not watched and build.spec.signing is None:
            return None
        images = await self._dockerfile_bases(build)
        if images is None:
            images = list(facts.external_bases) if facts else []
        digests = await self._base_digests(build, images)
        used = (build.status.inputs or BuildInputs()).model_copy(
            update={"base_images": digests or None})
        log.info(f"Base images: {', '.join(f'{d.image}@{d.digest}' for d in digests) or 'none'}.")
        return used.model_dump(mode="json", by_alias=True, exclude_none=True)

    async def _base_digests(self, build: ImageBuild, images: list[str]) -> list[ImageDigest]:
        """Each image's digest: through the trigger watch's shared polls when there is one,
        else one HEAD each (an image that cannot be read gets no digest, not a failure)."""
        if self.triggers is not None:
            return await self.triggers.base_digests(build, images)
        config = await docker_config(self.api, build)
        output = build.spec.output
        digests = []
        for image in images:
            try:
                reference = ImageReference.parse(image)
                insecure = output.insecure_for(reference.registry)
                digest: str | None = await self.registry.head_digest(
                    reference, insecure=insecure, docker_config=config)
            except (RegistryError, ValueError):
                digest = None
            digests.append(ImageDigest(image=image, digest=digest))
        return digests

    async def _dockerfile_bases(self, build: ImageBuild) -> list[str] | None:
        """The target's FROM images from a ConfigMap context's Dockerfile; None when the
        Dockerfile is not in the cluster (git, url) or cannot be read."""
        key = dockerfile_key(build.spec)
        source = build.spec.source.config_map
        if key is None or source is None:
            return None
        try:
            config_map = await self.api.get_configmap(build.namespace, source.name)
        except ApiError:
            return None
        text = ((config_map or {}).get("data") or {}).get(key)
        if not isinstance(text, str):
            return None
        return base_images(text, build.spec.build_args, build.spec.target)

    async def _tag(self, build: ImageBuild, log: Logger, info: ImageInfo, patient: bool,
                   record: Record) -> bool:
        """Give an image within its budget the output tags (Kaniko pushed a staging tag only).

        False when that failed and the failure is recorded; a temporary registry failure is
        raised while the operator is still patient, so the resync tags it later.
        """
        output = build.spec.output
        try:
            await self.registry.tag(ImageReference.parse(f"{output.image}@{info.digest}"),
                                    list(output.tags), insecure=output.insecure,
                                    docker_config=await docker_config(self.api, build))
        except RegistryError as exc:
            verdict = untagged(info, exc, patient=patient)
            if verdict is None:
                raise
            log.warning(f"Could not tag {info.digest}: {exc}")
            await record(verdict)
            return False
        return True

    async def _resolve(self, build: ImageBuild, reference: ImageReference) -> ImageInfo:
        config = await docker_config(self.api, build)
        return await self.registry.resolve(reference, insecure=build.spec.output.insecure,
                                           docker_config=config, details=True)

    async def read_build_log(self, build: ImageBuild, log: Logger,
                             name: str | None) -> BuildLog | None:
        """Kaniko's log of the finished build in pod ``name`` (bounded): the cache report and
        the base.

        A log that cannot be read (a node gone, RBAC without pods/log) costs the report,
        never the build.
        """
        if not name:
            return None
        try:
            text = await self.api.read_pod_log(build.namespace, name, build.spec.builder.value,
                                               self.settings.build_log_limit_bytes)
        except ApiError as exc:
            log.warning(f"Could not read the log of pod {name} ({exc}); no cache report.")
            return None
        return None if text is None else parse_build_log(text.splitlines())

    async def base_layers(self, build: ImageBuild, base: str | None,
                           log: Logger) -> list[list[str]]:
        """The base image's layer digests, per platform; none when unknown or unreachable.

        Read with the push Secret, and insecure only when the base is on the output's own
        registry (as ``output.insecure`` means for the build pod).
        """
        if not base or base == SCRATCH:
            return []
        try:
            reference = ImageReference.parse(base)
            insecure = build.spec.output.insecure_for(reference.registry)
            info = await self.registry.resolve(reference, insecure=insecure,
                                               docker_config=await docker_config(self.api, build))
        except (RegistryError, ValueError) as exc:
            log.info(f"Could not read base image {base} ({exc}); its share of the size is "
                     "not reported.")
            return []
        if info.platforms:
            return [[layer.digest for layer in p.layer_details] for p in info.platforms]
        return [[layer.digest for layer in info.layer_details]]


@dataclass(frozen=True)
class _Recorder:
    """The reconciler's write, and what the pod said that the write does not carry."""

    record: Record
    builder_image: str | None


def _short(digest: str) -> str:
    """The first 12 hex digits, as the printer column shows them."""
    return digest.split(":", 1)[1][:12]

