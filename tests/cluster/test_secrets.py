"""No Secret value leaks: registry passwords and git tokens appear nowhere a user or log
reader sees: the operator's log, the namespace's Events, ImageBuild objects, or
``stagewright render``.

Known values are planted in builds that succeed and builds that fail (a wrong password, a
failing RUN after a credentialed clone, a refused clone), then everything is searched for
each value, raw and in the encodings it travels in (base64, and the dockerconfig ``auth``).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.cluster.builds import context, imagebuild
from tests.cluster.registry_fixtures import docker_config

from sandbox.gitserver import GitServer
from sandbox.node import GATEWAY
from sandbox.registry import LocalRegistry
from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster

PUSHER, PASSWORD = "pusher", "Pw-d7f3a91c2e-registry"
WRONG_PASSWORD = "Pw-wrong-5b0e44c1-registry"
CLONER, TOKEN = "cloner", "Tk-19ab72ce40-git"
WRONG_TOKEN = "Tk-wrong-8c3d51f7-git"
GIT_DOCKERFILE = ("ARG BASE\nFROM ${BASE}\nCOPY marker.txt /marker.txt\n"
                  "ARG OUTCOME=pass\nRUN test \"${OUTCOME}\" = pass\n")


def _forms(*values: str) -> set[str]:
    """Each value raw and base64-encoded, and each user:value pair as a dockerconfig auth."""
    found = set()
    for value in values:
        found.add(value)
        found.add(base64.b64encode(value.encode()).decode())
    for user, value in ((PUSHER, PASSWORD), (PUSHER, WRONG_PASSWORD), (CLONER, TOKEN),
                        (CLONER, WRONG_TOKEN)):
        found.add(base64.b64encode(f"{user}:{value}".encode()).decode())
    return found


def _secret(namespace: str, name: str, kind: str, data: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": namespace}, "stringData": data}


def test_no_secret_value_in_logs_events_status_or_render(sandbox: Sandbox, namespace: str,
                                                         tmp_path: Path) -> None:
    admin = sandbox.admin
    log_start = len(sandbox.operator.log())
    admin.apply([context(namespace, "FROM scratch\nCOPY Dockerfile /Dockerfile\n")])
    (tmp_path / "git").mkdir()
    with LocalRegistry(htpasswd=(PUSHER, PASSWORD), address=GATEWAY) as private, \
            GitServer(tmp_path / "git", address=GATEWAY, user=CLONER, password=TOKEN) as git:
        git.create_repository("app", {"Dockerfile": GIT_DOCKERFILE, "marker.txt": "one\n"})
        admin.apply([
            _secret(namespace, "regcred", "kubernetes.io/dockerconfigjson", {
                ".dockerconfigjson": json.dumps(docker_config(private.host, PUSHER, PASSWORD))}),
            _secret(namespace, "badcred", "kubernetes.io/dockerconfigjson", {
                ".dockerconfigjson": json.dumps(
                    docker_config(private.host, PUSHER, WRONG_PASSWORD))}),
            _secret(namespace, "git-token", "kubernetes.io/basic-auth",
                    {"username": CLONER, "password": TOKEN}),
            _secret(namespace, "git-wrong", "kubernetes.io/basic-auth",
                    {"username": CLONER, "password": WRONG_TOKEN}),
        ])

        def pushing(name: str, secret: str) -> dict[str, object]:
            return imagebuild(sandbox, namespace, name, cache={"enabled": False}, output={
                "image": f"{private.host}/team/{name}", "pushSecretRef": {"name": secret}})

        def cloning(name: str, secret: str, outcome: str) -> dict[str, object]:
            build = imagebuild(sandbox, namespace, name, cache={"enabled": False},
                               buildArgs={"BASE": sandbox.base_image, "OUTCOME": outcome})
            build["spec"]["source"] = {"git": {"url": f"{git.url}/app.git", "revision": "main",
                                               "secretRef": {"name": secret}}}
            return build

        builds = [pushing("push-ok", "regcred"), pushing("push-denied", "badcred"),
                  cloning("git-ok", "git-token", "pass"),
                  cloning("git-fails", "git-token", "fail"),
                  cloning("git-denied", "git-wrong", "pass")]
        admin.apply(builds)
        expected = {"push-ok": "Succeeded", "push-denied": "Failed", "git-ok": "Succeeded",
                    "git-fails": "Failed", "git-denied": "Failed"}
        for name, phase in expected.items():
            status = sandbox.wait_settled(name, namespace)["status"]
            assert status["phase"] == phase, status

    rendered_input = tmp_path / "builds.yaml"
    rendered_input.write_text(yaml.safe_dump_all(builds))
    render = subprocess.run([sys.executable, "-m", "stagewright.cli", "render", "-f",
                             str(rendered_input)], capture_output=True, text=True, check=True)
    places = {
        "operator log": sandbox.operator.log()[log_start:],
        "Events": yaml.safe_dump(admin.list("v1", "Event", namespace)),
        "ImageBuilds": yaml.safe_dump(admin.list(IMAGEBUILD_API, "ImageBuild", namespace)),
        "render": render.stdout + render.stderr,
    }
    assert "PushFailed" in places["ImageBuilds"]  # the failures were recorded, and searched
    assert "authentication" in places["ImageBuilds"].lower()
    leaks = [(where, value) for where, text in places.items()
             for value in _forms(PASSWORD, WRONG_PASSWORD, TOKEN, WRONG_TOKEN) if value in text]
    assert leaks == []
