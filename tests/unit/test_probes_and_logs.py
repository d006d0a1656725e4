"""/readyz says which role the replica plays; JSON log lines name the ImageBuild and replica."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import kopf
import pytest

from sandbox.processes import free_port
from stagewright.cli.offline import _configure_logging
from stagewright.handlers.probes import Readiness
from stagewright.handlers.registration import object_ref


async def test_readiness_answers_the_role_and_503_while_starting() -> None:
    roles: list[str | None] = [None]
    port = free_port()
    url = f"http://127.0.0.1:{port}/readyz"
    async with Readiness(url, lambda: roles[0]), httpx.AsyncClient() as client:
        starting = await client.get(url)
        assert (starting.status_code, starting.text) == (503, "starting\n")
        for role in ("standby", "leader"):
            roles[0] = role
            answer = await client.get(url)
            assert (answer.status_code, answer.text) == (200, f"{role}\n")
        assert (await client.get(f"http://127.0.0.1:{port}/other")).status_code == 404


def test_readiness_endpoint_must_name_a_port() -> None:
    with pytest.raises(ValueError, match="http://HOST:PORT/PATH"):
        Readiness("http://0.0.0.0/readyz", lambda: None)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_json_lines_carry_the_imagebuild_and_the_replica(
        capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    _configure_logging(kopf, "json", "op-7f9c_1a2b3c4d", verbose=False)
    settings = kopf.OperatorSettings()
    body = kopf.Body({"apiVersion": "stagewright.dev/v1alpha1", "kind": "ImageBuild",
                      "metadata": {"name": "web", "namespace": "team-a", "uid": "u1"}})
    kopf.ObjectLogger(body=body, settings=settings).info("Created pod web-1-1.")
    logging.getLogger("stagewright").warning("Reconciling failed, will retry: boom",
                                             extra=object_ref("team-b", "api"))
    logging.getLogger("stagewright").info("Lease ops/stagewright: x leads now.")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == [
        "Created pod web-1-1.", "Reconciling failed, will retry: boom",
        "Lease ops/stagewright: x leads now."]
    assert {line["replica"] for line in lines} == {"op-7f9c_1a2b3c4d"}
    assert (lines[0]["object"]["namespace"], lines[0]["object"]["name"]) == ("team-a", "web")
    assert (lines[1]["object"]["namespace"], lines[1]["object"]["name"]) == ("team-b", "api")
    assert "object" not in lines[2]  # about no ImageBuild


def test_text_stays_the_default_with_the_object_prefix(
        capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    _configure_logging(kopf, "text", "op_1", verbose=False)
    logging.getLogger("stagewright").warning("Reconciling failed", extra=object_ref("a", "b"))
    assert "[a/b] Reconciling failed" in capsys.readouterr().err
