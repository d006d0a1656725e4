"""The ``stagewright`` (and ``kubectl-stagewright``) command line: parse, dispatch, exit code.

Cluster verbs take kubectl's connection flags (``--kubeconfig``, ``--context``,
``-n/--namespace``); the client is created only for them, so ``render``, ``crd`` and
``inspect`` keep working without any kubeconfig.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import urllib3.exceptions

from stagewright.api.types import parse_duration
from stagewright.cli import commands, offline
from stagewright.cli.apply import FileError, NotFoundError
from stagewright.cli.commands import FollowOptions
from stagewright.cli.kube import ApiException, ConfigException, Kube, KubeTarget, UnknownKindError
from stagewright.cli.outcome import EXIT_CLUSTER, EXIT_FAILED, EXIT_USAGE

DESCRIPTION = "Stagewright: in-cluster multi-stage image builds (ImageBuild), and the operator."
EXIT_CODES = """exit codes: 0 succeeded, 1 build failed (or not found), 2 usage or invalid file
(also when the API server rejects it), 3 --timeout passed, 4 cluster unreachable or request
refused"""


def _program() -> str:
    """``kubectl stagewright`` when run as the kubectl plugin, so help text matches usage."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "stagewright"
    return "kubectl stagewright" if name.startswith("kubectl-") else "stagewright"


def _duration(value: str) -> str:
    try:
        parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _connection_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("cluster (as kubectl)")
    group.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, "
                       "~/.kube/config)")
    group.add_argument("--context", help="kubeconfig context (default: the current one)")
    group.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    return flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_program(), description=DESCRIPTION,
                                     epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kube = [_connection_flags()]
    build = verbs.add_parser("build", parents=kube, help="apply ImageBuild file(s); "
                             "--follow streams the build to its end")
    build.add_argument("-f", "--filename", required=True, help="YAML file ('-' = stdin); "
                       "ConfigMaps and Secrets in it are applied too")
    build.add_argument("--follow", action="store_true",
                       help="stream the build log, end with the status table and exit code")
    build.add_argument("--timeout", type=_duration, help="give up following after this "
                       "long (Go duration, e.g. 10m); implies --follow")
    build.add_argument("--rebuild", action="store_true",
                       help="build again even if the spec is unchanged")
    logs = verbs.add_parser("logs", parents=kube, help="print the current build's log")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="follow to the build's end")
    logs.add_argument("--attempt", type=int, help="only this attempt (1, 2, ...)")
    rebuild = verbs.add_parser("rebuild", parents=kube, help="build the same spec again")
    rebuild.add_argument("name")
    rebuild.add_argument("--wait", action="store_true",
                         help="wait for the build's end; exit code as for build --follow")
    rebuild.add_argument("--timeout", type=_duration, help="with --wait: give up after this")
    get = verbs.add_parser("get", parents=kube, help="list ImageBuilds (phase, size, cache)")
    get.add_argument("name", nargs="?")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    describe = verbs.add_parser("describe", parents=kube,
                                help="one ImageBuild: status, history, pods, events")
    describe.add_argument("name")
    run = verbs.add_parser("run", help="run the operator against the current cluster")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    render = verbs.add_parser("render", help="print the build Pod for an ImageBuild file")
    render.add_argument("-f", "--filename", required=True, help="ImageBuild YAML ('-' = stdin)")
    inspect = verbs.add_parser(
        "inspect", help="print an image's digest, size and largest layers with their instruction")
    inspect.add_argument("reference", help="registry/repository[:tag|@digest]")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--top", type=int, default=5, help="largest layers shown (default 5)")
    inspect.add_argument("--base", metavar="REF",
                         help="the base image, to show how many bytes it brought")
    inspect.add_argument("--insecure", action="store_true",
                         help="plain HTTP or self-signed TLS registry")
    inspect.add_argument("--docker-config", help="a Docker config.json with credentials")
    inspect.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    verbs.add_parser("crd", help="print the ImageBuild CustomResourceDefinition")
    return parser


def _offline(args: argparse.Namespace) -> int | None:
    """The verbs that need no kubeconfig; None for the cluster verbs."""
    if args.command == "run":
        return offline.run_operator(verbose=args.verbose)
    if args.command == "render":
        return offline.render(args.filename)
    if args.command == "inspect":
        return offline.inspect_image(args)
    if args.command == "crd":
        return offline.print_crd()
    return None


def _cluster_verb(args: argparse.Namespace) -> Callable[[Kube], int]:
    timeout = getattr(args, "timeout", None)
    if args.command == "build":
        options = FollowOptions(timeout=timeout)
        documents = commands.read_file(args.filename)  # a bad file fails before connecting
        return lambda kube: commands.build(kube, documents,
                                           follow=args.follow or timeout is not None,
                                           rebuild=args.rebuild, options=options)
    if args.command == "logs":
        return lambda kube: commands.logs(kube, args.name, follow=args.follow,
                                          attempt=args.attempt, options=FollowOptions())
    if args.command == "rebuild":
        options = FollowOptions(timeout=timeout, show_log=False)
        return lambda kube: commands.rebuild(kube, args.name, wait=args.wait or bool(timeout),
                                             options=options)
    if args.command == "get":
        return lambda kube: commands.get(kube, args.name, all_namespaces=args.all_namespaces)
    return lambda kube: commands.describe_build(kube, args.name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of both console scripts; returns the exit code."""
    args = _parser().parse_args(argv)
    code = _offline(args)
    if code is not None:
        return code
    try:
        verb = _cluster_verb(args)
        return verb(Kube(KubeTarget(args.kubeconfig, args.context, args.namespace)))
    except KeyboardInterrupt:
        print("error: interrupted; the build goes on in the cluster", file=sys.stderr)
        return 130
    except (FileError, UnknownKindError, OSError, NotFoundError, ConfigException,
            ApiException, urllib3.exceptions.HTTPError) as exc:
        message, code = explain_error(exc)
        print(f"error: {message}", file=sys.stderr)
        return code


def explain_error(exc: Exception) -> tuple[str, int]:
    """An error a person can act on, and its exit code; no tracebacks for expected failures."""
    if isinstance(exc, NotFoundError):
        return str(exc), EXIT_FAILED
    if isinstance(exc, ConfigException):
        return f"no usable kubeconfig: {exc}", EXIT_CLUSTER
    if isinstance(exc, ApiException):
        # 400/422: the server rejected what we sent (its validation): a usage error, like
        # a file our own check refuses; anything else is about access or the cluster.
        code = EXIT_USAGE if exc.status in (400, 422) else EXIT_CLUSTER
        return f"the API server refused: {exc.status} {exc.reason}: {_api_message(exc)}", code
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return f"the API server cannot be reached: {exc}", EXIT_CLUSTER
    return str(exc), EXIT_USAGE


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.body)
    except ValueError:
        return str(exc.body)

