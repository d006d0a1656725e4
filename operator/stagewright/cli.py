"""The ``stagewright`` command: run the operator, or use its parts without a cluster.

- ``run``: the operator (kopf), configured by ``STAGEWRIGHT_*`` settings.
- ``render -f FILE``: the Kaniko Pod an ImageBuild file would get, as YAML.
- ``inspect REF``: digest, size and layers of an image, as the operator measures them.
- ``crd``: the CustomResourceDefinition generated from the API models.
"""

from __future__ import annotations

import argparse
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
from stagewright.resources.build_pod import build_pod
from stagewright.resources.pod_common import build_key, context_files
from stagewright.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stagewright", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator against the current cluster")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    render = commands.add_parser("render", help="print the build Pod for an ImageBuild file")
    render.add_argument("-f", "--filename", required=True, help="ImageBuild YAML ('-' = stdin)")
    inspect = commands.add_parser("inspect", help="print an image's digest, size and layers")
    inspect.add_argument("reference", help="registry/repository[:tag|@digest]")
    inspect.add_argument("--insecure", action="store_true",
                         help="plain HTTP or self-signed TLS registry")
    inspect.add_argument("--docker-config", type=Path,
                         help="a Docker config.json with credentials")
    inspect.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    commands.add_parser("crd", help="print the ImageBuild CustomResourceDefinition")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(verbose=args.verbose)
    if args.command == "render":
        return _render(args.filename)
    if args.command == "inspect":
        return _inspect(args.reference, args.insecure, args.docker_config, args.timeout)
    sys.stdout.write(render_crd_yaml())
    return 0


def _run(*, verbose: bool) -> int:
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


def _render(filename: str) -> int:
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


def _inspect(reference: str, insecure: bool, docker_config: Path | None,
             timeout: float) -> int:
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


if __name__ == "__main__":
    raise SystemExit(main())
