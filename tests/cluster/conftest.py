"""Cluster tier: the real operator on a real single-node Kubernetes, with real Kaniko.

One sandbox per session (control plane, registry, images, node: ~25 s); each test gets its own
namespace, so tests cannot see each other's ImageBuilds or pods. The operator's own image is
built (or taken from its content-keyed cache) and pushed to the sandbox registry once per
session, for the tests that install it as users do. The build pods run the real
Kaniko executor from ``../shared/kaniko/``; where it is absent the tier skips, saying so.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cluster.installs import OperatorImage, build_operator_image

from sandbox.gitserver import GitServer
from sandbox.host_lock import HostLock, NodeBusyError
from sandbox.images import (
    KanikoMissingError,
    PlatformBase,
    build_platform_base,
    kaniko_executor,
)
from sandbox.node import GATEWAY
from sandbox.stack import Sandbox

REQUIRED = ("etcd", "docker-registry", "buildah", "skopeo", "openssl", "containerd", "runc",
            "iptables", "ip", "git")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Control plane + CRD/RBAC + registry + images + real node + operator."""
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make deps` (hack/install-deps.sh)")
    if os.geteuid() != 0:
        pytest.skip("the sandbox node needs root (containerd, a bridge, cgroups)")
    try:
        kaniko_executor()
    except KanikoMissingError as exc:
        pytest.skip(str(exc))
    lock = HostLock("a test run (pytest tests/cluster)",
                    notify=lambda message: _say(request.config, message))
    try:
        with Sandbox(Path(tmp_path_factory.mktemp("sandbox")), lock=lock) as running:
            yield running
    except NodeBusyError as exc:  # raised by the start only: a kept sandbox holds the node
        pytest.fail(f"{exc}; the tests start a sandbox of their own", pytrace=False)
    SANDBOX_TIMINGS.update(running.timings)


def _say(config: pytest.Config, message: str) -> None:
    """Print past pytest's capture: a run waiting for the node must say what it waits for."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{message}", file=sys.stderr, flush=True)


#: Start-up phases of the session's sandbox, reported at the end of the run.
SANDBOX_TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how long the sandbox took to start, and how long it queued for the host's node."""
    if SANDBOX_TIMINGS:
        terminalreporter.write_line("sandbox start-up: " + ", ".join(
            f"{what} {seconds:.1f}s" for what, seconds in SANDBOX_TIMINGS.items()))


@pytest.fixture
def namespace(sandbox: Sandbox, request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test, with its default ServiceAccount (pods need it);
    a hash of the whole name keeps the variants of a parametrised test apart when their names
    agree in the first 50 characters."""
    readable = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    name = f"t-{readable}-{hashlib.sha256(request.node.name.encode()).hexdigest()[:6]}"
    sandbox.admin.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    sandbox.admin.wait_for_service_account(name)
    callspec = getattr(request.node, "callspec", None)
    if (callspec is not None and callspec.params.get("builder") == "buildah") \
            or "buildah" in request.node.module.__name__:
        sandbox.allow_buildah(name)  # Buildah needs more than baseline: only where it runs
    return name


#: The git server's user and password (a Secret git-creds holds them in the test's namespace).
GIT_USER = ("cloner", "g1t-s3cret")


@pytest.fixture
def git(sandbox: Sandbox, namespace: str, tmp_path: Path) -> Iterator[GitServer]:
    """A git server on the bridge with basic auth, and its credentials as a Secret."""
    sandbox.admin.apply([{
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
        "metadata": {"name": "git-creds", "namespace": namespace},
        "data": {"username": base64.b64encode(GIT_USER[0].encode()).decode(),
                 "password": base64.b64encode(GIT_USER[1].encode()).decode()},
    }])
    with GitServer(tmp_path, address=GATEWAY, user=GIT_USER[0], password=GIT_USER[1]) as server:
        yield server


@pytest.fixture(scope="session")
def platform_base(sandbox: Sandbox) -> PlatformBase:
    """The busybox base for linux/amd64 and linux/arm64, alone and as one index (made once,
    on first use: only the multi-platform tests need it)."""
    return build_platform_base(sandbox.registry.host, work_dir=sandbox.work_dir)


@pytest.fixture(scope="session")
def operator_image(sandbox: Sandbox) -> OperatorImage:
    """operator/Dockerfile built once per session (minutes cold, seconds from the cache)."""
    return build_operator_image(f"{sandbox.registry.host}/stagewright/operator:dev")
