"""SLSA v1 provenance of a build, as an in-toto statement. Pure.

What an auditor asks, answered from what the operator knows for certain: the request as the
user wrote it (external parameters: source and ref, Dockerfile, target, build args, checks,
destination), what it resolved to (the git commit built, each base image and the builder image
by digest), and how it ran (the builder's identity and version, the ImageBuild's UID and build
pod, start and finish). Secrets are named, never included: a Secret's name is a parameter, its
content is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from stagewright.api.v1alpha1 import ImageBuild

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://stagewright.dev/ImageBuild/v1alpha1"
BUILDER_ID = "https://stagewright.dev/operator"


@dataclass(frozen=True)
class BuildFacts:
    """What the operator resolved and saw for one build."""

    digest: str
    #: The git commit built and the ref it came from, when the source is git and known.
    commit: str | None = None
    ref: str | None = None
    #: Each FROM image as written, and its digest when read.
    base_images: list[tuple[str, str | None]] = field(default_factory=list)
    #: The builder image (Kaniko, Buildah) as the kubelet ran it: ``name@sha256:...``.
    builder_image: str | None = None
    pod: str | None = None
    started: str | None = None
    finished: str | None = None
    operator_version: str = "unknown"


def operator_version() -> str:
    """This operator's version, as its provenance names the builder."""
    try:
        return metadata.version("stagewright")
    except metadata.PackageNotFoundError:
        return "unknown"


def statement(build: ImageBuild, facts: BuildFacts) -> bytes:
    """The in-toto statement (JSON bytes) whose subject is the pushed image's digest."""
    algorithm, _, hexdigest = facts.digest.partition(":")
    return json.dumps({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": build.spec.output.image, "digest": {algorithm: hexdigest}}],
        "predicateType": SLSA_PROVENANCE,
        "predicate": predicate(build, facts),
    }, separators=(",", ":"), sort_keys=True).encode()


def predicate(build: ImageBuild, facts: BuildFacts) -> dict[str, Any]:
    """The SLSA v1 predicate: buildDefinition and runDetails."""
    spec = build.spec
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": _external(build),
            "internalParameters": {"builder": spec.builder.value},
            "resolvedDependencies": _dependencies(build, facts),
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID,
                        "version": {"stagewright": facts.operator_version}},
            "metadata": {
                "invocationId": f"{build.uid}/{facts.pod or ''}".rstrip("/"),
                **({"startedOn": facts.started} if facts.started else {}),
                **({"finishedOn": facts.finished} if facts.finished else {}),
            },
            "byproducts": [{"name": "imagebuild",
                            "annotations": {"namespace": build.namespace, "name": build.name,
                                            "uid": build.uid,
                                            "generation": str(build.generation)}}],
        },
    }


def _external(build: ImageBuild) -> dict[str, Any]:
    spec = build.spec
    source = spec.source.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {
        "source": source,
        "dockerfile": spec.dockerfile,
        **({"target": spec.target} if spec.target else {}),
        "buildArgs": dict(spec.build_args),
        "checks": list(spec.checks),
        "destination": {"image": spec.output.image, "tags": list(spec.output.tags)},
    }


def _dependencies(build: ImageBuild, facts: BuildFacts) -> list[dict[str, Any]]:
    dependencies: list[dict[str, Any]] = []
    git = build.spec.source.git
    if git is not None and facts.commit:
        reference = facts.ref or git.revision or "HEAD"
        dependencies.append({"uri": f"git+{git.url}@{reference}", "name": "source",
                             "digest": {"gitCommit": facts.commit}})
    for image, digest in facts.base_images:
        dependencies.append(_descriptor(f"oci://{image}", "base image", digest))
    if facts.builder_image:
        name, _, digest = facts.builder_image.partition("@")
        dependencies.append(_descriptor(f"oci://{name}", "builder", digest or None))
    return dependencies


def _descriptor(uri: str, name: str, digest: str | None) -> dict[str, Any]:
    """An SLSA ResourceDescriptor; the digest as ``{algorithm: hex}`` when known."""
    entry: dict[str, Any] = {"uri": uri, "name": name}
    if digest:
        algorithm, _, hexdigest = digest.partition(":")
        entry["digest"] = {algorithm: hexdigest}
    return entry
