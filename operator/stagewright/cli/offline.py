"""The verbs that need no cluster access of their own: run the operator, or use its parts.

- ``run``: the operator (kopf), configured by ``STAGEWRIGHT_*`` settings.
- ``render -f FILE``: the Kaniko Pod an ImageBuild file would get, as YAML.
- ``inspect REF``: digest, size and layers of an image, as the operator measures them.
- ``crd``: the CustomResourceDefinition generated from the API models.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stagewright.api.crd import render_crd_yaml
from stagewright.api.v1alpha1 import ContextFile, ImageBuild
from stagewright.registry import ImageReference, RegistryClient, RegistryError
from stagewright.resources.kaniko_pod import build_key, build_pod, context_files
from stagewright.settings import Settings


def run_operator(*, verbose: bool) -> int:
    """``stagewright run``: the operator, until it is stopped."""
    import kopf  # noqa: PLC0415 - only `run` needs kopf's start-up cost

    import stagewright.handlers  # noqa: F401, PLC0415 - registers the handlers

    settings = Settings()
    # kopf's formatter prefixes each message about an object with [namespace/name].
    kopf.configure(verbose=verbose, log_prefix=True)
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:  # kopf reports every event handler call; our handlers log what matters
        logging.getLogger("kopf.objects").addFilter(
            lambda record: not record.getMessage().endswith("' succeeded."))
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
        memo=kopf.Memo(settings=settings),
    )
    return 0


def render(filename: str) -> int:
    """``stagewright render``: the Kaniko Pod for each ImageBuild in a file, as YAML."""
    text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    documents = [d for d in yaml.safe_load_all(text) if d]
    builds = [d for d in documents if isinstance(d, dict) and d.get("kind") == "ImageBuild"]
    if not builds:
        print(f"error: {filename} holds no ImageBuild", file=sys.stderr)
        return 2
    settings = Settings()
    pods: list[dict[str, Any]] = []
    for document in builds:
        try:
            build = ImageBuild.model_validate(document)
        except ValidationError as exc:
            name = (document.get("metadata") or {}).get("name", "?")
            print(f"error: ImageBuild {name} is invalid:", file=sys.stderr)
            for error in exc.errors(include_url=False):
                where = ".".join(str(part) for part in error["loc"])
                print(f"  {where}: {error['msg']}", file=sys.stderr)
            return 1
        key = build_key(build.generation, build.rebuild_token)
        files = _context_files(build, documents)
        pods.append(build_pod(build, settings, key=key, attempt=1, files=files))
    sys.stdout.write(yaml.safe_dump_all(pods, sort_keys=False))
    return 0


def _context_files(build: ImageBuild, documents: list[Any]) -> list[ContextFile]:
    """A ConfigMap context's files, from the ConfigMap in the same file when it is there.

    The operator reads the ConfigMap's keys from the cluster; without that object at hand,
    only ``items`` are known, and stderr says so.
    """
    source = build.spec.source.config_map
    if source is None:
        return []
    for document in documents:
        if (isinstance(document, dict) and document.get("kind") == "ConfigMap"
                and (document.get("metadata") or {}).get("name") == source.name):
            keys = [*(document.get("data") or {}), *(document.get("binaryData") or {})]
            return context_files(source, keys)
    if source.items is None:
        print(f"note: ConfigMap {source.name} is not in the file; the operator mounts each of "
              "its keys as a file, which this rendering cannot show", file=sys.stderr)
    return context_files(source, [])


def inspect_image(reference: str, insecure: bool, docker_config: Path | None,
                  timeout: float) -> int:
    """``stagewright inspect``: an image's digest, size and layers, as the operator measures."""
    try:
        ref = ImageReference.parse(reference)
        config = json.loads(docker_config.read_text()) if docker_config else None
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def resolve() -> dict[str, Any]:
        async with RegistryClient(timeout=timeout) as client:
            info = await client.resolve(ref, insecure=insecure, docker_config=config)
        return info.model_dump(mode="json", by_alias=True)

    try:
        result = asyncio.run(resolve())
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def print_crd() -> int:
    """``stagewright crd``: the CustomResourceDefinition generated from the API models."""
    sys.stdout.write(render_crd_yaml())
    return 0
