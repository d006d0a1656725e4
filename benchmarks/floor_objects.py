"""ATTRIBUTION for benchmarks/floor_operator.py --objects stagewright, not a product.

Stagewright's own build pod and status writes, made by Stagewright's own pure modules
(``resources``, ``status``, ``insight``), so the floor's objects are exactly as big as
Stagewright's while everything else stays the floor's: no work queue, no logging, no
build-log read. Run against the plain floor in the same run, it says how much of the gap
between Stagewright and the floor is the size of what it writes.
"""

from __future__ import annotations

from typing import Any

from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import BuildRecord, ImageBuild, ImageBuildStatus, Phase
from stagewright.insight import build_insight, success_message
from stagewright.registry import ImageInfo
from stagewright.registry.models import Layer
from stagewright.resources.build_pod import build_pod
from stagewright.resources.pod_common import build_key
from stagewright.settings import Settings
from stagewright.status import history_with, human_size, now_iso, status_patch


class StagewrightObjects:
    """The pod and the two status patches Stagewright writes for a first, successful build."""

    def __init__(self) -> None:
        self.settings = Settings()

    def pod(self, build: dict[str, Any], name: str, label: str) -> dict[str, Any]:
        """Stagewright's build pod for ``build``, under the floor's name and label."""
        model = ImageBuild.model_validate(build)
        pod = build_pod(model, self.settings, key=build_key(model.generation, None),
                        attempt=1, files=[])
        pod["metadata"]["name"] = name
        pod["metadata"]["labels"][label] = model.name
        return pod

    def building(self, pod: str) -> dict[str, Any]:
        """The ``Building`` status patch."""
        return {"status": status_patch(
            ImageBuildStatus(), phase=Phase.BUILDING, reason=Reason.BUILDING,
            message=f"Building target (last stage) in pod {pod}.", generation=1,
            pod_name=pod, attempt=1, start_time=now_iso(), completion_time=None)}

    def succeeded(self, image: str, digest: str, manifest: dict[str, Any],
                  size: int) -> dict[str, Any]:
        """The ``Succeeded`` status patch, insight and history included."""
        layers = tuple(Layer(digest=layer["digest"], size=layer["size"])
                       for layer in manifest["layers"])
        info = ImageInfo(digest=digest, media_type=manifest.get("mediaType", ""), size=size,
                         layers=len(layers), layer_details=layers)
        previous = ImageBuildStatus()
        insight = build_insight(previous, info, None, [],
                                largest=self.settings.largest_layers, cache_enabled=False)
        now = now_iso()
        history = history_with(previous, BuildRecord(
            generation=1, phase=Phase.SUCCEEDED, reason=Reason.SUCCEEDED.value, digest=digest,
            size=size, start_time=now, completion_time=now))
        return {"status": status_patch(
            previous, phase=Phase.SUCCEEDED, reason=Reason.SUCCEEDED,
            message=success_message(1, info, insight), generation=1,
            image=f"{image}@{digest}", digest=digest, short_digest=digest[7:19], size=size,
            size_human=human_size(size), layers=len(layers), checks=None,
            completion_time=now, history=history, **insight)}
