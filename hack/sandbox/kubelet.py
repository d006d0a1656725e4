"""The sandbox kubelet: runs Stagewright's Kaniko build pods with buildah, for test clusters.

The cluster test tier has a real kube-apiserver but no scheduler, no kubelet and no Kaniko
(nothing can run containers or pull images here). This process plays the node: it watches
the pods the operator creates (``app.kubernetes.io/managed-by=stagewright``), runs the build
each one asks for with buildah in place of Kaniko (a real multi-stage build, a real push, a
real registry layer cache), and writes ``pods/status`` as a kubelet would: Running, then
Succeeded with the digest as termination message, or Failed with the exit code and the log
tail (``FallbackToLogsOnError``), or ``DeadlineExceeded`` past ``activeDeadlineSeconds``.

The status logic is pure (``*_status_patch`` functions: pod dict in, patch dict out), so it is
unit-tested against the official Pod schema without a server. :class:`SandboxKubelet` is the
thin I/O around it: one watch thread, one thread per build.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from sandbox.buildah import KILLED_EXIT_CODE, BuildResult, run_build
from sandbox.kaniko_args import SANDBOX, UnsupportedBuildError, parse_kaniko_args

logger = logging.getLogger("sandbox.kubelet")

#: Only the operator's build pods; anything else in the cluster is not ours to run.
LABEL_SELECTOR = "app.kubernetes.io/managed-by=stagewright"
CONTAINER = "kaniko"
NODE_IP = "127.0.0.1"
#: What a kubelet writes when a pod outlives ``activeDeadlineSeconds``.
DEADLINE_REASON = "DeadlineExceeded"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
#: What a kubelet writes for a container it can no longer find.
LOST_REASON = "ContainerStatusUnknown"
LOST_MESSAGE = "The container could not be located when the pod was terminated"
#: The kubelet's limits for termination messages (pkg/kubelet/container/runtime.go).
MAX_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
_DEFAULT_DOCKER_CONFIG = "/kaniko/.docker"
_STRATEGIC_MERGE = "application/strategic-merge-patch+json"

JSON = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Pure status logic: what a kubelet writes, from the pod and what happened to its container.


@dataclass(frozen=True)
class Waiting:
    """The container is not started yet (volumes not mountable, as ``ContainerCreating``)."""

    reason: str = "ContainerCreating"
    message: str | None = None


@dataclass(frozen=True)
class Running:
    started_at: datetime


@dataclass(frozen=True)
class Terminated:
    """The container ended; ``message`` is already the termination message per policy."""

    exit_code: int
    reason: str
    message: str
    finished_at: datetime
    started_at: datetime | None = None


ContainerState = Waiting | Running | Terminated


def log_tail(log: str) -> str:
    """The kubelet's fallback message: the last 80 lines, then at most the last 2048 bytes."""
    lines = "".join(log.splitlines(keepends=True)[-FALLBACK_LOG_LINES:])
    return lines.encode()[-FALLBACK_LOG_BYTES:].decode(errors="ignore")


def termination_message(container: Mapping[str, Any], exit_code: int, file: str, log: str) -> str:
    """Apply ``terminationMessagePolicy``: the message file, or the log tail on error."""
    message = file.encode()[:MAX_MESSAGE_BYTES].decode(errors="ignore")
    policy = container.get("terminationMessagePolicy", "File")
    if not message and exit_code != 0 and policy == "FallbackToLogsOnError":
        return log_tail(log)
    return message


def terminated_state(
    container: Mapping[str, Any],
    result: BuildResult,
    *,
    digest_file: str | None,
    started_at: datetime,
    finished_at: datetime,
) -> Terminated:
    """The container state a finished build leaves.

    The digest reaches the termination message only when ``--digest-file`` is the container's
    ``terminationMessagePath``; the sandbox writes it only after a successful push.
    """
    path = container.get("terminationMessagePath", "/dev/termination-log")
    file = result.digest if result.digest and digest_file == path else ""
    return Terminated(
        exit_code=result.exit_code,
        reason="Completed" if result.exit_code == 0 else "Error",
        message=termination_message(container, result.exit_code, file, result.log),
        started_at=started_at,
        finished_at=finished_at,
    )


def pod_status_patch(
    pod: Mapping[str, Any],
    state: ContainerState,
    *,
    start_time: datetime,
    now: datetime,
    reason: str | None = None,
    message: str | None = None,
) -> JSON:
    """The ``pods/status`` patch a kubelet writes for ``state`` of the pod's one container.

    Conditions follow the kubelet's generator (pkg/kubelet/status/generate.go); a condition
    whose status is unchanged keeps its ``lastTransitionTime``.
    """
    container = _container(pod)
    if isinstance(state, Terminated):
        phase = "Succeeded" if state.exit_code == 0 else "Failed"
    else:
        phase = "Running" if isinstance(state, Running) else "Pending"
    status: JSON = {
        "phase": phase,
        "conditions": _conditions(pod, phase, now),
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": NODE_IP,
        "podIPs": [{"ip": NODE_IP}],
        "startTime": _timestamp(start_time),
        "containerStatuses": [_container_status(pod, container, state)],
    }
    if reason is not None:
        status["reason"] = reason
    if message is not None:
        status["message"] = message
    return {"status": status}


def waiting_status_patch(
    pod: Mapping[str, Any], *, start_time: datetime, now: datetime, message: str | None = None
) -> JSON:
    """Pending/ContainerCreating: admitted, but a volume cannot be mounted yet."""
    return pod_status_patch(pod, Waiting(message=message), start_time=start_time, now=now)


def running_status_patch(
    pod: Mapping[str, Any], *, start_time: datetime, started_at: datetime
) -> JSON:
    return pod_status_patch(pod, Running(started_at), start_time=start_time, now=started_at)


def finished_status_patch(
    pod: Mapping[str, Any],
    result: BuildResult,
    *,
    digest_file: str | None,
    start_time: datetime,
    started_at: datetime,
    finished_at: datetime,
) -> JSON:
    """The terminal patch for a build: Succeeded, Failed, or Failed with DeadlineExceeded."""
    state = terminated_state(
        _container(pod), result, digest_file=digest_file, started_at=started_at,
        finished_at=finished_at,
    )
    if result.timed_out:
        return pod_status_patch(
            pod, state, start_time=start_time, now=finished_at,
            reason=DEADLINE_REASON, message=DEADLINE_MESSAGE,
        )
    return pod_status_patch(pod, state, start_time=start_time, now=finished_at)


def deadline_before_start_patch(
    pod: Mapping[str, Any], *, start_time: datetime, now: datetime
) -> JSON:
    """The deadline passed while the container never started (e.g. a missing Secret)."""
    state = Terminated(exit_code=KILLED_EXIT_CODE, reason=LOST_REASON, message=LOST_MESSAGE,
                       finished_at=now)
    return pod_status_patch(pod, state, start_time=start_time, now=now,
                            reason=DEADLINE_REASON, message=DEADLINE_MESSAGE)


def lost_status_patch(pod: Mapping[str, Any], *, now: datetime) -> JSON:
    """A pod Running under a previous kubelet: its build died with that kubelet."""
    status = pod.get("status") or {}
    start_time = _parse_time(status.get("startTime")) or now
    previous: JSON = next(iter(status.get("containerStatuses") or []), {})
    running = (previous.get("state") or {}).get("running") or {}
    state = Terminated(
        exit_code=KILLED_EXIT_CODE, reason=LOST_REASON, message=LOST_MESSAGE, finished_at=now,
        started_at=_parse_time(running.get("startedAt")),
    )
    return pod_status_patch(
        pod, state, start_time=start_time, now=now,
        message=f"{SANDBOX} restarted while this pod ran: its build was lost",
    )


def _container(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = pod.get("spec", {}).get("containers") or []
    for container in containers:
        if container.get("name") == CONTAINER:
            return dict(container)
    return dict(containers[0]) if containers else {"name": CONTAINER}


def _container_status(
    pod: Mapping[str, Any], container: Mapping[str, Any], state: ContainerState
) -> JSON:
    uid = pod.get("metadata", {}).get("uid", "")
    image = container.get("image", "")
    entry: JSON = {
        "name": container.get("name", CONTAINER),
        "image": image,
        # Never pulled here: the reference stands in for the digest a runtime would report.
        "imageID": image,
        "ready": isinstance(state, Running),
        "started": isinstance(state, Running),
        "restartCount": 0,
        "lastState": {},
    }
    if isinstance(state, Waiting):
        waiting: JSON = {"reason": state.reason}
        if state.message:
            waiting["message"] = state.message
        entry["state"] = {"waiting": waiting}
        entry["imageID"] = ""
        return entry
    # buildah ran it: say so in the ID, in the runtime://id form a kubelet reports.
    digest = hashlib.sha256(f"{uid}/{entry['name']}".encode()).hexdigest()
    entry["containerID"] = f"buildah://{digest}"
    if isinstance(state, Running):
        entry["state"] = {"running": {"startedAt": _timestamp(state.started_at)}}
        return entry
    terminated: JSON = {
        "exitCode": state.exit_code,
        "reason": state.reason,
        "finishedAt": _timestamp(state.finished_at),
        "containerID": entry["containerID"],
    }
    if state.started_at is not None:
        terminated["startedAt"] = _timestamp(state.started_at)
    if state.message:
        terminated["message"] = state.message
    entry["state"] = {"terminated": terminated}
    return entry


def _conditions(pod: Mapping[str, Any], phase: str, now: datetime) -> list[JSON]:
    """PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled."""
    name = _container(pod).get("name", CONTAINER)
    if phase == "Running":
        ready: tuple[str, str | None, str | None] = ("True", None, None)
    elif phase == "Pending":
        ready = ("False", "ContainersNotReady", f"containers with unready status: [{name}]")
    else:
        ready = ("False", "PodCompleted" if phase == "Succeeded" else "PodFailed", None)
    sandbox = "True" if phase == "Running" else "False"
    wanted: list[tuple[str, str, str | None, str | None]] = [
        ("PodReadyToStartContainers", sandbox, None, None),
        ("Initialized", "True", "PodCompleted" if phase == "Succeeded" else None, None),
        ("Ready", *ready),
        ("ContainersReady", *ready),
        # No scheduler here: the sandbox node takes every build pod, as a scheduler would.
        ("PodScheduled", "True", None, None),
    ]
    previous: dict[str, JSON] = {
        c.get("type", ""): c for c in (pod.get("status") or {}).get("conditions") or []
    }
    conditions: list[JSON] = []
    for kind, status, reason, message in wanted:
        old = previous.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        condition: JSON = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": since or _timestamp(now),
        }
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        conditions.append(condition)
    return conditions


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value)


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Volumes: ConfigMap and Secret volumes written to disk, so container paths resolve to files.


class VolumePendingError(Exception):
    """A volume's ConfigMap or Secret does not exist (yet): the pod stays ContainerCreating."""


@dataclass(frozen=True)
class Mounts:
    """The container's volume mounts, resolved to host directories."""

    #: (mountPath, host dir, volume type) longest mount path first.
    entries: tuple[tuple[PurePosixPath, Path, str], ...]

    def resolve(self, path: PurePosixPath) -> tuple[Path, str] | None:
        """Host path and volume type behind a container path, or None if no volume backs it."""
        for mount_path, host, kind in self.entries:
            if path == mount_path or path.is_relative_to(mount_path):
                return host / path.relative_to(mount_path), kind
        return None


def mount_volumes(
    core: client.CoreV1Api, pod: Mapping[str, Any], root: Path
) -> Mounts:
    """Write the pod's ConfigMap and Secret volumes under ``root`` (others: empty dirs).

    Raises :class:`VolumePendingError` naming the missing object, as the kubelet's FailedMount.
    """
    namespace = pod["metadata"]["namespace"]
    kinds: dict[str, str] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        target = root / volume["name"]
        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            source = volume["configMap"]
            data = _read_object(core.read_namespaced_config_map, source.get("name", ""),
                                namespace, "configmap", optional=source.get("optional", False))
            files = {k: v.encode() for k, v in (data.get("data") or {}).items()}
            files |= {k: base64.b64decode(v) for k, v in (data.get("binaryData") or {}).items()}
            _write_items(target, files, source.get("items"))
            kinds[volume["name"]] = "configMap"
        elif "secret" in volume:
            source = volume["secret"]
            data = _read_object(core.read_namespaced_secret, source.get("secretName", ""),
                                namespace, "secret", optional=source.get("optional", False))
            files = {k: base64.b64decode(v) for k, v in (data.get("data") or {}).items()}
            _write_items(target, files, source.get("items"))
            kinds[volume["name"]] = "secret"
        else:
            kinds[volume["name"]] = next((k for k in volume if k != "name"), "unknown")
    entries = []
    for mount in _container(pod).get("volumeMounts") or []:
        host = root / mount["name"] / mount.get("subPath", "")
        entries.append((PurePosixPath(mount["mountPath"]), host, kinds.get(mount["name"], "")))
    entries.sort(key=lambda entry: len(entry[0].parts), reverse=True)
    _project_subpath_files(entries)
    return Mounts(tuple(entries))


def _project_subpath_files(entries: list[tuple[PurePosixPath, Path, str]]) -> None:
    """Copy ConfigMap files mounted by subPath inside an emptyDir into it, as the container
    would see them through the bind mounts (how the operator mounts a ConfigMap context)."""
    for mount_path, host, kind in entries:
        if kind != "configMap" or not host.is_file():
            continue
        for outer_path, outer_host, outer_kind in entries:
            if outer_kind == "emptyDir" and mount_path.is_relative_to(outer_path) \
                    and mount_path != outer_path:
                target = outer_host / mount_path.relative_to(outer_path)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(host, target)


def _read_object(
    read: Any, name: str, namespace: str, kind: str, *, optional: bool
) -> Mapping[str, Any]:
    try:
        response = read(name, namespace, _preload_content=False)
    except ApiException as error:
        if error.status != 404:
            raise
        if optional:
            return {}
        raise VolumePendingError(f'{kind} "{name}" not found') from error
    data: Mapping[str, Any] = json.loads(response.data)
    return data


def _write_items(target: Path, files: Mapping[str, bytes], items: Any) -> None:
    """Write every key as a file, or only ``items`` (key -> path) when the volume lists them."""
    selected = {item["key"]: item["path"] for item in items} if items else {k: k for k in files}
    for key, relative in selected.items():
        if key not in files:
            raise VolumePendingError(f'key "{key}" not found')
        path = target / relative
        if not path.resolve().is_relative_to(target.resolve()):
            raise VolumePendingError(f'item path "{relative}" leaves the volume')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[key])


# ---------------------------------------------------------------------------------------------
# The node: a watch thread and one thread per build pod.


@dataclass
class _Pod:
    """One build pod this kubelet took: its thread, its cancel switch, its outcome."""

    namespace: str
    name: str
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    result: BuildResult | None = None


class SandboxKubelet:
    """Runs Stagewright's build pods with buildah in place of Kaniko, writing their status.

    Use as a context manager (or ``start()``/``stop()``); it runs in threads next to whatever
    else the caller runs. ``stop()`` kills running builds; their pods stay Running, and the
    next kubelet fails them as lost, as a node would after a crash.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        work_dir: Path,
        *,
        label_selector: str = LABEL_SELECTOR,
        mount_retry_seconds: float = 1.0,
        watch_timeout_seconds: int = 60,
    ) -> None:
        self._core = client.CoreV1Api(api_client)
        self._work_dir = Path(work_dir)
        self._selector = label_selector
        self._mount_retry = mount_retry_seconds
        self._watch_timeout = watch_timeout_seconds
        self._pods: dict[str, _Pod] = {}  # by uid; kept after the build, so events stay idempotent
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None

    def __enter__(self) -> SandboxKubelet:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start watching build pods in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("SandboxKubelet already started")
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(
            target=self._watch_loop, name="sandbox-kubelet", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching, kill every running build, and wait for the threads to end."""
        self._stopping.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
        with self._lock:
            pods = list(self._pods.values())
        for pod in pods:
            pod.cancel.set()
        deadline = time.monotonic() + timeout
        for thread in [self._thread, *(pod.thread for pod in pods)]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def log_path(self, namespace: str, name: str) -> Path:
        """Where the build log of a pod is written (kept after the build, for debugging)."""
        return self._work_dir / "logs" / namespace / f"{name}.log"

    def build_log(self, namespace: str, name: str) -> str:
        path = self.log_path(namespace, name)
        return path.read_text(errors="replace") if path.exists() else ""

    def result(self, namespace: str, name: str) -> BuildResult | None:
        """The outcome of a pod's build once it ended (killed builds included)."""
        with self._lock:
            for pod in self._pods.values():
                if (pod.namespace, pod.name) == (namespace, name) and pod.result is not None:
                    return pod.result
        return None

    # -- watching ---------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        """List then watch from the list's resourceVersion; relist after 410 Gone or errors."""
        resource_version: str | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._resync()
                resource_version = self._watch(resource_version)
            except Exception:
                if self._stopping.is_set():
                    break
                logger.exception("Watch of build pods failed; relisting in 1 s")
                resource_version = None
                self._stopping.wait(1.0)

    def _resync(self) -> str:
        response: Any = self._core.list_pod_for_all_namespaces(
            label_selector=self._selector, _preload_content=False
        )
        listing = json.loads(response.data)
        seen = set()
        for pod in listing.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._on_pod(pod)
        with self._lock:
            gone = [pod for uid, pod in self._pods.items() if uid not in seen]
        for pod in gone:
            pod.cancel.set()
        version: str = listing["metadata"]["resourceVersion"]
        return version

    def _watch(self, resource_version: str) -> str | None:
        """Follow events until the server ends the watch; None means relist (410 Gone)."""
        response: Any = self._core.list_pod_for_all_namespaces(
            label_selector=self._selector, watch=True, resource_version=resource_version,
            allow_watch_bookmarks=True, timeout_seconds=self._watch_timeout,
            _preload_content=False,
        )
        self._response = response
        try:
            if self._stopping.is_set():
                return resource_version
            for line in _lines(response):
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                resource_version = obj["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    self._cancel(obj["metadata"]["uid"])
                elif event["type"] in {"ADDED", "MODIFIED"}:
                    self._on_pod(obj)
        finally:
            self._response = None
            response.release_conn()
        return resource_version

    def _on_pod(self, pod: JSON) -> None:
        """Take a new Pending pod; fail a Running one nobody here runs; ignore finished ones."""
        meta = pod["metadata"]
        uid = meta["uid"]
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if meta.get("deletionTimestamp"):
            self._cancel(uid)
            return
        with self._lock:
            if uid in self._pods or phase in {"Succeeded", "Failed"} or self._stopping.is_set():
                return
            entry = _Pod(meta["namespace"], meta["name"])
            self._pods[uid] = entry
        if phase == "Running":
            logger.warning("Failed pod %s/%s: it ran under a previous kubelet", entry.namespace,
                           entry.name)
            self._patch(pod, lost_status_patch(pod, now=_now()))
            return
        entry.thread = threading.Thread(
            target=self._serve, args=(pod, entry), name=f"build-{entry.name}", daemon=True
        )
        entry.thread.start()

    def _cancel(self, uid: str) -> None:
        with self._lock:
            entry = self._pods.get(uid)
        if entry is not None and not entry.cancel.is_set():
            entry.cancel.set()
            logger.info("Killed the build of deleted pod %s/%s", entry.namespace, entry.name)

    # -- one pod ----------------------------------------------------------------------------

    def _serve(self, pod: JSON, entry: _Pod) -> None:
        """Admit the pod, mount its volumes, run its build, write each status a kubelet would."""
        # A pod admitted by a previous kubelet keeps its startTime, hence its deadline.
        start_time = _parse_time((pod.get("status") or {}).get("startTime")) or _now()
        seconds = pod.get("spec", {}).get("activeDeadlineSeconds")
        elapsed = (_now() - start_time).total_seconds()
        deadline = time.monotonic() + seconds - elapsed if seconds else None
        pod_dir = self._work_dir / "pods" / pod["metadata"]["uid"]
        try:
            mounts = self._mount(pod, pod_dir / "volumes", entry, start_time, deadline)
            if mounts is None:
                return
            started_at = _now()
            running = running_status_patch(pod, start_time=start_time, started_at=started_at)
            self._patch(pod, running)
            logger.info("Started build of pod %s/%s", entry.namespace, entry.name)
            result, digest_file = self._build(pod, mounts, pod_dir, entry, deadline)
            entry.result = result
            if result.cancelled:
                return
            self._patch(pod, finished_status_patch(
                pod, result, digest_file=digest_file, start_time=start_time,
                started_at=started_at, finished_at=_now(),
            ))
            logger.info("Finished build of pod %s/%s: exit code %d in %.1f s", entry.namespace,
                        entry.name, result.exit_code, result.duration_seconds)
        except Exception as error:
            # Never leave a pod hanging on our own bug: fail it visibly, as a crashed runtime.
            logger.exception("Sandbox kubelet failed on pod %s/%s", entry.namespace, entry.name)
            crashed = BuildResult(exit_code=1, digest=None, log=f"{SANDBOX} error: {error!r}\n")
            with contextlib.suppress(Exception):
                self._patch(pod, finished_status_patch(
                    pod, crashed, digest_file=None, start_time=start_time, started_at=start_time,
                    finished_at=_now(),
                ))
        finally:
            shutil.rmtree(pod_dir, ignore_errors=True)

    def _mount(
        self, pod: JSON, root: Path, entry: _Pod, start_time: datetime, deadline: float | None
    ) -> Mounts | None:
        """Mount volumes, retrying while one is missing; None once the pod is gone or expired."""
        reported = ""
        while True:
            try:
                return mount_volumes(self._core, pod, root)
            except VolumePendingError as missing:
                if str(missing) != reported:
                    reported = str(missing)
                    logger.info("Pod %s/%s waits for %s", entry.namespace, entry.name, missing)
                    self._patch(pod, waiting_status_patch(pod, start_time=start_time, now=_now()))
            if deadline is not None and time.monotonic() >= deadline:
                expired = deadline_before_start_patch(pod, start_time=start_time, now=_now())
                self._patch(pod, expired)
                return None
            if entry.cancel.wait(self._mount_retry):
                return None

    def _build(
        self, pod: JSON, mounts: Mounts, pod_dir: Path, entry: _Pod, deadline: float | None
    ) -> tuple[BuildResult, str | None]:
        """Run the Kaniko container's build; what Kaniko would refuse exits 1 with the reason."""
        log_path = self.log_path(entry.namespace, entry.name)
        container = _container(pod)
        try:
            if container.get("name") != CONTAINER or len(pod["spec"]["containers"]) != 1:
                raise UnsupportedBuildError(f"{SANDBOX}: expected one container named {CONTAINER}")
            build = parse_kaniko_args(container.get("args") or [])
            context = mounts.resolve(build.context)
            if context is None or context[1] not in ("configMap", "emptyDir"):
                raise UnsupportedBuildError(
                    f"{SANDBOX}: only ConfigMap contexts can be built here "
                    f"(got dir://{build.context}, which no ConfigMap volume backs)"
                )
        except UnsupportedBuildError as refused:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(f"{refused}\n")
            return BuildResult(exit_code=1, digest=None, log=f"{refused}\n"), None
        return run_build(
            build, context[0], work_dir=pod_dir, log_path=log_path,
            authfile=_authfile(container, mounts), deadline=deadline, cancel=entry.cancel,
        ), build.digest_file

    def _patch(self, pod: JSON, patch: JSON) -> None:
        """Write pod status; the uid guards against a new pod that reuses the name."""
        meta = pod["metadata"]
        body = {"metadata": {"uid": meta["uid"]}, **patch}
        try:
            self._core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], body, _content_type=_STRATEGIC_MERGE
            )
        except ApiException as error:
            if error.status not in {404, 409}:
                raise
            logger.info("Pod %s/%s is gone; status not written", meta["namespace"], meta["name"])


def _lines(response: Any) -> Iterator[str]:
    """Split a watch stream into its JSON lines, as chunks arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line.decode(errors="replace")


def _authfile(container: Mapping[str, Any], mounts: Mounts) -> Path | None:
    """The registry credentials Kaniko would read: ``$DOCKER_CONFIG/config.json``."""
    directory = next(
        (env.get("value") for env in container.get("env") or []
         if env.get("name") == "DOCKER_CONFIG" and env.get("value")),
        _DEFAULT_DOCKER_CONFIG,
    )
    resolved = mounts.resolve(PurePosixPath(directory) / "config.json")
    if resolved is None or not resolved[0].is_file():
        return None
    return resolved[0]


def main(argv: list[str] | None = None) -> None:
    """``python -m sandbox.kubelet --kubeconfig F``: run until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "sandbox-kubelet"
    )
    parser.add_argument("--label-selector", default=LABEL_SELECTOR)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    api_client = config.new_client_from_config(config_file=str(options.kubeconfig))
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with SandboxKubelet(api_client, options.work_dir, label_selector=options.label_selector):
        logger.info("Sandbox kubelet running; build logs in %s", options.work_dir / "logs")
        done.wait()


if __name__ == "__main__":
    main()
