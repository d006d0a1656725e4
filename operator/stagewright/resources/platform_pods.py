"""The build pods of a multi-platform ImageBuild (``spec.platforms``): one per platform. Pure.

Each is the Kaniko build pod of the ImageBuild with, for its platform:

- ``--custom-platform=<platform>``: base images resolve to that platform's entry, the image
  config says that platform, and Kaniko sets the ``TARGET*`` ARGs from it (``BUILD*`` from
  the node it runs on);
- its own cache repository, ``<cache repo>/<os>-<arch>[-<variant>]``, so no architecture is
  served another's layers (Kaniko's cache key does not say the platform);
- its own staging tag (never the output tags: the operator puts the image index there once
  every platform succeeded);
- node selectors: the platform's own ``kubernetes.io/os`` and ``kubernetes.io/arch``
  (``native``), or the operator's build platform's (``cross``), merged with
  ``spec.nodeSelector``;
- a name, label and annotation that say the platform: ``<name>-<key>-<os>-<arch>-<attempt>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stagewright.api.platforms import Platform, PlatformMode
from stagewright.api.v1alpha1 import ContextFile, ImageBuild, ImageBuildSpec
from stagewright.resources.build_pod import pinned
from stagewright.resources.kaniko_pod import kaniko_container
from stagewright.resources.pod_common import (
    ANNOTATION_PLATFORM,
    LABEL_PLATFORM,
    assemble_pod,
    staging_tag,
)
from stagewright.settings import Settings


def platform_key(key: str, platform: Platform) -> str:
    """The build key of one platform's pod (its name is ``<name>-<this>-<attempt>``)."""
    return f"{key}-{platform.slug}"


def platform_cache_repo(spec: ImageBuildSpec, platform: Platform) -> str:
    """The platform's own cache repository, under the ImageBuild's."""
    return f"{spec.cache_repo}/{platform.slug}"


def platform_spec(spec: ImageBuildSpec, platform: Platform) -> ImageBuildSpec:
    """``spec`` as one platform's pod builds it: with that platform's cache repository."""
    cache = spec.cache.model_copy(update={"repo": platform_cache_repo(spec, platform)})
    return spec.model_copy(update={"cache": cache})


def build_node(spec: ImageBuildSpec, platform: Platform, settings: Settings) -> Platform:
    """The platform of the node a platform's pod runs on."""
    if spec.platform_mode is PlatformMode.CROSS:
        return Platform.parse(settings.build_platform)
    return platform


def platform_pod(build: ImageBuild, settings: Settings, *, key: str, attempt: int,
                 platform: Platform, files: Sequence[ContextFile] = (),
                 commit: str | None = None, dockerfile: str | None = None) -> dict[str, Any]:
    """The Pod for one attempt of one platform of a multi-platform build.

    ``dockerfile``: a ConfigMap context's Dockerfile to build instead of the ConfigMap's
    (a cross build's, with its ``FROM --platform=$BUILDPLATFORM`` images pinned by digest).
    """
    spec = platform_spec(pinned(build.spec, commit), platform)
    parts = kaniko_container(spec, settings, files, staging_tag(build.name, platform.slug),
                             custom_platform=str(platform), pinned_dockerfile=dockerfile)
    pod = assemble_pod(build, settings, key=platform_key(key, platform), attempt=attempt,
                       parts=parts)
    pod["metadata"]["labels"][LABEL_PLATFORM] = platform.slug
    pod["metadata"]["annotations"][ANNOTATION_PLATFORM] = str(platform)
    node = build_node(spec, platform, settings)
    pod["spec"]["nodeSelector"] = {**spec.node_selector, **node.node_selector}
    return pod
