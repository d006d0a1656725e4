"""Multi-platform builds (``spec.platforms``): the I/O around ``platforms.plan``'s decisions.

The reconciler tells the story (prepare, launch the pods, follow them, record the end); this
module does what needs the cluster or the registry:

- ``prepare``: for a cross build whose Dockerfile is in a ConfigMap, refuse a RUN that
  cannot run without emulation (naming its stage and line), and pin each
  ``FROM --platform=$BUILDPLATFORM`` image to the build platform's image by digest;
- ``pods``: each platform's pod (``resources.platform_pods``);
- ``observe``: every platform's pod, in one list, read into the build's next step;
- ``stop``: a failed build's other pods;
- ``complete``: each platform's image confirmed at the registry (its config's platform, the
  size budget), then one OCI image index of them put under every output tag (the registry's
  digest checked against the bytes sent), then the completion path's insight and signing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stagewright.api.platforms import Platform, PlatformMode
from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import ContextFile, ImageBuild, Phase, PlatformStatus
from stagewright.build_log import BuildLog
from stagewright.dockerfile import BuildStageBase, StageRun, cross_plan, pin_bases
from stagewright.handlers.completion import (
    Completion,
    Logger,
    Record,
    Verdict,
    built,
    is_patient,
)
from stagewright.handlers.kube_api import KubeApi
from stagewright.handlers.pod_outcome import pod_outcome
from stagewright.handlers.push_secret import docker_config
from stagewright.insight import index_insight
from stagewright.platforms.plan import (
    Built,
    Observed,
    Step,
    cross_refusal,
    decide,
    launched,
    platforms_of,
    status_fields,
)
from stagewright.registry import (
    ImageInfo,
    ImageNotFound,
    ImageReference,
    IndexChild,
    InvalidManifest,
    PlatformImage,
    RegistryClient,
    RegistryError,
    image_index,
)
from stagewright.registry.manifests import OCI_INDEX
from stagewright.resources.platform_pods import platform_pod
from stagewright.resources.pod_common import (
    LABEL_IMAGEBUILD,
    deadline_seconds,
    imagebuild_label,
)
from stagewright.settings import Settings
from stagewright.status import PodOutcome, human_size


@dataclass(frozen=True)
class Prepared:
    """What a multi-platform build's pods need beyond the spec."""

    #: Each platform's Dockerfile with its build-platform FROMs pinned (absent: the
    #: ConfigMap's own), by platform as spec.platforms spells it.
    dockerfiles: dict[str, str] = field(default_factory=dict)
    #: What was pinned, for people: ``stage build: golang:1.22 -> golang@sha256:...``.
    pinned: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Refused:
    """The build cannot start: why (InvalidSpec), before any pod exists."""

    reason: Reason
    message: str


class PlatformBuilds:
    """Prepares, follows and completes the multi-platform builds of the reconciler."""

    def __init__(self, api: KubeApi, registry: RegistryClient, settings: Settings,
                 completion: Completion) -> None:
        self.api = api
        self.registry = registry
        self.settings = settings
        self.completion = completion

    # Before the pods

    async def prepare(self, build: ImageBuild, log: Logger,
                      dockerfile: str | None) -> Prepared | Refused:
        """Check a cross build's Dockerfile, when it can be read now, and pin what Kaniko
        would pull for the wrong platform. A registry that is down is raised (the resync
        tries again); one that says no is a refusal."""
        if build.spec.platform_mode is not PlatformMode.CROSS or dockerfile is None:
            return Prepared()
        spec = build.spec
        build_platform = Platform.parse(self.settings.build_platform)
        lookup = _Lookup(self.registry, build, await docker_config(self.api, build))
        offences: list[tuple[str, StageRun]] = []
        dockerfiles: dict[str, str] = {}
        notes: list[str] = []
        for platform in platforms_of(build):
            plan = cross_plan(dockerfile, spec.build_args, spec.target, spec.checks,
                              build_platform=build_platform, target_platform=platform)
            for run in plan.runs:
                if run.base is None or not await lookup.runs_natively(run.base, platform,
                                                                       build_platform):
                    offences.append((str(platform), run))
            pins: dict[BuildStageBase, str] = {}
            for pin in plan.pins:
                pinned = await lookup.pin(pin.image, build_platform)
                if isinstance(pinned, Refused):
                    return Refused(pinned.reason, f"FROM --platform=$BUILDPLATFORM {pin.image} "
                                   f"(stage {pin.stage}, line {pin.first}): {pinned.message}")
                pins[pin] = pinned
                note = f"stage {pin.stage}: {pin.image} -> {pinned}"
                if note not in notes:
                    notes.append(note)
            if pins:
                dockerfiles[str(platform)] = pin_bases(dockerfile, pins)
        if offences:
            message = cross_refusal(offences, str(build_platform))
            log.warning(message)
            return Refused(Reason.INVALID_SPEC, message)
        return Prepared(dockerfiles, notes)

    def pods(self, build: ImageBuild, key: str, prepared: Prepared,
             entries: Sequence[PlatformStatus], *, files: Sequence[ContextFile],
             commit: str | None) -> list[dict[str, Any]]:
        """The pods of ``entries`` (each platform at its attempt)."""
        return [platform_pod(build, self.settings, key=key, attempt=entry.attempt or 1,
                             platform=Platform.parse(entry.platform), files=files,
                             commit=commit, dockerfile=prepared.dockerfiles.get(entry.platform))
                for entry in entries]

    # While they build

    async def observe(self, build: ImageBuild, key: str) -> Step:
        """Every platform's pod, read in one list, and the build's next step from them."""
        entries = build.status.platforms or launched(build, key, build.status.attempt or 1)
        listed = await self.api.list_pods(
            build.namespace, f"{LABEL_IMAGEBUILD}={imagebuild_label(build.name)}")
        by_name = {pod["metadata"]["name"]: pod for pod in listed}
        observed = []
        for entry in entries:
            pod = by_name.get(entry.pod or "")
            if pod is None:
                outcome = PodOutcome(finished=True, reason=Reason.POD_LOST,
                                     message=f"Build pod {entry.pod} disappeared.")
            elif entry.phase is Phase.SUCCEEDED:
                outcome = PodOutcome(finished=True, succeeded=True, digest=entry.digest)
            else:
                outcome = await pod_outcome(self.api, self.settings, build, pod)
            observed.append(Observed(entry, pod, outcome))
        deadline = timedelta(seconds=deadline_seconds(build.spec, self.settings))
        return decide(build, key, observed, now=datetime.now(UTC), deadline=deadline,
                      build_platform=self.settings.build_platform)

    async def stop(self, build: ImageBuild, log: Logger, pods: Sequence[str]) -> None:
        """Delete the unfinished pods of a build that failed on one of its platforms."""
        for name in pods:
            if await self.api.delete_pod(build.namespace, name):
                log.info(f"Stopped pod {name}: the build failed on a platform.")

    # After they built

    async def complete(self, build: ImageBuild, log: Logger, built: Built,
                       record: Record) -> None:
        """Confirm each platform's image, put the index under the output tags, record.

        Each platform's build log is read while the registry answers (as for one platform).
        """
        reads = [asyncio.ensure_future(self.completion.read_build_log(build, log, entry.pod))
                 for entry in built.platforms]
        try:
            await _Assembly(self, build, log, built, record).run(reads, built.checks,
                                                                 built.builder_image)
        finally:
            for read in reads:
                if not read.done():
                    read.cancel()
                elif not read.cancelled() and read.exception() is not None:
                    log.debug(f"Build log read failed: {read.exception()}")


class _Lookup:
    """Base images at the registry, as a cross build's pods would get them."""

    def __init__(self, registry: RegistryClient, build: ImageBuild,
                 config: dict[str, Any] | None) -> None:
        self.registry = registry
        self.output = build.spec.output
        self.config = config

    async def _select(self, image: str, platform: Platform) -> tuple[str, Platform]:
        reference = ImageReference.parse(image)
        insecure = self.output.insecure_for(reference.registry)
        return await self.registry.select_platform(reference, platform, insecure=insecure,
                                                   docker_config=self.config)

    async def runs_natively(self, image: str, target: Platform, build_platform: Platform) -> bool:
        """Whether a stage FROM ``image`` built for ``target`` gets a build-platform image (a
        single-platform image is used as it is): then its RUN steps can run. An image that
        cannot be read counts as the target's."""
        try:
            _, actual = await self._select(image, target)
        except ValueError:
            return False
        except RegistryError as exc:
            if exc.temporary:
                raise
            return False
        return actual.matches(build_platform)

    async def pin(self, image: str, build_platform: Platform) -> str | Refused:
        """``image`` pinned by digest to its build-platform image, or why it cannot be."""
        try:
            digest, actual = await self._select(image, build_platform)
        except ValueError as exc:
            return Refused(Reason.INVALID_SPEC, str(exc))
        except RegistryError as exc:
            if exc.temporary:
                raise
            return Refused(Reason.INVALID_SPEC,
                           f"its {build_platform} image could not be resolved: {exc}")
        if not actual.matches(build_platform):
            return Refused(Reason.INVALID_SPEC, f"it has no {build_platform} image (only "
                           f"{actual})")
        return str(ImageReference.parse(image).with_digest(digest))


class _Assembly:
    """One attempt at assembling a multi-platform build's index (see ``complete``)."""

    def __init__(self, owner: PlatformBuilds, build: ImageBuild, log: Logger, built: Built,
                 record: Record) -> None:
        self.owner = owner
        self.registry = owner.registry
        self.build = build
        self.log = log
        self.built = built
        self.record = record
        self.output = build.spec.output
        self.patient = is_patient(built.finished_at, datetime.now(UTC))

    async def run(self, reads: Sequence[asyncio.Future[BuildLog | None]],
                  checks: list[dict[str, Any]] | None, builder_image: str | None) -> None:
        config = await docker_config(self.owner.api, self.build)
        children = await self._children(config)
        if children is None:
            return
        budget = self.output.max_size_bytes
        over = [(entry, info) for entry, (_, info) in zip(self.built.platforms, children,
                                                          strict=True)
                if budget is not None and info.size > budget]
        if over:
            await self._fail(Reason.SIZE_BUDGET_EXCEEDED, "; ".join(
                f"{entry.platform} is {human_size(info.size)} ({info.size} bytes)"
                for entry, info in over) + f", over its spec.output.maxSize budget of "
                f"{human_size(budget or 0)} ({budget} bytes); the index was not given the "
                "output tags.")
            return
        body = image_index([child for child, _ in children])
        digest = await self._push(body, config)
        if digest is None:
            return
        facts = [await read for read in reads]
        await self._record(digest, children, facts, checks, builder_image)

    async def _children(self, config: dict[str, Any] | None,
                        ) -> list[tuple[IndexChild, ImageInfo]] | None:
        """Each platform's image as the registry serves it, checked to be that platform;
        None when that failed and the failure is recorded."""
        children = []
        for entry in self.built.platforms:
            reference = ImageReference.parse(f"{self.output.image}@{entry.digest}")
            try:
                child = await self.registry.image_child(
                    reference, insecure=self.output.insecure, docker_config=config)
                info = await self.registry.resolve(reference, insecure=self.output.insecure,
                                                   docker_config=config, details=True)
            except RegistryError as exc:
                if (exc.temporary or isinstance(exc, ImageNotFound)) and self.patient:
                    raise  # it may pass: the resync asks again
                await self._fail(Reason.DIGEST_UNVERIFIED, f"Kaniko reported {entry.digest} "
                                 f"for {entry.platform}, but the registry does not serve it: "
                                 f"{exc}. The index was not assembled.")
                return None
            asked = Platform.parse(entry.platform)
            if not child.platform.matches(asked):
                await self._fail(Reason.PLATFORM_MISMATCH, f"The image built for {asked} "
                                 f"({entry.digest}) says {child.platform} in its config. The "
                                 "index was not assembled.")
                return None
            # The index says what the config says (and the variant asked, if it says none).
            platform = Platform(child.platform.os, child.platform.architecture,
                                child.platform.variant or asked.variant)
            children.append((IndexChild(platform, child.digest, child.media_type, child.size),
                             info))
        return children

    async def _push(self, body: bytes, config: dict[str, Any] | None) -> str | None:
        """Put the index under every output tag; its digest, confirmed at the registry."""
        repository = ImageReference.parse(self.output.image)
        try:
            digests = {await self.registry.push_manifest(
                repository, tag, body, OCI_INDEX, insecure=self.output.insecure,
                docker_config=config) for tag in self.output.tags}
            (digest,) = digests
            served = await self.registry.manifest(repository.with_digest(digest),
                                                  insecure=self.output.insecure,
                                                  docker_config=config)
            if served is None or served.body != body:
                raise InvalidManifest(f"the registry does not serve the index {digest} as sent")
        except RegistryError as exc:
            if exc.temporary and self.patient:
                raise
            await self._fail(Reason.PUSH_FAILED, f"The image index of "
                             f"{', '.join(e.platform for e in self.built.platforms)} could not "
                             f"be put under the output tags: {exc}")
            return None
        return digest

    async def _record(self, digest: str, children: list[tuple[IndexChild, ImageInfo]],
                      facts: list[BuildLog | None], checks: list[dict[str, Any]] | None,
                      builder_image: str | None) -> None:
        """The build's successful end: the index's digest and size, each platform's."""
        completion = self.owner.completion
        build = self.build
        info = ImageInfo(
            digest=digest, media_type=OCI_INDEX, size=sum(i.size for _, i in children),
            layers=sum(i.layers for _, i in children),
            platforms=tuple(PlatformImage(
                os=child.platform.os, architecture=child.platform.architecture,
                variant=child.platform.variant or None, digest=child.digest,
                media_type=child.media_type, size=image.size, layers=image.layers,
                layer_details=image.layer_details) for child, image in children))
        base = next((f.base_image for f in facts if f is not None and f.base_image), None)
        insight = index_insight(build.status, info, facts,
                                await completion.base_layers(build, base, self.log),
                                largest=self.owner.settings.largest_layers,
                                cache_enabled=build.spec.cache.enabled)
        entries = [entry.model_copy(update={
            "size": image.size,
            "cache": ({"hits": f.cache.hits, "misses": f.cache.misses,
                       "summary": f.cache.summary}
                      if f is not None and build.spec.cache.enabled else None)})
            for entry, (_, image), f in zip(self.built.platforms, children, facts, strict=True)]
        result = dict(digest=digest, short_digest=digest.split(":", 1)[1][:12], size=info.size,
                      size_human=human_size(info.size), layers=info.layers, checks=checks,
                      **insight, **status_fields(entries))
        inputs = await completion.inputs_used(build, facts[0] if facts else None, self.log)
        if inputs is not None:
            result["inputs"] = inputs
        verdict = built(build, info, insight, result)
        if build.spec.signing is not None:
            verdict = await completion.signed(build, self.log, verdict, inputs, builder_image,
                                              self.built.finished_at)
        self.log.info(f"Built {self.output.image}@{digest}: an image index of "
                      f"{len(children)} platforms ({result['size_human']}).")
        await self.record(verdict)

    async def _fail(self, reason: Reason, message: str) -> None:
        self.log.warning(message)
        await self.record(Verdict(Phase.FAILED, reason, message,
                                  status_fields(self.built.platforms)))

