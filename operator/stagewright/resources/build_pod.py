"""The build Pod of an ImageBuild: the shared pod around the chosen builder's container."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stagewright.api.v1alpha1 import Builder, ContextFile, ImageBuild, ImageBuildSpec
from stagewright.resources.buildah_pod import buildah_container
from stagewright.resources.kaniko_pod import kaniko_container
from stagewright.resources.pod_common import BuilderParts, assemble_pod, staging_tag
from stagewright.settings import Settings

_ContainerBuilder = Callable[[ImageBuildSpec, Settings, Sequence[ContextFile], str | None],
                             BuilderParts]
_CONTAINERS: dict[Builder, _ContainerBuilder] = {
    Builder.KANIKO: kaniko_container,
    Builder.BUILDAH: buildah_container,
}


def build_pod(build: ImageBuild, settings: Settings, *, key: str, attempt: int,
              files: Sequence[ContextFile] = ()) -> dict[str, Any]:
    """The Pod for one attempt of one build of ``build``, run by ``spec.builder``.

    ``files`` are the ConfigMap context's files (``pod_common.context_files``), unused for
    other sources.
    """
    staging = staging_tag(build.name) if build.spec.output.max_size is not None else None
    parts = _CONTAINERS[build.spec.builder](build.spec, settings, files, staging)
    return assemble_pod(build, settings, key=key, attempt=attempt, parts=parts)
