"""The verbs that need no cluster access of their own: run the operator, or use its parts.

- ``run``: the operator (kopf), configured by ``STAGEWRIGHT_*`` settings.
- ``render -f FILE``: the Kaniko Pod an ImageBuild file would get (one per platform with
  ``spec.platforms``), as YAML.
- ``inspect REF``: digest, size and the largest layers with the instruction that made each
  (and the base image's share with ``--base``), as an ImageBuild's status shows them;
  ``--json`` for scripts.
- ``crd``: the CustomResourceDefinition generated from the API models.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stagewright.api.crd import render_crd_yaml
from stagewright.api.platforms import Platform, PlatformMode
from stagewright.api.v1alpha1 import ContextFile, ImageBuild
from stagewright.insight import base_size, largest_layer_fields
from stagewright.registry import ImageInfo, ImageReference, RegistryClient, RegistryError
from stagewright.resources.build_pod import build_pod
from stagewright.resources.platform_pods import platform_pod
from stagewright.resources.pod_common import build_key, context_files
from stagewright.settings import Settings
from stagewright.status import human_size


def run_operator(*, verbose: bool) -> int:
    """``stagewright run``: the operator, until it is stopped."""
    import kopf  # noqa: PLC0415 - only `run` needs kopf's start-up cost

    import stagewright.handlers.registration  # noqa: F401, PLC0415 - registers handlers
    from stagewright.handlers.election import replica_identity  # noqa: PLC0415

    settings = Settings()
    identity = replica_identity()
    _tune_garbage_collector()
    _configure_logging(kopf, settings.log_format, identity, verbose=verbose)
    kopf.run(
        standalone=True,
        # kopf serves no resource itself (the operator's informers watch ImageBuilds and build
        # pods, in STAGEWRIGHT_NAMESPACES when set), so it needs no namespaces, and never
        # lists them (the operator's RBAC does not allow that).
        clusterwide=True,
        liveness_endpoint=settings.liveness_endpoint,
        memo=kopf.Memo(settings=settings, identity=identity),
    )
    return 0


def _configure_logging(kopf: Any, log_format: str, identity: str, *, verbose: bool) -> None:
    """Text (kopf's, each line about an object prefixed with [namespace/name]) or JSON (one
    object a line: kopf's ``object`` reference with the ImageBuild's namespace and name, and
    ``replica``, this process's identity in the leader Lease, on every line)."""
    if log_format == "json":
        kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=False)
    else:
        kopf.configure(verbose=verbose, log_prefix=True)

    def stamp(record: logging.LogRecord) -> bool:
        record.replica = identity
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(stamp)
    if not verbose:  # kopf reports every event handler call; our handlers log what matters
        logging.getLogger("kopf.objects").addFilter(
            lambda record: not record.getMessage().endswith("' succeeded."))


def _tune_garbage_collector() -> None:
    """Keep Python's cyclic garbage collector from costing a burst a fifth of the CPU.

    What start-up built (modules, kopf, pydantic's validators) lives as long as the process,
    so it is frozen out of the collector's passes, and the youngest generation is collected
    every 10,000 allocations instead of 700: most of a reconcile's objects are freed by
    reference counting before then. Measured under a burst of 1,000 (benchmarks/README.md):
    the collector's time fell from 1.16 s to 0.29 s.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def render(filename: str) -> int:
    """``stagewright render``: the Kaniko Pod for each ImageBuild in a file (each platform's,
    with ``spec.platforms``), as YAML."""
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
        if not build.spec.platforms:
            pods.append(build_pod(build, settings, key=key, attempt=1, files=files))
            continue
        if build.spec.platform_mode is PlatformMode.CROSS:
            print(f"note: ImageBuild {build.name} is a cross build: the operator checks its "
                  "Dockerfile and pins its FROM --platform=$BUILDPLATFORM images when it "
                  "starts the build, which this rendering does not show", file=sys.stderr)
        pods += [platform_pod(build, settings, key=key, attempt=1,
                              platform=Platform.parse(text), files=files)
                 for text in build.spec.platforms]
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


def inspect_image(args: argparse.Namespace) -> int:
    """``stagewright inspect``: digest, size and largest layers, as the operator measures."""
    try:
        ref = ImageReference.parse(args.reference)
        base = ImageReference.parse(args.base) if args.base else None
        config = (json.loads(Path(args.docker_config).read_text()) if args.docker_config
                  else None)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def resolve() -> tuple[ImageInfo, ImageInfo | None]:
        async with RegistryClient(timeout=args.timeout) as client:
            info = await client.resolve(ref, insecure=args.insecure, docker_config=config,
                                        details=True)
            base_info = None if base is None else await client.resolve(
                base, insecure=args.insecure, docker_config=config)
        return info, base_info

    try:
        info, base_info = asyncio.run(resolve())
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    base_bytes = None if base_info is None else base_size(info, args.base, _layer_lists(base_info))
    if args.json:
        result = info.model_dump(mode="json", by_alias=True)
        result["largestLayers"] = largest_layer_fields(info, args.top)
        if base_bytes is not None:
            result["baseImage"], result["baseSize"] = args.base, base_bytes
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(_table(args.reference, info, largest_layer_fields(info, args.top),
                                args.base, base_bytes))
    return 0


def print_crd() -> int:
    """``stagewright crd``: the CustomResourceDefinition generated from the API models."""
    sys.stdout.write(render_crd_yaml())
    return 0


def _layer_lists(info: ImageInfo) -> list[list[str]]:
    """An image's layer digests, one list per platform."""
    images = info.platforms or (info,)
    return [[layer.digest for layer in image.layer_details] for image in images]


def _table(reference: str, info: ImageInfo, largest: list[dict[str, Any]], base: str | None,
           base_bytes: int | None) -> str:
    """The same facts an ImageBuild's status gives, for a person."""
    lines = [f"Image:   {reference}", f"Digest:  {info.digest}",
             f"Size:    {human_size(info.size)} ({info.size} bytes) in {info.layers} layers"]
    lines += [f"  {p.platform}: {human_size(p.size)} in {p.layers} layers"
              for p in info.platforms]
    if base is not None and base_bytes is not None:
        lines.append(f"Base:    {human_size(base_bytes)} from {base}")
    platform = any("platform" in entry for entry in largest)
    lines += ["", "Largest layers:",
              "  " + "  ".join([f"{'SIZE':>9}", f"{'DIGEST':<19}",
                                *(["PLATFORM    "] if platform else []), "INSTRUCTION"])]
    for entry in largest:
        cells = [f"{human_size(entry['size']):>9}", f"{entry['digest'][:19]:<19}"]
        if platform:
            cells.append(f"{entry.get('platform', ''):<12}")
        cells.append(entry.get("instruction") or "(no history)")
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines) + "\n"

