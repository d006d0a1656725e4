"""The operator's settings: one object, read from ``STAGEWRIGHT_*`` environment variables.

Handlers receive it through kopf's memo, never as a module global, so tests start operators
with different settings side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stagewright.api.platforms import PLATFORM_PATTERN
from stagewright.api.types import DNS_SUBDOMAIN, Duration
from stagewright.api.v1alpha1 import ResourceRequirements
from stagewright.scope import Scope

#: The maintained Kaniko fork (upstream was archived on 2025-06-03). Pinned: a moving tag
#: would make two builds of the same spec use different executors.
DEFAULT_KANIKO_IMAGE = "ghcr.io/osscontainertools/kaniko:v1.28.3"
#: Upstream's Buildah image (builds for ``spec.builder: buildah``), pinned for the same reason.
DEFAULT_BUILDAH_IMAGE = "quay.io/buildah/stable:v1.43.0"


class Settings(BaseSettings):
    """Operator-wide defaults and limits; each ImageBuild may override the build ones."""

    model_config = SettingsConfigDict(env_prefix="STAGEWRIGHT_", frozen=True)

    #: The executor image of every build pod; pin by tag or digest.
    kaniko_image: str = DEFAULT_KANIKO_IMAGE
    #: The platform (os/architecture) of the nodes that run every pod of a cross-platform
    #: build (spec.platformMode: cross); their node selectors name it. Set it to the
    #: architecture of your build nodes.
    build_platform: str = Field(default="linux/amd64", pattern=PLATFORM_PATTERN)
    #: The image of build pods whose ImageBuild says ``builder: buildah``; pin it too.
    buildah_image: str = DEFAULT_BUILDAH_IMAGE
    #: Namespaces to watch, comma-separated; empty means the whole cluster. Names, glob
    #: patterns (``team-*``) and exclusions (``!kube-*``): a shard of a large cluster
    #: (docs/sharding.md). Plain names only: one list-and-watch per namespace.
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Registries the operator may contact and builds may push to, comma-separated host
    #: patterns (``registry.example.com``, ``*.corp.example``, ``10.0.0.5:5000``); empty
    #: means any. Tenants choose output.image: this bounds where their builds go.
    registry_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Deadline of a build whose ImageBuild sets no timeout.
    default_timeout: Duration = "30m"
    #: Build container resources when an ImageBuild sets none (bounded, so one build cannot
    #: starve a node).
    default_resources: ResourceRequirements = ResourceRequirements(
        requests={"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
        limits={"memory": "4Gi", "ephemeral-storage": "20Gi"},
    )
    #: How often unfinished builds are re-checked, so a lost event or a registry hiccup
    #: never leaves a build stuck (level-based recovery).
    resync_seconds: float = Field(default=30.0, gt=0)
    #: Reconciles running at once (each one ImageBuild; events for one coalesce). Bounds the
    #: operator's requests in flight under a burst, so none waits behind a thousand others.
    workers: int = Field(default=128, ge=1, le=1024)
    #: Per-request timeout for registry look-ups (digest check, size).
    registry_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Plain-HTTP liveness endpoint, e.g. http://0.0.0.0:8080/healthz; unset disables it.
    liveness_endpoint: str | None = None
    #: How many characters of a failed build's log tail are kept in status.message.
    message_limit: int = Field(default=2048, ge=256, le=32768)
    #: How many of the image's largest layers status.largestLayers lists.
    largest_layers: int = Field(default=5, ge=1, le=16)
    #: Bytes of a finished build pod's log read (pods/log, limitBytes) for the cache report
    #: and the target's base image; the rest is not read.
    build_log_limit_bytes: int = Field(default=2 * 1024 * 1024, ge=4096)
    #: Build pods running at once in the whole cluster; past it builds queue (reason Queued).
    #: Unset: unlimited. A burst of ImageBuilds otherwise asks the scheduler for every pod.
    max_running_builds: int | None = Field(default=None, ge=1)
    #: Build pods running at once per namespace, so one team cannot take every slot.
    max_running_builds_per_namespace: int | None = Field(default=None, ge=1)
    #: Port of the Prometheus metrics endpoint (/metrics); unset disables it.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: Address the metrics endpoint binds: 0.0.0.0 in a pod (the chart sets it), else local.
    metrics_address: str = "127.0.0.1"
    #: A ConfigMap of extra CA certificates (PEM) for registries with a private CA, present
    #: under this name in every build namespace (as trust-manager distributes a Bundle): build
    #: pods mount it and trust it in addition to the executor's own CAs. Unset: none.
    ca_bundle_configmap: str | None = Field(default=None, pattern=DNS_SUBDOMAIN)
    #: The key of that ConfigMap holding the PEM certificates.
    ca_bundle_key: str = Field(default="ca.crt", pattern=r"^[-._a-zA-Z0-9]+$")
    #: The same certificates as a file in the operator's own pod, added to its default trust
    #: for the registry look-ups (the chart mounts the ConfigMap there).
    ca_bundle_file: Path | None = None

    #: The shortest poll interval a trigger may ask for (a shorter spec.triggers.*.pollInterval
    #: is raised to it): bounds the load a tenant can put on a git host or a registry.
    trigger_min_poll_interval: Duration = "1m"
    #: Base-image look-ups (HEADs) per minute per registry, across every ImageBuild: a public
    #: registry's quota is shared by the whole cluster. A 429 pauses that registry.
    trigger_registry_budget: int = Field(default=60, ge=1, le=6000)
    #: Per-request timeout for git ref look-ups (the source trigger).
    git_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Port of the trigger webhook endpoint (POST /hooks/<hash>); unset: no webhook server.
    webhook_port: int | None = Field(default=None, ge=1, le=65535)
    #: Address the webhook endpoint binds: 0.0.0.0 in a pod (the chart sets it), else local.
    webhook_address: str = "127.0.0.1"

    #: Run for leadership of a Lease, so that of several replicas only one acts (the others
    #: wait as standbys, watching and writing nothing). The chart turns it on.
    leader_election: bool = False
    #: The Lease's name: one per Deployment (a shard has its own).
    lease_name: str = Field(default="stagewright", pattern=DNS_SUBDOMAIN)
    #: The Lease's namespace; unset: the pod's own (its ServiceAccount's namespace).
    lease_namespace: str | None = Field(default=None, pattern=DNS_SUBDOMAIN)
    #: How long a standby waits after the Lease last changed before it takes it over.
    lease_duration_seconds: float = Field(default=15.0, ge=1)
    #: How long a leader keeps acting without renewing; then it stops at once.
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    #: How often the leader renews and a standby tries to take the Lease.
    retry_period_seconds: float = Field(default=2.0, gt=0)
    #: Plain-HTTP readiness endpoint, e.g. http://0.0.0.0:8082/readyz: 200 with ``leader``
    #: or ``standby`` once the replica can act or stand by; unset disables it.
    readiness_endpoint: str | None = None
    #: Log lines as ``text`` (for a terminal) or ``json`` (one object a line, for a log
    #: pipeline: with the ImageBuild's namespace and name and the replica's identity).
    log_format: Literal["text", "json"] = "text"

    @model_validator(mode="after")
    def _election_timing(self) -> Self:
        if not (self.retry_period_seconds < self.renew_deadline_seconds
                < self.lease_duration_seconds):
            raise ValueError("leader election needs retry_period_seconds < "
                             "renew_deadline_seconds < lease_duration_seconds")
        return self

    @field_validator("namespaces", "registry_allow", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("namespaces")
    @classmethod
    def _namespace_patterns(cls, value: list[str]) -> list[str]:
        Scope.parse(value)  # names, globs and exclusions only
        return value

    @property
    def scope(self) -> Scope:
        """The namespaces this operator serves (``STAGEWRIGHT_NAMESPACES``)."""
        return Scope.parse(self.namespaces)
