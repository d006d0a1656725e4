"""Apply ImageBuild files as ``stagewright build`` does: create, update, or ask for a rebuild.

The file is the truth for ``spec`` (as ``kubectl replace``); labels and annotations in it are
merged into the stored ones, so a rebuild annotation set earlier is kept (dropping it would
itself count as a new rebuild request). Whether a new build follows is the API server's
answer, not a client-side diff: the server defaults the spec, and bumps ``generation`` only
when the defaulted spec changed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import yaml
from pydantic import ValidationError

from stagewright.api.v1alpha1 import KIND, REBUILD_ANNOTATION, ImageBuild
from stagewright.cli.kube import ApiException, Kube

#: Attempts at an update that meets a concurrent write (409) before giving up.
_CONFLICT_TRIES = 3


class Action(StrEnum):
    """What applying one ImageBuild did."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    REBUILD = "rebuild requested"


@dataclass(frozen=True)
class Wanted:
    """The build a command waits for: one spec generation and one rebuild request."""

    name: str
    namespace: str
    generation: int
    rebuild: str | None

    @classmethod
    def current(cls, build: Mapping[str, Any]) -> Wanted:
        """The build an ImageBuild asks for now (its generation and rebuild annotation)."""
        meta = build["metadata"]
        return cls(meta["name"], meta["namespace"], int(meta.get("generation") or 1),
                   (meta.get("annotations") or {}).get(REBUILD_ANNOTATION) or None)

    def answered_by(self, status: Mapping[str, Any]) -> bool:
        """Whether a status describes this build (not an earlier one)."""
        return (status.get("observedGeneration") == self.generation
                and (status.get("rebuild") or None) == self.rebuild)


@dataclass(frozen=True)
class Applied:
    """One ImageBuild after apply: what was done, and which build to follow."""

    action: Action
    wanted: Wanted


class FileError(ValueError):
    """The file cannot be applied as it is; the message says why, for a person."""


class NotFoundError(LookupError):
    """The named ImageBuild does not exist in the namespace."""


def load_documents(text: str, source: str) -> list[dict[str, Any]]:
    """The objects in a YAML file; at least one must be an ImageBuild, each must be valid."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise FileError(f"{source} is not valid YAML: {exc}") from None
    if not all(isinstance(d, dict) and d.get("kind") and d.get("metadata", {}).get("name")
               for d in documents):
        raise FileError(f"{source}: every document needs kind and metadata.name")
    builds = [d for d in documents if d["kind"] == KIND]
    if not builds:
        raise FileError(f"{source} holds no ImageBuild")
    for build in builds:
        _validate(build)
    return documents


def _validate(document: dict[str, Any]) -> None:
    """Check an ImageBuild client-side, with the operator's own model, before any write."""
    try:
        ImageBuild.model_validate(document)
    except ValidationError as exc:
        problems = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_url=False)]
        raise FileError(f"ImageBuild {document['metadata']['name']} is invalid:\n"
                        + "\n".join(problems)) from None


def placed(document: dict[str, Any], namespace: str, *, explicit: bool) -> dict[str, Any]:
    """The document in its namespace, by kubectl's rules.

    An object's own namespace wins when ``-n`` was not given; one without a namespace takes
    ``namespace`` (``-n``, or the context's). An explicit ``-n`` that differs from the file's
    is refused, with kubectl's words. Cluster-scoped objects (a Namespace) ignore it when
    applied.
    """
    given = document["metadata"].get("namespace")
    if given and explicit and given != namespace:
        raise FileError(f"the namespace from the provided object {given!r} does not match the "
                        f"namespace {namespace!r}. You must pass '--namespace={given}' to "
                        f"perform this operation ({document['kind']} "
                        f"{document['metadata']['name']}).")
    return {**document, "metadata": {**document["metadata"], "namespace": given or namespace}}


def apply_order(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Namespaces first, then the other objects, then ImageBuilds (each in file order): what
    a build reads (its namespace, ConfigMap context, Secrets) exists before it is asked for."""
    def rank(document: dict[str, Any]) -> int:
        return 0 if document["kind"] == "Namespace" else 2 if document["kind"] == KIND else 1
    return sorted(documents, key=rank)


def updated_body(existing: Mapping[str, Any], document: Mapping[str, Any]) -> dict[str, Any]:
    """The replacement: the stored object with the file's spec, labels and annotations."""
    body = copy.deepcopy(dict(existing))
    body.pop("status", None)
    meta = body["metadata"]
    for key in ("labels", "annotations"):
        merged = {**(meta.get(key) or {}), **(document["metadata"].get(key) or {})}
        if merged:
            meta[key] = merged
    body["spec"] = copy.deepcopy(document["spec"])
    return body


def decide(before: int | None, after: int, *, rebuild: bool) -> Action:
    """What an apply amounted to, from the generation before and after it."""
    if before is None:
        return Action.CREATED
    if after != before:
        return Action.CONFIGURED
    return Action.REBUILD if rebuild else Action.UNCHANGED


def new_rebuild_token(current: str | None, now: datetime | None = None) -> str:
    """A rebuild annotation value that differs from ``current``: when it was asked for."""
    token = f"cli-{(now or datetime.now(UTC)):%Y%m%dT%H%M%S.%fZ}"
    return token if token != current else f"{token}-1"


def request_rebuild(kube: Kube, name: str, namespace: str) -> Wanted:
    """Set the rebuild annotation to a new value; the build that answers it is wanted."""
    current = kube.get_build(name, namespace)
    if current is None:
        raise NotFoundError(f"ImageBuild {name} not found in namespace {namespace}")
    token = new_rebuild_token(Wanted.current(current).rebuild)
    patched = kube.annotate_build(name, namespace, {REBUILD_ANNOTATION: token})
    return Wanted.current(patched)


def apply_build(kube: Kube, document: dict[str, Any], *, rebuild: bool) -> Applied:
    """Create or update one ImageBuild (already placed in its namespace)."""
    name, namespace = document["metadata"]["name"], document["metadata"]["namespace"]
    for _ in range(_CONFLICT_TRIES - 1):
        try:
            return _apply_once(kube, document, name, namespace, rebuild=rebuild)
        except ApiException as exc:
            if exc.status != 409:  # 409: written meanwhile (the operator, a person): re-read
                raise
    return _apply_once(kube, document, name, namespace, rebuild=rebuild)


def _apply_once(kube: Kube, document: dict[str, Any], name: str, namespace: str, *,
                rebuild: bool) -> Applied:
    existing = kube.get_build(name, namespace)
    if existing is None:
        return Applied(Action.CREATED, Wanted.current(kube.create_build(document, namespace)))
    stored = kube.replace_build(updated_body(existing, document), namespace)
    action = decide(int(existing["metadata"].get("generation") or 1),
                    int(stored["metadata"].get("generation") or 1), rebuild=rebuild)
    if action is Action.REBUILD:
        return Applied(action, request_rebuild(kube, name, namespace))
    return Applied(action, Wanted.current(stored))
