"""`stagewright inspect` as a user runs it: a subprocess against a real registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cluster import registry_fixtures
from tests.cluster.registry_fixtures import USER, docker_config, pusher_for

from sandbox.registry import LocalRegistry

pytestmark = pytest.mark.cluster

registry = registry_fixtures.registry
auth_registry = registry_fixtures.auth_registry


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stagewright.cli", "inspect", *args],
                          capture_output=True, text=True, timeout=60, check=False)


async def test_inspect_prints_digest_size_and_layers(registry: LocalRegistry) -> None:
    pusher = pusher_for(registry)
    async with pusher.client:
        pushed = await pusher.image("team/app", "v1", docker=True, layers=3)
    result = inspect(f"{registry.host}/team/app:v1", "--insecure")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["digest"] == pushed.digest
    assert info["size"] == pushed.size
    assert info["layers"] == 3


async def test_inspect_uses_a_docker_config_and_explains_refusals(
        auth_registry: LocalRegistry, tmp_path: Path) -> None:
    pusher = pusher_for(auth_registry)
    async with pusher.client:
        pushed = await pusher.image("team/private", "latest")
    reference = f"{auth_registry.host}/team/private"
    denied = inspect(reference, "--insecure")
    assert denied.returncode == 1
    assert auth_registry.host in denied.stderr
    config = tmp_path / "config.json"
    config.write_text(json.dumps(docker_config(auth_registry.host, *USER)))
    allowed = inspect(reference, "--insecure", "--docker-config", str(config))
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["digest"] == pushed.digest
