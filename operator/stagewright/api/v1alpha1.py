"""The ImageBuild API, version v1alpha1: the single source of truth for the CRD.

The CRD in ``crds/`` is generated from these models (``stagewright crd``), so the API server
and the operator validate with the same rules. Rules the API server cannot express in a
structural schema (map-key patterns, cross-field checks) live in validators here and surface
as ``InvalidSpec`` in status.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from stagewright.api.platforms import (
    ARCH_LABEL,
    MAX_PLATFORMS,
    OS_LABEL,
    PLATFORM_PATTERN,
    Platform,
    PlatformMode,
)
from stagewright.api.reasons import Reason
from stagewright.api.signing import Signing, SigningStatus
from stagewright.api.triggers import BuildCause, BuildInputs, Triggers, TriggerStatus
from stagewright.api.types import (
    ApiModel,
    Duration,
    LocalObjectReference,
    ObjectName,
    parse_duration,
)

GROUP = "stagewright.dev"
VERSION = "v1alpha1"
KIND = "ImageBuild"
PLURAL = "imagebuilds"
SINGULAR = "imagebuild"
SHORT_NAMES = ("ib",)
API_VERSION = f"{GROUP}/{VERSION}"

#: Annotation whose new value asks for a rebuild of the same spec.
REBUILD_ANNOTATION = f"{GROUP}/rebuild"
#: Build pod annotation: the check stages, comma-separated in order, so the pod says by
#: itself which init container (``check_container_name``) built which stage.
CHECKS_ANNOTATION = f"{GROUP}/checks"


def check_container_name(index: int) -> str:
    """``check-1``, ``check-2``...: the init container of the check stage at ``index``
    (stage names need not be valid container names)."""
    return f"check-{index + 1}"

#: Label naming the builder of a build pod; its container has the same name, so status
#: reads the right container without knowing how the pod was made.
BUILDER_LABEL = f"{GROUP}/builder"

#: An image repository without tag or digest: optional registry host[:port], then path parts.
_REPOSITORY = (
    r"^([a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?/)?"
    r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
)
_TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_STAGE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_BUILD_ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: A relative path inside the build context: no leading slash, no empty or `..` segment.
#: (RE2 and Rust regexes have no look-ahead, so each segment spells out "not ..".)
_SEGMENT = r"(\.|\.?[^/.][^/]*|\.\.[^/]+)"
_RELATIVE_PATH = rf"^{_SEGMENT}(/{_SEGMENT})*$"

#: A ConfigMap key, as the API server validates it.
_CONFIGMAP_KEY = r"^[-._a-zA-Z0-9]+$"

Quantity = Annotated[
    str | int,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


#: A Kubernetes quantity (``200Mi``, ``1G``, ``5e8``), as the API server's regex accepts it.
_QUANTITY = re.compile(
    r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[kMGTPE]|[eE][0-9]+)?$",
)
_QUANTITY_UNITS = {
    "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}


def parse_quantity(value: str | int) -> int:
    """Bytes in a Kubernetes quantity (``200Mi`` -> 209715200), rounded up as Kubernetes does."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"invalid quantity {value!r}: use bytes or units such as 200Mi, 1G")
    number, suffix = match[1], match[2] or ""
    if suffix[:1] in ("e", "E"):
        scaled = float(number) * 10 ** int(suffix[1:])
    else:
        scaled = float(number) * _QUANTITY_UNITS[suffix]
    return int(-(-scaled // 1))


class Builder(StrEnum):
    """The tool that runs the build inside the pod."""

    KANIKO = "kaniko"
    BUILDAH = "buildah"


class GitSource(ApiModel):
    """A git repository cloned by the build pod."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s#]+$")] = Field(
        description="HTTP(S) clone URL, e.g. https://github.com/acme/web.git.",
    )
    revision: Annotated[str, StringConstraints(pattern=r"^[^\s#]+$")] | None = Field(
        default=None,
        description="Branch, tag, full ref (refs/...) or 40-character commit; default: the "
        "repository's default branch.",
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="A kubernetes.io/basic-auth Secret (username, password or token) for "
        "private repositories.",
    )


class ContextFile(ApiModel):
    """One ConfigMap key placed as a file in the build context."""

    key: Annotated[str, StringConstraints(pattern=_CONFIGMAP_KEY, max_length=253)] = Field(
        description="The ConfigMap key (data or binaryData).",
    )
    path: Annotated[str, StringConstraints(pattern=_RELATIVE_PATH, max_length=1024)] = Field(
        description="Where the file goes, relative to the context root; may be nested "
        "(src/main.go).",
    )


class ConfigMapSource(ApiModel):
    """A small build context kept in a ConfigMap.

    Each key becomes a regular file (never a symlink, so COPY copies its content), at the
    context root by its own name, or wherever ``items`` puts it.
    """

    name: ObjectName = Field(description="Name of the ConfigMap holding the context files.")
    items: list[ContextFile] | None = Field(
        default=None, max_length=512,
        description="Keys to use and their paths in the context (nested paths allowed, as "
        "ConfigMap keys cannot contain /); default: every key, at the context root.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["path"]},
    )

    @field_validator("items")
    @classmethod
    def _unique_paths(cls, items: list[ContextFile] | None) -> list[ContextFile] | None:
        paths = [item.path.strip("/") for item in items or []]
        duplicates = sorted({path for path in paths if paths.count(path) > 1})
        if duplicates:
            raise ValueError(f"each context path may appear once; repeated: {duplicates}")
        return items


class Source(ApiModel):
    """Where the build context comes from: exactly one of git, configMap or url."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": ["git"]}, {"required": ["configMap"]}, {"required": ["url"]}],
        },
    )

    git: GitSource | None = Field(default=None, description="A git repository.")
    config_map: ConfigMapSource | None = Field(default=None, description="A ConfigMap.")
    url: Annotated[str, StringConstraints(pattern=r"^(s3|gs|https)://\S+$")] | None = Field(
        default=None,
        description="A Kaniko remote context: s3://, gs:// or an Azure blob https:// URL of "
        "a tar.gz.",
    )
    context_dir: Annotated[str, StringConstraints(pattern=_RELATIVE_PATH)] | None = Field(
        default=None, description="Sub-directory of the source used as the build context.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [n for n in ("git", "configMap", "url") if getattr(self, _snake(n)) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of source.git, source.configMap or source.url"
                + (f" (found: {', '.join(given)})" if given else ""),
            )
        return self


class Output(ApiModel):
    """Where the built image is pushed."""

    image: Annotated[str, StringConstraints(pattern=_REPOSITORY, max_length=255)] = Field(
        description="Image repository without tag or digest, e.g. registry.example.com/acme/web.",
    )
    tags: list[Annotated[str, StringConstraints(pattern=_TAG)]] = Field(
        default=["latest"], min_length=1, max_length=32,
        description="Tags pushed for the image; one Kaniko --destination each.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    push_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="A kubernetes.io/dockerconfigjson Secret with push (and cache) credentials.",
    )
    insecure: bool = Field(
        default=False,
        description="The output registry speaks plain HTTP or has a self-signed certificate; "
        "applies to every use of that registry (push, cache, base images) and nothing else.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="OCI labels added to the image config.",
    )
    reproducible: bool = Field(
        default=False,
        description="Leave build times out of the image (Kaniko's --reproducible), so the "
        "same inputs give the same digest, and the same signature and provenance apply.",
    )
    max_size: Quantity | None = Field(
        default=None,
        description="Size budget (a quantity such as 200Mi): compressed bytes, config + "
        "layers, as the registry serves the image. A bigger image fails with "
        "SizeBudgetExceeded and never gets the output tags.",
    )

    @field_validator("max_size")
    @classmethod
    def _valid_budget(cls, value: str | int | None) -> str | int | None:
        if value is not None and parse_quantity(value) < 1:
            raise ValueError("maxSize must be at least 1 byte")
        return value

    @property
    def max_size_bytes(self) -> int | None:
        """The budget in bytes, if any."""
        return None if self.max_size is None else parse_quantity(self.max_size)

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        if len(set(tags)) != len(tags):
            raise ValueError("tags must be unique")
        return tags

    @property
    def registry(self) -> str:
        """The registry host[:port], by Docker's rule (as stagewright.registry parses it)."""
        first, _, rest = self.image.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"
                     or first != first.lower()):
            return first
        return "index.docker.io"

    def insecure_for(self, registry: str) -> bool:
        """Whether ``registry`` is reached as ``insecure`` says: only the output's own
        registry is (push, cache, and base images pulled from it); nothing else is weakened."""
        return self.insecure and registry == self.registry


class Cache(ApiModel):
    """Kaniko's registry layer cache: RUN layers pushed to, and pulled from, a cache repo."""

    enabled: bool = Field(default=True, description="Use the registry layer cache.")
    repo: Annotated[str, StringConstraints(pattern=_REPOSITORY, max_length=255)] | None = Field(
        default=None, description="Cache repository; default <output.image>/cache.",
    )
    ttl: Duration = Field(default="336h", description="How long cached layers stay valid.")


class ResourceRequirements(ApiModel):
    """CPU and memory for the build container, as in a Pod."""

    requests: dict[str, Quantity] = Field(default_factory=dict, description="Minimum.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Maximum.")


class Toleration(ApiModel):
    """A Pod toleration, so builds can run on tainted build nodes."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ImageBuildSpec(ApiModel):
    """What to build, and how. Never written by the operator."""

    source: Source = Field(description="The build context.")
    builder: Builder = Field(
        default=Builder.KANIKO,
        description="The build tool: kaniko (default) or buildah. Buildah takes configMap "
        "contexts, https archive URLs, and public git repositories whose URL ends in .git "
        "(branch, tag or commit); see docs/install.md for what each needs on a node.",
    )
    dockerfile: Annotated[str, StringConstraints(pattern=_RELATIVE_PATH)] = Field(
        default="Dockerfile", description="Path of the Dockerfile inside the context.",
    )
    target: Annotated[str, StringConstraints(pattern=_STAGE, max_length=128)] | None = Field(
        default=None, description="Stage to build; default: the last stage.",
    )
    build_args: dict[str, str] = Field(
        default_factory=dict, description="Values for the Dockerfile's ARG instructions.",
    )
    checks: list[Annotated[str, StringConstraints(pattern=_STAGE, max_length=128)]] = Field(
        default_factory=list, max_length=8,
        description="Stages (e.g. test, lint) that must build, in order, before the target is "
        "built and pushed; one failing ends the build Failed/CheckFailed with nothing pushed. "
        "They share the registry layer cache with the target.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    output: Output = Field(description="Where the image is pushed.")
    cache: Cache = Field(default_factory=Cache, description="Registry layer cache.")
    timeout: Duration | None = Field(
        default=None, description="Build deadline (Go duration); default: the operator's.",
    )
    retries: int = Field(
        default=1, ge=0, le=5,
        description="Retries after infrastructure failures (eviction, lost pod), never after "
        "a failed build.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Build container resources; default: the operator's.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the build pod must match.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations for the build pod.",
    )
    service_account_name: ObjectName | None = Field(
        default=None,
        description="ServiceAccount of the build pod, for cloud workload identity. Its API "
        "token is never mounted.",
    )
    signing: Signing | None = Field(
        default=None,
        description="Sign the pushed image with cosign's format and attest its SLSA v1 "
        "provenance, with a key from a Secret the build pods never see.",
    )
    triggers: Triggers | None = Field(
        default=None,
        description="Rebuild on a new commit of the git branch or tag, a re-pushed base image, "
        "or a verified webhook (which only asks for an early check); all off by default.",
    )
    platforms: list[Annotated[str, StringConstraints(pattern=PLATFORM_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=MAX_PLATFORMS,
        description="Build one image per platform (os/architecture[/variant], e.g. "
        "linux/amd64, linux/arm64), one build pod each, and push one OCI image index of them "
        "under the output tags; default: one image for the build node's platform.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    platform_mode: PlatformMode = Field(
        default=PlatformMode.NATIVE,
        description="native: each platform's pod runs on nodes of that platform "
        "(kubernetes.io/os and kubernetes.io/arch). cross: every pod runs on the operator's "
        "build platform, without emulation, for Dockerfiles whose stages built for the target "
        "platform have no RUN (build in a FROM --platform=$BUILDPLATFORM stage, COPY into the "
        "target's). Only with platforms.",
    )

    @field_validator("build_args")
    @classmethod
    def _build_arg_names(cls, args: dict[str, str]) -> dict[str, str]:
        bad = sorted(name for name in args if not _BUILD_ARG.match(name))
        if bad:
            raise ValueError(f"invalid build argument names {bad}: use letters, digits and _")
        return args

    @field_validator("checks")
    @classmethod
    def _unique_checks(cls, checks: list[str]) -> list[str]:
        if len(set(checks)) != len(checks):
            raise ValueError("checks must be unique")
        return checks

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, timeout: str | None) -> str | None:
        if timeout is not None and parse_duration(timeout) < timedelta(seconds=1):
            raise ValueError("timeout must be at least 1s")
        return timeout

    @model_validator(mode="after")
    def _builder_takes_source(self) -> ImageBuildSpec:
        if self.builder is Builder.BUILDAH:
            problems = _buildah_limits(self.source)
            if problems:
                raise ValueError("builder buildah cannot build this source: "
                                 + "; ".join(problems))
            if self.platforms is not None:
                raise ValueError(
                    "builder buildah does not build spec.platforms: each platform's image is "
                    "pushed to a staging tag of its own (Kaniko's --destination) for the "
                    "operator to assemble one image index, and the Buildah pod pushes only "
                    "to the output tags; use builder kaniko")
            unsupported = [name for name, used in (
                ("spec.checks", bool(self.checks)),
                ("spec.output.maxSize", self.output.max_size is not None),
                ("spec.output.reproducible", self.output.reproducible)) if used]
            if unsupported:
                # Check stages and the staging-tag budget are built on Kaniko's flags.
                raise ValueError(f"builder buildah does not support {', '.join(unsupported)} "
                                 "yet; use builder kaniko")
        return self

    @model_validator(mode="after")
    def _platforms_are_distinct(self) -> ImageBuildSpec:
        if self.platforms is None:
            if self.platform_mode is PlatformMode.CROSS:
                raise ValueError("platformMode cross needs spec.platforms")
            return self
        seen: dict[tuple[str, str, str], str] = {}
        for text in self.platforms:
            platform = Platform.parse(text)
            if platform.normalized in seen:
                raise ValueError(f"platforms {seen[platform.normalized]} and {text} are the "
                                 "same platform; list each once")
            seen[platform.normalized] = text
        taken = sorted(set(self.node_selector) & {OS_LABEL, ARCH_LABEL})
        if taken:
            raise ValueError(f"spec.nodeSelector sets {', '.join(taken)}, which the operator "
                             "sets for each platform's pod; remove it")
        return self

    @model_validator(mode="after")
    def _triggers_fit_the_source(self) -> ImageBuildSpec:
        triggers = self.triggers
        if triggers is not None and self.source.git is None:
            needs_git = [name for name, used in (("triggers.source", triggers.source),
                                                 ("triggers.webhook", triggers.webhook)) if used]
            if needs_git:
                raise ValueError(f"{' and '.join(needs_git)} watch a git repository: set "
                                 "source.git, or use triggers.baseImages only")
        return self

    @property
    def cache_repo(self) -> str:
        """The cache repository, defaulted from the output image."""
        return self.cache.repo or f"{self.output.image}/cache"


class Phase(StrEnum):
    """The build's lifecycle, as users script against it."""

    PENDING = "Pending"
    BUILDING = "Building"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(ApiModel):
    """A kstatus-compatible condition (as metav1.Condition)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = None
    last_transition_time: str
    reason: str
    message: str = ""


class LayerStatus(ApiModel):
    """One of the image's largest layers: how big, and which instruction made it."""

    size: int = Field(description="Compressed bytes, as the registry serves the layer.")
    instruction: str | None = Field(
        default=None, description="The Dockerfile instruction (from the image's history).",
    )
    digest: str = Field(description="The layer blob's digest.")
    platform: str | None = Field(
        default=None, description="os/architecture[/variant], for an image index only.",
    )


class CacheStatus(ApiModel):
    """Kaniko's registry layer cache in the last build, read from its log."""

    hits: int = Field(description="Cacheable steps served from the cache.")
    misses: int = Field(description="Cacheable steps that ran.")
    summary: str = Field(description="hits/steps, for the Cache printer column.")


class CheckStatus(ApiModel):
    """One check stage of the last build."""

    stage: str = Field(description="The stage built as a check.")
    result: Literal["Passed", "Failed", "NotRun"] = Field(
        description="Passed, Failed, or NotRun (an earlier check failed, or time ran out).",
    )
    duration_seconds: int | None = Field(default=None, description="How long it took.")


class PlatformStatus(ApiModel):
    """One platform of a multi-platform build: its pod, and the image it built."""

    # A newer operator's fields are ignored, as in ImageBuildStatus.
    model_config = ConfigDict(frozen=False, extra="ignore")

    platform: str = Field(description="os/architecture[/variant], as spec.platforms names it.")
    phase: Phase = Field(description="Pending, Building, Succeeded or Failed.")
    reason: str | None = Field(default=None, description="Why it is in its phase.")
    message: str | None = Field(default=None, description="What happened (first line).")
    pod: str | None = Field(default=None, description="Its current or last build pod.")
    attempt: int | None = Field(default=None, description="Attempt number, from 1.")
    digest: str | None = Field(
        default=None, description="Its image manifest's digest (a child of the index).",
    )
    size: int | None = Field(
        default=None, description="Compressed bytes of its image (config + layers): what a "
        "pull on this platform costs.",
    )
    cache: CacheStatus | None = Field(
        default=None, description="Its registry layer cache hits and misses (its own cache "
        "repository: <cache.repo>/<os>-<arch>[-<variant>]).",
    )


class BuildRecord(ApiModel):
    """One finished build, as status.history keeps it."""

    generation: int = Field(description="The spec generation built.")
    rebuild: str | None = Field(default=None, description="The rebuild request it answered.")
    phase: Phase = Field(description="Succeeded or Failed.")
    reason: str = Field(description="Why it ended so.")
    digest: str | None = Field(default=None, description="The image's digest, if pushed.")
    size: int | None = Field(default=None, description="Compressed bytes, if pushed.")
    start_time: str | None = Field(default=None, description="When it started.")
    completion_time: str | None = Field(default=None, description="When it ended.")
    cache_hits: int | None = Field(default=None, description="Cache hits, when read.")
    causes: list[BuildCause] | None = Field(
        default=None, max_length=40, description="Why it ran (Spec, Rebuild, Commit, BaseImage).",
    )
    signed_by: str | None = Field(
        default=None, description="The key ID that signed its image, if it was signed.",
    )


class ImageBuildStatus(ApiModel):
    """What the operator observed; the only part of an ImageBuild it writes."""

    # Fields it does not know (written by a newer operator before a rollback) are ignored:
    # a status is never a reason to stop building.
    model_config = ConfigDict(frozen=False, extra="ignore")

    phase: Phase | None = Field(default=None, description="Pending, Building, Succeeded, Failed.")
    reason: str | None = Field(default=None, description="Machine-readable cause of the phase.")
    message: str | None = Field(default=None, description="What happened, for a person.")
    observed_generation: int | None = Field(default=None, description="Generation built.")
    rebuild: str | None = Field(
        default=None, description="The stagewright.dev/rebuild value this build answers.",
    )
    trigger: str | None = Field(
        default=None, description="The triggered build this is (a token of what changed); "
        "unset for builds of a spec change or a rebuild request.",
    )
    causes: list[BuildCause] | None = Field(
        default=None, max_length=40,
        description="Why the current or last build ran: Spec, Rebuild, Commit or BaseImage, "
        "each with its old and new value.",
    )
    inputs: BuildInputs | None = Field(
        default=None, description="What the current or last build was built from (the "
        "commit, each base image's digest): what the triggers compare against.",
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Reconciling and Stalled (kstatus).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    pod_name: str | None = Field(default=None, description="The current or last build pod.")
    attempt: int | None = Field(default=None, description="Attempt number, from 1.")
    start_time: str | None = Field(default=None, description="When the build started.")
    completion_time: str | None = Field(default=None, description="When the build ended.")
    image: str | None = Field(default=None, description="Pushed image, repo@sha256:...")
    digest: str | None = Field(
        default=None, description="Manifest digest, sha256:... (with spec.platforms: the "
        "image index's).",
    )
    short_digest: str | None = Field(default=None, description="Digest's first 12 hex digits.")
    size: int | None = Field(
        default=None, description="Compressed bytes: config + layers (with spec.platforms: "
        "summed over the platforms' images, each what a pull on its platform costs).",
    )
    size_human: str | None = Field(default=None, description="Size for people, e.g. 12.3MiB.")
    layers: int | None = Field(default=None, description="Number of layers.")
    largest_layers: list[LayerStatus] | None = Field(
        default=None, max_length=16,
        description="The largest layers, largest first, with the instruction that made each.",
    )
    base_image: str | None = Field(
        default=None, description="The external image the target stage starts from.",
    )
    base_size: int | None = Field(
        default=None,
        description="Compressed bytes of the layers the base image brought (leading layers "
        "identical, by digest, to the base image's).",
    )
    size_delta: int | None = Field(
        default=None, description="Bytes gained (or lost, negative) since the previous "
        "successful build of this ImageBuild.",
    )
    cache: CacheStatus | None = Field(
        default=None, description="Registry layer cache hits and misses, from the build log.",
    )
    checks: list[CheckStatus] | None = Field(
        default=None, max_length=8, description="Each check stage's result and duration.",
    )
    history: list[BuildRecord] | None = Field(
        default=None, max_length=5, description="The last 5 finished builds, newest first.",
    )
    signing: SigningStatus | None = Field(
        default=None, description="The last build's signature and attestation, and the key "
        "that made them; conditions Signed and Attested say whether they succeeded.",
    )
    triggers: TriggerStatus | None = Field(
        default=None, description="The triggers' own state: the webhook path and the hourly "
        "count of triggered builds.",
    )
    platforms: list[PlatformStatus] | None = Field(
        default=None, max_length=MAX_PLATFORMS,
        description="Each platform of spec.platforms: pod, phase, and its image's digest, size "
        "and cache. digest and size above are then the image index's.",
    )
    platform_summary: str | None = Field(
        default=None, description="Platforms built of those asked (2/2), for the Platforms "
        "printer column.",
    )


#: The status the API server gives an ImageBuild the operator has not written yet (the CRD's
#: default for ``status``, applied on create and on every read). kstatus, which Helm 4's
#: ``--wait``, Flux's ``wait``/health checks and ``kubectl wait`` rely on, calls a custom
#: resource with neither conditions nor ``observedGeneration`` Current: without this default a
#: new ImageBuild looks finished until the operator's first write, a race every GitOps apply
#: lost. ``observedGeneration: 0`` is behind every real generation, so kstatus says
#: InProgress from the first moment, whether or not an operator is running.
UNOBSERVED_STATUS: dict[str, Any] = {
    "phase": "Pending",
    "reason": Reason.AWAITING_OPERATOR.value,
    "message": "Waiting for the Stagewright operator to start the build.",
    "observedGeneration": 0,
}


class ImageBuild(ApiModel):
    """An ImageBuild as read from the API server (metadata kept loosely typed)."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["stagewright.dev/v1alpha1"] = "stagewright.dev/v1alpha1"
    kind: Literal["ImageBuild"] = "ImageBuild"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ImageBuildSpec
    status: ImageBuildStatus = Field(default_factory=ImageBuildStatus)

    @property
    def name(self) -> str:
        """metadata.name."""
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        """metadata.namespace ("default" when a file omits it)."""
        return str(self.metadata.get("namespace") or "default")

    @property
    def generation(self) -> int:
        """metadata.generation (1 for a file that has none)."""
        return int(self.metadata.get("generation") or 1)

    @property
    def uid(self) -> str:
        """metadata.uid ("" for a file that has none)."""
        return str(self.metadata.get("uid") or "")

    @property
    def rebuild_token(self) -> str | None:
        """The current stagewright.dev/rebuild annotation value, if any."""
        value = (self.metadata.get("annotations") or {}).get(REBUILD_ANNOTATION)
        return str(value) if value else None


def _buildah_limits(source: Source) -> list[str]:
    """What Buildah cannot take from a source that Kaniko can (empty when it can build it).

    Buildah fetches remote contexts itself: an https archive, or a git repository it clones
    with ``git clone`` and recognises only by a URL ending in ``.git``. It has no flag for git
    credentials and cannot fetch a ref outside the branches and tags, nor read s3:// or gs://.
    """
    problems = []
    if source.url is not None and not source.url.startswith("https://"):
        problems.append("source.url: buildah reads only https:// archive URLs, not s3:// or gs://")
    if source.url is not None and source.context_dir is not None:
        problems.append("source.contextDir: buildah cannot use a sub-directory of an archive URL")
    git = source.git
    if git is not None:
        if not git.url.removesuffix("/").endswith(".git"):
            problems.append("source.git.url: buildah recognises a git context only by a URL "
                            "ending in .git")
        if git.revision is not None and git.revision.startswith("refs/"):
            problems.append("source.git.revision: buildah checks out a branch, tag or commit, "
                            "not a refs/... name")
        if git.secret_ref is not None:
            problems.append("source.git.secretRef: buildah has no way to pass git credentials; "
                            "use builder kaniko for private repositories")
    return problems


@functools.cache
def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", camel).lower()
