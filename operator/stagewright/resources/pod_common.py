"""What every build pod shares, whichever builder runs in it: pure, no I/O.

Names, labels, the owner reference, the deadline, the ConfigMap context mounts, the push
secret volume and the pod-level safety settings live here once; ``kaniko_pod`` and
``buildah_pod`` add only their container.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stagewright.api.types import parse_duration
from stagewright.api.v1alpha1 import (
    API_VERSION,
    BUILDER_LABEL,
    GROUP,
    KIND,
    REBUILD_ANNOTATION,
    ConfigMapSource,
    ContextFile,
    ImageBuild,
    ImageBuildSpec,
)
from stagewright.settings import Settings

#: The context directory of a ConfigMap source (Kaniko's documented default context).
WORKSPACE_DIR = "/workspace"
TERMINATION_LOG = "/dev/termination-log"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "stagewright"
LABEL_IMAGEBUILD = f"{GROUP}/imagebuild"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_ATTEMPT = f"{GROUP}/attempt"
#: The platform a multi-platform build's pod builds, as a label (``linux-arm64``) and as
#: spec.platforms spells it (``linux/arm64``).
LABEL_PLATFORM = f"{GROUP}/platform"
ANNOTATION_PLATFORM = f"{GROUP}/platform"
ANNOTATION_TARGET = f"{GROUP}/target"
#: A cross build's Dockerfile with its ``FROM --platform=$BUILDPLATFORM`` images pinned by
#: digest: the pod's own annotation, which a downward API volume puts where the ConfigMap's
#: Dockerfile would be (the ConfigMap itself is never changed).
ANNOTATION_DOCKERFILE = f"{GROUP}/dockerfile"
PINNED_DOCKERFILE_VOLUME = "pinned-dockerfile"
#: The volume holding the push Secret's ``config.json``; each builder mounts it where it reads.
PUSH_SECRET_VOLUME = "docker-config"  # noqa: S105 (a volume name, not a secret)

_MAX_NAME = 63


@dataclass(frozen=True)
class BuilderParts:
    """What a builder adds to the shared pod: its container, volumes and pod annotations."""

    container: dict[str, Any]
    volumes: list[dict[str, Any]]
    annotations: dict[str, str] = field(default_factory=dict)
    #: Run in order before the build container (Kaniko's check stages).
    init_containers: list[dict[str, Any]] = field(default_factory=list)


def build_key(generation: int, rebuild: str | None, trigger: str | None = None) -> str:
    """Identify one requested build: a spec generation plus the rebuild annotation's value,
    plus the trigger's token for a build a trigger started (what changed to what)."""
    key = str(generation)
    if rebuild:
        key += f"-{hashlib.sha256(rebuild.encode()).hexdigest()[:6]}"
    return f"{key}-{trigger}" if trigger else key


def pod_name(build_name: str, key: str, attempt: int) -> str:
    """Deterministic per build and attempt, so a retried create finds its own pod (409)."""
    return f"{_bounded(build_name, _MAX_NAME - len(key) - len(str(attempt)) - 2)}-{key}-{attempt}"


def staging_tag(build_name: str, platform: str | None = None) -> str:
    """The one tag the builder pushes to when ``output.maxSize`` is set: never an output tag.

    The operator tags the image with ``output.tags`` only once it is within budget, so an
    image over budget is never reachable under them (see docs/insight.md). Each platform of
    a multi-platform build (``platform``: its slug, ``linux-arm64``) has its own, and the
    output tags get the image index of them all.
    """
    if platform is None:
        return f"stagewright-staging-{_bounded(build_name, 100)}"
    return f"stagewright-staging-{_bounded(build_name, 100 - len(platform))}-{platform}"


def imagebuild_label(name: str) -> str:
    """The ``stagewright.dev/imagebuild`` label value of an ImageBuild's pods (max. 63)."""
    return _bounded(name, _MAX_NAME)


def _bounded(name: str, limit: int) -> str:
    """``name`` if it fits, else a prefix plus a hash of the whole, so long names stay unique."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[: limit - 7].rstrip('-.')}-{digest}"


def is_commit(revision: str) -> bool:
    """A full 40-digit commit id (as opposed to a branch or tag name)."""
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def context_files(source: ConfigMapSource, keys: Iterable[str]) -> list[ContextFile]:
    """The files of a ConfigMap context: ``source.items``, else every key at the root.

    ``keys`` are the ConfigMap's data and binaryData keys, as read from the cluster; items
    naming a key it lacks are reported by :func:`missing_context_keys`, not here.
    """
    if source.items is not None:
        return list(source.items)
    return [ContextFile(key=key, path=key) for key in sorted(set(keys))]


def dockerfile_key(spec: ImageBuildSpec) -> str | None:
    """The ConfigMap key holding the Dockerfile of a ConfigMap context (None for others):
    the item placed at ``contextDir/dockerfile``, else the key of that name."""
    source = spec.source.config_map
    if source is None:
        return None
    path = "/".join(p for p in (spec.source.context_dir, spec.dockerfile) if p)
    return next((item.key for item in source.items or [] if item.path == path), path)


def missing_context_keys(source: ConfigMapSource, keys: Iterable[str]) -> list[str]:
    """Keys ``source.items`` names that the ConfigMap does not have."""
    present = set(keys)
    return sorted({item.key for item in source.items or [] if item.key not in present})


def context_volumes(spec: ImageBuildSpec, files: Sequence[ContextFile], *,
                    pinned_dockerfile: bool = False,
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts that put a ConfigMap context at :data:`WORKSPACE_DIR`.

    The kubelet projects ConfigMap keys as symlinks into a hidden ..data directory, and
    Kaniko's COPY copies a symlink as a symlink, not its content. A subPath mount is a bind
    mount of the resolved file: each key arrives as a regular file, at any path, with no
    ..data entries in the context. The emptyDir holds those mount points.

    ``pinned_dockerfile``: the Dockerfile comes from the pod's :data:`ANNOTATION_DOCKERFILE`
    (a downward API volume, mounted the same way) instead of the ConfigMap.
    """
    if spec.source.config_map is None:
        return [], []
    volumes = [
        {"name": "context-files", "configMap": {"name": spec.source.config_map.name}},
        {"name": "context", "emptyDir": {}},
    ]
    dockerfile = "/".join(p for p in (spec.source.context_dir, spec.dockerfile) if p)
    mounts: list[dict[str, Any]] = [{"name": "context", "mountPath": WORKSPACE_DIR}]
    mounts += [
        {"name": "context-files", "mountPath": f"{WORKSPACE_DIR}/{file.path.strip('/')}",
         "subPath": file.key, "readOnly": True}
        for file in files if not (pinned_dockerfile and file.path.strip("/") == dockerfile)
    ]
    if pinned_dockerfile:
        volumes.append({"name": PINNED_DOCKERFILE_VOLUME, "downwardAPI": {"items": [{
            "path": "Dockerfile",
            "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_DOCKERFILE}']"}}]}})
        mounts.append({"name": PINNED_DOCKERFILE_VOLUME,
                       "mountPath": f"{WORKSPACE_DIR}/{dockerfile}", "subPath": "Dockerfile",
                       "readOnly": True})
    return volumes, mounts


def push_secret_volume(spec: ImageBuildSpec) -> dict[str, Any] | None:
    """The push Secret as a volume with one file, ``config.json`` (None without a Secret)."""
    if spec.output.push_secret_ref is None:
        return None
    return {
        "name": PUSH_SECRET_VOLUME,
        "secret": {
            "secretName": spec.output.push_secret_ref.name,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
        },
    }


def ca_bundle_volume(settings: Settings) -> dict[str, Any] | None:
    """The operator's extra CA bundle as a volume with one file, ``ca-bundle.crt``.

    Each builder mounts it in a directory of its own and adds that to its trust.
    """
    if not settings.ca_bundle_configmap:
        return None
    return {"name": "ca-bundle", "configMap": {
        "name": settings.ca_bundle_configmap,
        "items": [{"key": settings.ca_bundle_key, "path": "ca-bundle.crt"}]}}


def deadline_seconds(spec: ImageBuildSpec, settings: Settings) -> int:
    """The build's deadline in whole seconds (the spec's timeout, else the operator's)."""
    timeout = parse_duration(spec.timeout or settings.default_timeout)
    return max(1, math.ceil(timeout.total_seconds()))


def build_container(spec: ImageBuildSpec, settings: Settings, *, image: str,
                    args: list[str], env: list[dict[str, Any]],
                    mounts: list[dict[str, Any]], security: dict[str, Any],
                    command: list[str] | None = None) -> dict[str, Any]:
    """The build container, named by its builder; success is read from its exit code."""
    resources = spec.resources or settings.default_resources
    container: dict[str, Any] = {"name": spec.builder.value, "image": image}
    if command is not None:
        container["command"] = command
    return {
        **container,
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "resources": resources.model_dump(mode="json", exclude_defaults=False),
        "terminationMessagePath": TERMINATION_LOG,
        # On failure the log tail becomes the termination message: the reason users read.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"privileged": False, "runAsUser": 0, "runAsNonRoot": False,
                            **security},
    }


def assemble_pod(build: ImageBuild, settings: Settings, *, key: str, attempt: int,
                 parts: BuilderParts) -> dict[str, Any]:
    """The build Pod around the builder's parts: identity, ownership, deadline and safety."""
    spec = build.spec
    labels = {
        "app.kubernetes.io/name": "stagewright-build",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_IMAGEBUILD: imagebuild_label(build.name),
        LABEL_GENERATION: str(build.generation),
        LABEL_ATTEMPT: str(attempt),
        BUILDER_LABEL: spec.builder.value,
    }
    annotations = {ANNOTATION_TARGET: spec.target or "(last stage)", **parts.annotations}
    if build.rebuild_token:
        annotations[REBUILD_ANNOTATION] = build.rebuild_token
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": deadline_seconds(spec, settings),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [parts.container],
        "volumes": parts.volumes,
    }
    if parts.init_containers:
        pod_spec["initContainers"] = parts.init_containers
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    metadata: dict[str, Any] = {
        "name": pod_name(build.name, key, attempt),
        "namespace": build.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if build.uid:
        metadata["ownerReferences"] = [{
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": build.name,
            "uid": build.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
