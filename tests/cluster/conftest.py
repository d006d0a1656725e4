"""Cluster tier: the real operator on a real kube-apiserver, with a real registry and builds.

One sandbox per session (starting it takes ~10 s once the apiserver is built); each test
gets its own namespace, so tests cannot see each other's ImageBuilds or pods.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.stack import Sandbox

REQUIRED = ("etcd", "docker-registry", "buildah", "openssl")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Control plane + CRD/RBAC + registry + base image + buildah kubelet + operator."""
    missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make deps` (hack/install-deps.sh)")
    with Sandbox(Path(tmp_path_factory.mktemp("sandbox"))) as running:
        yield running


@pytest.fixture
def namespace(sandbox: Sandbox, request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test."""
    name = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    sandbox.admin.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    return name
