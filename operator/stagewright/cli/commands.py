"""The cluster verbs: build, logs, rebuild, get, describe. Each ties the client to the pure parts.

Every verb returns its exit code (see ``outcome``); errors a person can fix are printed to
stderr as one ``error:`` line, never as a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagewright.api.types import parse_duration
from stagewright.api.v1alpha1 import KIND, ImageBuild
from stagewright.cli import apply as applying
from stagewright.cli.apply import Action, Applied, NotFoundError, Wanted
from stagewright.cli.describe import describe
from stagewright.cli.display import Reporter, emit, make_console
from stagewright.cli.follow import Deadline, Follower
from stagewright.cli.kube import Kube
from stagewright.cli.outcome import EXIT_FAILED, EXIT_SUCCEEDED, Outcome
from stagewright.cli.progress import Stage, dockerfile_stages
from stagewright.cli.tables import (
    columns_table,
    get_columns,
    get_rows,
    key_value_table,
    status_rows,
)
from stagewright.resources.pod_common import LABEL_ATTEMPT, build_key, dockerfile_key, pod_name


@dataclass(frozen=True)
class FollowOptions:
    """How to wait for a build: the ``--timeout`` (Go duration) and whether to show its log."""

    timeout: str | None = None
    show_log: bool = True


def read_file(filename: str) -> list[dict[str, Any]]:
    """The objects of a ``-f`` file ('-' is stdin), checked before anything is applied."""
    text = sys.stdin.read() if filename == "-" else Path(filename).read_text()
    return applying.load_documents(text, filename)


def build(kube: Kube, documents: list[dict[str, Any]], *, follow: bool, rebuild: bool,
          options: FollowOptions) -> int:
    """``stagewright build -f FILE``: apply, then (with --follow) follow each build to its end."""
    placed = applying.apply_order([
        applying.placed(d, kube.namespace, explicit=kube.namespace_explicit) for d in documents])
    console = make_console()
    applied: list[tuple[Applied, dict[str, Any]]] = []
    for document in placed:
        if document["kind"] != KIND:
            what = kube.apply_object(document, document["metadata"]["namespace"])
            console.print(f"{document['kind'].lower()}/{document['metadata']['name']} {what}",
                          markup=False)
    for document in placed:
        if document["kind"] == KIND:
            result = applying.apply_build(kube, document, rebuild=rebuild)
            console.print(f"imagebuild.stagewright.dev/{result.wanted.name} "
                          f"{result.action.value}", markup=False)
            applied.append((result, document))
    if follow:
        for result, _ in applied:
            if result.action is Action.UNCHANGED:
                console.print(f"==> ImageBuild {result.wanted.name} is unchanged: its last "
                              "build follows (--rebuild builds again)", markup=False)
    if not follow:
        return EXIT_SUCCEEDED
    codes = [wait_for(kube, result.wanted, options, _stages(kube, document, placed))
             for result, document in applied]
    return max(codes)


def _stages(kube: Kube, build_doc: dict[str, Any],
            documents: list[dict[str, Any]] | None = None) -> list[Stage]:
    """The Dockerfile's stages (for step counts) when the context is a ConfigMap: from the
    file being applied, else from the cluster; none for other sources."""
    spec = ImageBuild.model_validate(build_doc).spec
    source, key = spec.source.config_map, dockerfile_key(spec)
    if source is None or key is None:
        return []
    data = next((d.get("data") or {} for d in documents or []
                 if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source.name), None)
    if data is None:
        data = kube.config_map_data(source.name, build_doc["metadata"]["namespace"])
    dockerfile = data.get(key)
    return dockerfile_stages(dockerfile) if isinstance(dockerfile, str) else []


def wait_for(kube: Kube, wanted: Wanted, options: FollowOptions,
             stages: list[Stage] | None = None) -> int:
    """Follow one build to its end, then print the status table and the outcome line."""
    seconds = parse_duration(options.timeout).total_seconds() if options.timeout else None
    console = make_console()
    reporter = Reporter(console, show_log=options.show_log)
    follower = Follower(kube, reporter, Deadline(seconds), stages or [])
    with reporter:
        outcome = follower.run(wanted, options.timeout or "")
    final = kube.get_build(wanted.name, wanted.namespace) or follower.last
    if final is not None:
        reporter.show(key_value_table(status_rows(final)))
    return _finish(reporter, outcome)


def _finish(reporter: Reporter, outcome: Outcome) -> int:
    reporter.last_line(outcome.line)
    return outcome.code


def rebuild(kube: Kube, name: str, *, wait: bool, options: FollowOptions) -> int:
    """``stagewright rebuild NAME``: a new build of the same spec (the rebuild annotation)."""
    wanted = applying.request_rebuild(kube, name, kube.namespace)
    make_console().print(f"imagebuild.stagewright.dev/{name} rebuild requested "
                         f"({wanted.rebuild})", markup=False)
    if not wait:
        return EXIT_SUCCEEDED
    return wait_for(kube, wanted, options, _stages(kube, _require(kube, name)))


def logs(kube: Kube, name: str, *, follow: bool, attempt: int | None,
         options: FollowOptions) -> int:
    """``stagewright logs NAME``: the current build's log, every attempt (or one)."""
    current = _require(kube, name)
    wanted = Wanted.current(current)
    if follow and attempt is None:
        return wait_for(kube, wanted, options, _stages(kube, current))
    pods = _attempt_pods(kube, wanted)
    if attempt is not None:
        pods = [(n, pod) for n, pod in pods if n == attempt]
    if not pods:
        which = f"attempt {attempt} of " if attempt is not None else ""
        print(f"error: no build pod for {which}ImageBuild {name}'s current build "
              f"(generation {wanted.generation})", file=sys.stderr)
        return EXIT_FAILED
    reporter = Reporter(make_console(tty=False))
    follower = Follower(kube, reporter, Deadline(None))
    for number, pod in pods:
        reporter.note(f"Attempt {number}: pod {pod['metadata']['name']}")
        if follow:
            follower.follow_pod(pod["metadata"]["name"], wanted.namespace)
            continue
        for container in _containers(pod):
            follower.stream_log(pod["metadata"]["name"], wanted.namespace, container,
                                follow=False)
    return EXIT_SUCCEEDED


def _attempt_pods(kube: Kube, wanted: Wanted) -> list[tuple[int, dict[str, Any]]]:
    """The current build's pods by attempt number (older generations' pods left out)."""
    key = build_key(wanted.generation, wanted.rebuild)
    found = []
    for pod in kube.build_pods(wanted.name, wanted.namespace):
        number = int((pod["metadata"].get("labels") or {}).get(LABEL_ATTEMPT) or 0)
        if pod["metadata"]["name"] == pod_name(wanted.name, key, number):
            found.append((number, pod))
    return sorted(found, key=lambda item: item[0])


def _containers(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [c["name"] for c in [*(spec.get("initContainers") or []),
                                *(spec.get("containers") or [])]]


def get(kube: Kube, name: str | None, *, all_namespaces: bool) -> int:
    """``stagewright get [NAME] [-A]``: the ImageBuilds as a table."""
    if name is not None:
        builds = [_require(kube, name)]
        all_namespaces = False
    else:
        builds = kube.list_builds(all_namespaces=all_namespaces)
    console = make_console()
    if not builds:
        where = "any namespace" if all_namespaces else f"namespace {kube.namespace}"
        print(f"No ImageBuilds found in {where}.", file=sys.stderr)
        return EXIT_SUCCEEDED
    emit(console, columns_table(get_columns(all_namespaces=all_namespaces),
                                get_rows(builds, all_namespaces=all_namespaces)))
    return EXIT_SUCCEEDED


def describe_build(kube: Kube, name: str) -> int:
    """``stagewright describe NAME``: status, conditions, history, pods and recent Events."""
    current = _require(kube, name)
    namespace = current["metadata"]["namespace"]
    pods = kube.build_pods(name, namespace)
    events = kube.events_for(KIND, name, namespace)
    pod = (current.get("status") or {}).get("podName")
    if pod:
        events = sorted([*events, *kube.events_for("Pod", pod, namespace)],
                        key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    sys.stdout.write(describe(current, pods, events))
    return EXIT_SUCCEEDED


def _require(kube: Kube, name: str) -> dict[str, Any]:
    found = kube.get_build(name)
    if found is None:
        raise NotFoundError(f"ImageBuild {name} not found in namespace {kube.namespace}")
    return found

