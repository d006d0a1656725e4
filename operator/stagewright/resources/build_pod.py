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
              files: Sequence[ContextFile] = (), commit: str | None = None) -> dict[str, Any]:
    """The Pod for one attempt of one build of ``build``, run by ``spec.builder``.

    ``files`` are the ConfigMap context's files (``pod_common.context_files``), unused for
    other sources. ``commit``: the git commit to build instead of ``source.git.revision``
    (the one the source trigger resolved, so the commit seen is the commit built).
    """
    spec = pinned(build.spec, commit)
    staging = staging_tag(build.name) if spec.output.max_size is not None else None
    parts = _CONTAINERS[spec.builder](spec, settings, files, staging)
    return assemble_pod(build, settings, key=key, attempt=attempt, parts=parts)


def pinned(spec: ImageBuildSpec, commit: str | None) -> ImageBuildSpec:
    """``spec`` with its git source at ``commit`` (unchanged without one, or for other
    sources): builders take a commit as they take any other revision."""
    git = spec.source.git
    if commit is None or git is None:
        return spec
    source = spec.source.model_copy(update={"git": git.model_copy(update={"revision": commit})})
    return spec.model_copy(update={"source": source})
