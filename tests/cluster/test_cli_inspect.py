"""`stagewright inspect` as a user runs it: a subprocess against a real registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cluster import registry_fixtures
from tests.cluster.registry_fixtures import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    USER,
    docker_config,
    pusher_for,
)

from sandbox.registry import LocalRegistry
from stagewright.registry.client import DOCKER_MANIFEST

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
    result = inspect(f"{registry.host}/team/app:v1", "--insecure", "--json")
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
    allowed = inspect(reference, "--insecure", "--docker-config", str(config), "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["digest"] == pushed.digest


async def test_inspect_prints_the_largest_layers_with_their_instruction_and_the_base(
        registry: LocalRegistry) -> None:
    pusher = pusher_for(registry)
    async with pusher.client:
        base_layer = await pusher.blob("team/web", b"b" * 3000, DOCKER_LAYER)
        big = await pusher.blob("team/web", b"x" * 9000, DOCKER_LAYER)
        small = await pusher.blob("team/web", b"y" * 700, DOCKER_LAYER)
        history = [{"created_by": "/bin/sh -c #(nop) ADD file:abc in / "},
                   {"created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
                   {"created_by": "RUN make build", "author": "kaniko"},
                   {"created_by": "COPY /out /app", "author": "kaniko"}]

        async def image(tag: str, layers: list[dict[str, object]], entries: list[object]) -> None:
            config = json.dumps({"architecture": "amd64", "os": "linux", "history": entries,
                                 "rootfs": {"type": "layers", "diff_ids": []}}).encode()
            await pusher.manifest("team/web", tag, {
                "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                "config": await pusher.blob("team/web", config, DOCKER_CONFIG),
                "layers": layers})

        await image("base", [base_layer], history[:2])
        await image("v1", [base_layer, big, small], history)
    reference = f"{registry.host}/team/web:v1"
    table = inspect(reference, "--insecure", "--base", f"{registry.host}/team/web:base")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert f"Image:   {reference}" in rows
    assert "Base:    2.9KiB from " + f"{registry.host}/team/web:base" in rows
    layer_rows = rows[rows.index("Largest layers:") + 2:]
    assert [row.split("  ")[-1] for row in layer_rows] == [
        "RUN make build", "ADD file:abc in /", "COPY /out /app"]
    assert layer_rows[0].split()[0] == "8.8KiB"
    machine = json.loads(inspect(reference, "--insecure", "--json", "--top", "1",
                                 "--base", f"{registry.host}/team/web:base").stdout)
    assert machine["largestLayers"] == [
        {"size": 9000, "digest": big["digest"], "instruction": "RUN make build"}]
    assert machine["baseSize"] == 3000
