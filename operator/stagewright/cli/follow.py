"""Follow a build from its first status to its end, streaming each pod's log on the way.

The ImageBuild is watched (no polling); each build pod its status names is followed in turn
(every attempt, and every platform's), and in each pod every container in order (init
containers first, so stage checks added as init containers are shown as they run). A
container's log is read with the real API (``follow=True``) until the container ends. The
decisions are pure (:class:`BuildTracker`, :func:`next_container`); :func:`follow_build`
does the waiting.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from stagewright.cli.apply import Wanted
from stagewright.cli.display import Reporter
from stagewright.cli.kube import ApiException, Kube
from stagewright.cli.outcome import Outcome, build_outcome, deleted_outcome, timeout_outcome
from stagewright.cli.progress import ProgressParser, Stage

SETTLED = frozenset({"Succeeded", "Failed"})
_POD_DONE = frozenset({"Succeeded", "Failed"})
#: How often a waiting follower wakes to refresh the live line and check the deadline.
_TICK = 0.5


class Step(Enum):
    """What to do after reading the ImageBuild."""

    WAIT = "wait"
    FOLLOW_POD = "follow pod"
    DONE = "done"
    SUPERSEDED = "superseded"


@dataclass
class BuildTracker:
    """Decides, from each ImageBuild seen, whether to wait, follow a pod, or stop."""

    wanted: Wanted
    followed: list[str] = field(default_factory=list)

    def next_step(self, build: Mapping[str, Any]) -> tuple[Step, str | None]:
        """The next step, with the pod to follow for FOLLOW_POD."""
        now_wanted = Wanted.current(build)
        if (now_wanted.generation, now_wanted.rebuild) != (self.wanted.generation,
                                                           self.wanted.rebuild):
            return Step.SUPERSEDED, None
        status = dict(build.get("status") or {})
        if not self.wanted.answered_by(status):
            return Step.WAIT, None
        # The pod, or each platform's pod of a multi-platform build (a retry's too), in turn.
        pods = [status.get("podName"), *(entry.get("pod") for entry in status.get("platforms")
                                         or [] if isinstance(entry, Mapping))]
        pod = next((str(name) for name in pods if name and str(name) not in self.followed),
                   None)
        if pod is not None:
            return Step.FOLLOW_POD, pod
        if status.get("phase") in SETTLED:
            return Step.DONE, None
        return Step.WAIT, None


FINISHED = "<finished>"


def container_names(pod: Mapping[str, Any]) -> list[str]:
    """Init containers, then containers, in the order they run."""
    spec = pod.get("spec") or {}
    return [c["name"] for c in [*(spec.get("initContainers") or []),
                                *(spec.get("containers") or [])]]


def _states(pod: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    status = pod.get("status") or {}
    return {s["name"]: dict(s.get("state") or {}) for s in
            [*(status.get("initContainerStatuses") or []),
             *(status.get("containerStatuses") or [])]}


def next_container(pod: Mapping[str, Any], done: list[str]) -> str | None:
    """The container whose log to read next, FINISHED, or None to wait for the pod.

    A container is read once it runs or has ended; one that never started in a finished pod
    is skipped (its log does not exist).
    """
    states = _states(pod)
    pod_done = (pod.get("status") or {}).get("phase") in _POD_DONE
    for name in container_names(pod):
        if name in done:
            continue
        state = states.get(name) or {}
        if "running" in state or "terminated" in state:
            return name
        if pod_done:
            done.append(name)
            continue
        return None
    return FINISHED


class FollowTimeoutError(Exception):
    """``--timeout`` ran out while following."""


@dataclass
class Deadline:
    """Seconds left of ``--timeout`` (unbounded when none was given)."""

    seconds: float | None
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        """Seconds left; raises FollowTimeoutError when none are."""
        if self.seconds is None:
            return 3600.0
        left = self.started + self.seconds - time.monotonic()
        if left <= 0:
            raise FollowTimeoutError
        return left


@dataclass
class Follower:
    """Follows one build; ``stages`` (from the Dockerfile, when known) gives step counts."""

    kube: Kube
    reporter: Reporter
    deadline: Deadline
    stages: list[Stage] = field(default_factory=list)
    last: dict[str, Any] | None = None

    def run(self, wanted: Wanted, timeout_text: str) -> Outcome:
        """Follow until the wanted build settles; the outcome says how it ended."""
        self.reporter.phase(wanted.name, "Pending")
        try:
            return self._follow(BuildTracker(wanted))
        except FollowTimeoutError:
            return timeout_outcome(wanted.name, timeout_text, self.last)

    def _follow(self, tracker: BuildTracker) -> Outcome:
        wanted = tracker.wanted
        while True:
            step, pod = self._watch_until_step(tracker)
            if step is None:
                if self.kube.get_build(wanted.name, wanted.namespace) is None:
                    return deleted_outcome(wanted.name)
                continue
            if step is Step.FOLLOW_POD and pod is not None:
                tracker.followed.append(pod)
                self.follow_pod(pod, wanted.namespace)
            elif step is Step.SUPERSEDED and self.last is not None:
                tracker = BuildTracker(Wanted.current(self.last))
                wanted = tracker.wanted
                self.reporter.note(f"ImageBuild {wanted.name} changed (generation "
                                   f"{wanted.generation}); following its new build")
            elif step is Step.DONE and self.last is not None:
                return build_outcome(self.last)

    def _watch_until_step(self, tracker: BuildTracker) -> tuple[Step | None, str | None]:
        """Watch the ImageBuild until there is something to do (None: the watch ended)."""
        wanted = tracker.wanted
        for build in self.kube.watch_build(wanted.name, wanted.namespace,
                                           self.deadline.remaining()):
            self._seen(build, wanted)
            step, pod = tracker.next_step(build)
            if step is not Step.WAIT:
                return step, pod
            self.deadline.remaining()
        return None, None

    def _seen(self, build: dict[str, Any], wanted: Wanted) -> None:
        """Report each phase, reason or attempt of the wanted build once (earlier builds'
        statuses, still there until the operator picks the request up, are not news)."""
        before = dict((self.last or {}).get("status") or {})
        status = dict(build.get("status") or {})
        self.last = build
        if not wanted.answered_by(status):
            self.reporter.phase(build["metadata"]["name"], "Pending")
            return
        if not wanted.answered_by(before):
            before = {}
        self.reporter.phase(build["metadata"]["name"], status.get("phase"))
        seen = (status.get("phase"), status.get("reason"), status.get("attempt"))
        if seen != (before.get("phase"), before.get("reason"), before.get("attempt")) and seen[0]:
            message = str(status.get("message") or "").strip().splitlines()
            self.reporter.note(f"ImageBuild {build['metadata']['name']}: {seen[0]}"
                               + (f" ({seen[1]})" if seen[1] not in (None, seen[0]) else "")
                               + (f": {message[0]}" if message else ""))

    def follow_pod(self, pod: str, namespace: str) -> None:
        """Stream every container of one build pod, in order, until the pod is done."""
        parser = ProgressParser(self.stages)
        self.reporter.progress(parser.progress)
        done: list[str] = []
        while True:
            container = None
            for current in self.kube.watch_pod(pod, namespace, self.deadline.remaining()):
                container = next_container(current, done)
                if container is not None:
                    break
            if container is None:
                if self.kube.get_pod(pod, namespace) is None:
                    self.reporter.note(f"Pod {pod} is gone; its log cannot be read")
                    return
                continue
            if container == FINISHED:
                return
            done.append(container)
            self.reporter.note(f"Pod {pod}, container {container}")
            self.stream_log(pod, namespace, container, parser)

    def stream_log(self, pod: str, namespace: str, container: str,
                   parser: ProgressParser | None = None, *, follow: bool = True) -> None:
        """Print one container's log (to its end when following), feeding the progress."""
        try:
            stream = self.kube.open_log(pod, namespace, container, follow=follow)
        except ApiException as exc:
            self.reporter.note(f"The log of {pod}/{container} cannot be read: "
                               f"{exc.status} {exc.reason}")
            return
        try:
            while not stream.ended:
                line = stream.next_line(min(_TICK, self.deadline.remaining()))
                if line is None:
                    continue
                self.reporter.log(line)
                if parser is not None and parser.feed(line):
                    self.reporter.progress(parser.progress)
        finally:
            stream.close()
        if stream.error is not None:
            self.reporter.note(f"The log stream of {pod}/{container} broke off: {stream.error}")
