"""Run one Kaniko build with buildah, standing in for Kaniko (which cannot run here).

Each build gets a fresh private buildah store, as a fresh Kaniko pod has an empty filesystem,
so layer reuse can only come from the registry cache (``--cache-from/--cache-to``), exactly
the property the operator relies on. The store is removed after the build.

Every buildah process runs as PID 1 of its own PID and mount namespaces (``unshare --pid
--fork --kill-child --mount-proc``), like a container: killing it on cancel or deadline kills
everything the build started, RUN steps included, and takes its overlay mounts with it.

Where buildah 1.28 differs from Kaniko (kept visible, not papered over):

- Kaniko writes ``--digest-file`` before it pushes; the sandbox learns the digest from the
  push, so it writes it only after a successful push.
- buildah 1.28 misses its registry cache at ``ARG`` steps and so rebuilds every step after
  one (containers/buildah#4315); Kaniko hits there. Put ``ARG`` late in test Dockerfiles.
- ``--cache-ttl`` is passed through: buildah 1.28 has it and reads Go durations too.
- Kaniko exits 1 on any failure; so does the sandbox, with buildah's own exit code logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sandbox.kaniko_args import SANDBOX, KanikoBuild

#: Local name of the built image inside the private store, before it is pushed.
_LOCAL_IMAGE = "localhost/sandbox-build:latest"
#: Exit code of a container killed with SIGKILL (deadline or deletion), as a runtime reports.
KILLED_EXIT_CODE = 137
_POLL_SECONDS = 0.1
#: overlay is twice as fast as vfs here; its mounts live in each step's private mount
#: namespace (``unshare --mount-proc``), so they vanish with the step, even when killed.
STORAGE_DRIVER = "overlay"


@dataclass(frozen=True)
class BuildResult:
    """What a finished (or stopped) build left: the Kaniko container's exit and output."""

    exit_code: int
    #: Digest of the pushed manifest (``sha256:...``), only after every push succeeded.
    digest: str | None
    #: The combined build log (also in the log file while the build runs).
    log: str
    #: ``repo:tag@digest`` of every destination pushed.
    pushed: tuple[str, ...] = ()
    duration_seconds: float = 0.0
    timed_out: bool = False
    cancelled: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


class _StoppedError(Exception):
    """The build was killed: ``reason`` is ``deadline`` or ``cancelled``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _StepFailedError(Exception):
    """A step failed; the message is the Kaniko-style last log line."""


def run_build(
    build: KanikoBuild,
    context_root: Path,
    *,
    work_dir: Path,
    log_path: Path,
    authfile: Path | None = None,
    deadline: float | None = None,
    cancel: threading.Event | None = None,
) -> BuildResult:
    """Build ``build`` with buildah, push it, and return the exit code, digest and log.

    ``context_root`` is the host directory behind ``build.context`` (the pod's ConfigMap
    volume). ``deadline`` is a :func:`time.monotonic` instant; past it, or once ``cancel`` is
    set, the build is killed. The private store lives under ``work_dir`` and is removed before
    returning; the log stays in ``log_path``.
    """
    started = time.monotonic()
    stop = _Stop(deadline, cancel or threading.Event())
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-build-", dir=work_dir))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    exit_code, stopped = 0, ""
    digest: str | None = None
    pushed: tuple[str, ...] = ()
    try:
        with log_path.open("wb") as log:
            try:
                digest, pushed = _build_and_push(
                    build, context_root, scratch, authfile, log=log, stop=stop
                )
            except _StepFailedError as failure:
                _say(log, f"Error: {failure}")
                exit_code = 1
            except _StoppedError as why:
                _say(log, f"{SANDBOX}: build killed ({why.reason})")
                exit_code, stopped = KILLED_EXIT_CODE, why.reason
    finally:
        remove_storage(scratch)
    return BuildResult(
        exit_code=exit_code,
        digest=digest,
        log=log_path.read_text(errors="replace"),
        pushed=pushed,
        duration_seconds=time.monotonic() - started,
        timed_out=stopped == "deadline",
        cancelled=stopped == "cancelled",
    )


def bud_argv(
    build: KanikoBuild, context_dir: Path, dockerfile: Path, authfile: Path | None
) -> list[str]:
    """The ``buildah bud`` arguments (after the storage options) that match Kaniko's flags."""
    argv = [
        "bud", "--isolation", "chroot", "--format", "docker", "--layers", "--retry", "0",
        f"--skip-unused-stages={str(build.skip_unused_stages).lower()}",
        "--file", str(dockerfile), "--tag", _LOCAL_IMAGE,
    ]
    if build.cache is not None:
        argv += ["--cache-from", build.cache.repo, "--cache-ttl", build.cache.ttl]
        if build.cache.push:
            argv += ["--cache-to", build.cache.repo]
    if build.target:
        argv += ["--target", build.target]
    for key, value in build.build_args:
        argv += ["--build-arg", f"{key}={value}"]
    for key, value in build.labels:
        argv += ["--label", f"{key}={value}"]
    if build.reproducible:
        argv += ["--timestamp", "0"]
    if build.insecure_pull:
        argv += ["--tls-verify=false"]
    if authfile is not None:
        argv += ["--authfile", str(authfile)]
    return [*argv, str(context_dir)]


def buildah_env(
    scratch: Path, *, insecure_registries: Iterable[str] = (), authfile: Path | None = None
) -> dict[str, str]:
    """A clean environment confined to ``scratch``: no host credentials, private registries.conf.

    HOME and the XDG dirs point into ``scratch`` so buildah finds no auth file but the pod's.
    """
    for name in ("home", "run", "config", "tmp"):
        (scratch / name).mkdir(parents=True, exist_ok=True)
    (scratch / "run").chmod(0o700)
    conf = scratch / "registries.conf"
    conf.write_text(registries_conf(insecure_registries))
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(scratch / "home"),
        "XDG_RUNTIME_DIR": str(scratch / "run"),
        "XDG_CONFIG_HOME": str(scratch / "config"),
        "TMPDIR": str(scratch / "tmp"),
        "LANG": "C.UTF-8",
        "CONTAINERS_REGISTRIES_CONF": str(conf),
    }
    if authfile is not None:
        env["REGISTRY_AUTH_FILE"] = str(authfile)
    return env


def registries_conf(insecure_registries: Iterable[str]) -> str:
    """registries.conf marking each host insecure (plain HTTP or unverified TLS).

    Unqualified names resolve to Docker Hub, as in Kaniko. Hosts were validated by the parser;
    ``json.dumps`` still quotes them as TOML basic strings.
    """
    lines = ['unqualified-search-registries = ["docker.io"]', ""]
    for host in sorted(set(insecure_registries)):
        lines += ["[[registry]]", f"location = {json.dumps(host)}", "insecure = true", ""]
    return "\n".join(lines)


def remove_storage(path: Path) -> None:
    """Remove a private store: unmount anything left under it, then delete the tree."""
    if not path.exists():
        return
    for mount_point in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
    shutil.rmtree(path)


def _build_and_push(
    build: KanikoBuild, context_root: Path, scratch: Path, authfile: Path | None, *,
    log: BinaryIO, stop: _Stop,
) -> tuple[str | None, tuple[str, ...]]:
    """``buildah bud`` then one ``buildah push`` per destination; return digest and pushes."""
    _say(log, f"{SANDBOX}: building with buildah in place of Kaniko (it cannot run here)")
    if build.ignored_flags:
        _say(log, f"{SANDBOX}: flags without effect here: {' '.join(build.ignored_flags)}")
    context_dir = context_root / (build.context_sub_path or "")
    dockerfile = context_dir / build.dockerfile_in_context
    if not context_dir.is_dir():
        raise _StepFailedError(f"error resolving context: {build.context_dir} is not a directory")
    if not dockerfile.is_file():
        raise _StepFailedError(
            "error resolving dockerfile path: please provide a valid path to a Dockerfile "
            f"within the build context with --dockerfile (no {build.dockerfile} in the context)"
        )
    env = buildah_env(scratch, insecure_registries=build.insecure_registries, authfile=authfile)
    storage = ["buildah", "--root", str(scratch / "root"), "--runroot", str(scratch / "runroot"),
               "--storage-driver", STORAGE_DRIVER]
    bud = bud_argv(build, context_dir, dockerfile, authfile)
    if (code := _run_step(storage, bud, env=env, log=log, stop=stop)) != 0:
        raise _StepFailedError(f"error building image: buildah bud exited with {code}")
    if not build.push:
        _say(log, f"{SANDBOX}: --no-push: built, not pushed")
        return None, ()
    digests = [
        _push(build, destination, storage, scratch / "digest", authfile,
              env=env, log=log, stop=stop)
        for destination in build.destinations
    ]
    if len(set(digests)) > 1:
        _say(log, f"{SANDBOX}: destinations got different digests: {digests}")
    pushed = tuple(
        f"{dest}@{digest}" for dest, digest in zip(build.destinations, digests, strict=True)
    )
    for reference in pushed:
        _say(log, f"Pushed {reference}")
    return digests[0], pushed


def _push(
    build: KanikoBuild, destination: str, storage: list[str], digest_file: Path,
    authfile: Path | None, *, env: dict[str, str], log: BinaryIO, stop: _Stop,
) -> str:
    """Push as Docker v2s2 (Kaniko's manifest format); return the registry's digest."""
    argv = ["push", "--format", "docker", "--retry", str(build.push_retry),
            "--digestfile", str(digest_file)]
    if authfile is not None:
        argv += ["--authfile", str(authfile)]
    argv += [_LOCAL_IMAGE, f"docker://{destination}"]
    code = _run_step(storage, argv, env=env, log=log, stop=stop)
    if code != 0:
        raise _StepFailedError(
            f"error pushing image: failed to push to destination {destination}: "
            f"buildah push exited with {code}"
        )
    return digest_file.read_text().strip()


@dataclass(frozen=True)
class _Stop:
    """When to kill a running step: past the deadline, or once cancelled."""

    deadline: float | None
    cancel: threading.Event

    def reason(self) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "deadline"
        return None


def _run_step(
    storage: list[str], argv: list[str], *, env: dict[str, str], log: BinaryIO, stop: _Stop
) -> int:
    """Run one buildah command in its own PID namespace; kill it all if ``stop`` says so.

    The log shows the command without the private-store options, which say nothing.
    """
    if (reason := stop.reason()) is not None:
        raise _StoppedError(reason)
    _say(log, "+ buildah " + " ".join(argv))
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *storage, *argv],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )
    try:
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                return process.wait(timeout=_POLL_SECONDS)
            if (reason := stop.reason()) is not None:
                raise _StoppedError(reason)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _say(log: BinaryIO, line: str) -> None:
    log.write(line.encode() + b"\n")
    log.flush()


def _mounts_under(path: Path) -> list[str]:
    """Mount points below ``path`` here (none expected: steps mount in their own namespace)."""
    prefix = str(path.resolve())
    found: list[str] = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            mount_point = line.split()[4].replace("\\040", " ")
            if mount_point == prefix or mount_point.startswith(prefix + "/"):
                found.append(mount_point)
    return found
