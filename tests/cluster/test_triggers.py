"""Triggers on the real node: a moved branch, a re-pushed base image, a signed webhook.

The git server is git's own ``http-backend`` on the bridge (build pods clone from it; the
operator resolves refs from it over smart HTTP); base images live in a registry of the test's
own with its access log on, so the requests the operator made are read from the registry's
log, not from the operator. Build pods run real Kaniko. The sandbox's operator may poll every
second (``STAGEWRIGHT_TRIGGER_MIN_POLL_INTERVAL=1s``); a cluster's minimum is a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.cluster.builds import ACCEPT, context, imagebuild, pods

from sandbox.gitserver import GitServer
from sandbox.node import GATEWAY
from sandbox.registry import LocalRegistry
from sandbox.stack import IMAGEBUILD_API, Sandbox
from stagewright.build_log import kaniko_line

pytestmark = pytest.mark.cluster

GIT_USER = ("builder", "s3cret-token")
WEBHOOK_SECRET = "webhook-secret-for-tests"
#: The built file says which commit's marker was cloned: the commit seen is the commit built.
GIT_DOCKERFILE = ("ARG BASE\nFROM ${BASE}\nCOPY marker.txt /marker.txt\n"
                  "RUN cat /marker.txt\n")
BASE_DOCKERFILE = "ARG BASE\nFROM ${BASE}\nRUN echo built on the base > /built\n"


# Fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def git(sandbox: Sandbox, namespace: str, tmp_path: Path) -> Iterator[GitServer]:
    """A git server on the bridge with basic auth, its credentials as a Secret."""
    sandbox.admin.apply([secret(namespace, "git-creds", "kubernetes.io/basic-auth",
                                {"username": GIT_USER[0], "password": GIT_USER[1]})])
    (tmp_path / "git").mkdir()
    with GitServer(tmp_path / "git", address=GATEWAY, user=GIT_USER[0],
                   password=GIT_USER[1]) as server:
        yield server


@pytest.fixture
def bases(sandbox: Sandbox, tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry of the test's own on the bridge, logging every request."""
    with LocalRegistry(address=GATEWAY, access_log=True) as registry:
        yield registry


def secret(namespace: str, name: str, kind: str, values: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}


def git_build(sandbox: Sandbox, namespace: str, name: str, url: str, *,
              revision: str = "main", **triggers: Any) -> dict[str, Any]:
    build = imagebuild(sandbox, namespace, name, cache={"enabled": False})
    build["spec"]["source"] = {"git": {"url": url, "revision": revision,
                                       "secretRef": {"name": "git-creds"}}}
    build["spec"]["triggers"] = {"source": {"pollInterval": "1s"}, "debounce": "2s",
                                 **triggers}
    return build


def copy_base(sandbox: Sandbox, registry: LocalRegistry, repository: str, tag: str,
              revision: str, auth: tuple[str, str] | None = None) -> str:
    """The sandbox's busybox base pushed to ``registry`` as ``repository:tag``, its config
    labelled with ``revision`` (a new revision is a new digest, as a patched base is);
    returns the digest."""
    source = sandbox.registry.url
    base_repo, base_tag = sandbox.base_image.split("/", 1)[1].rsplit(":", 1)
    manifest = httpx.get(f"{source}/v2/{base_repo}/manifests/{base_tag}",
                         headers={"Accept": ACCEPT}, timeout=10).json()
    with httpx.Client(auth=auth, timeout=30) as target:
        for layer in manifest["layers"]:
            blob = httpx.get(f"{source}/v2/{base_repo}/blobs/{layer['digest']}", timeout=30)
            _upload(target, registry.url, repository, blob.content)
        config = httpx.get(f"{source}/v2/{base_repo}/blobs/{manifest['config']['digest']}",
                           timeout=10).json()
        config.setdefault("config", {})["Labels"] = {"revision": revision}
        body = json.dumps(config).encode()
        manifest["config"] = {**manifest["config"], "size": len(body),
                              "digest": _upload(target, registry.url, repository, body)}
        put = target.put(f"{registry.url}/v2/{repository}/manifests/{tag}",
                         content=json.dumps(manifest).encode(),
                         headers={"Content-Type": manifest["mediaType"]})
        put.raise_for_status()
        return str(put.headers["Docker-Content-Digest"])


def _upload(client: httpx.Client, url: str, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = client.post(f"{url}/v2/{repository}/blobs/uploads/")
    start.raise_for_status()
    location = httpx.URL(url).join(start.headers["location"])
    client.put(location.copy_merge_params({"digest": digest}), content=data).raise_for_status()
    return digest


def builds_of(sandbox: Sandbox, namespace: str, name: str) -> list[dict[str, Any]]:
    """The ImageBuild's build pods, oldest first."""
    return sorted(pods(sandbox, namespace, name),
                  key=lambda p: p["metadata"]["creationTimestamp"])


def wait_status(sandbox: Sandbox, namespace: str, name: str, what: str, timeout: float,
                check: Any) -> dict[str, Any]:
    try:
        return sandbox.admin.wait_for(IMAGEBUILD_API, "ImageBuild", name, namespace,
                                      lambda o: bool(check(o.get("status") or {})), timeout,
                                      what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n--- operator log (tail)\n"
                           + sandbox.operator.log()[-4000:]) from None


def settled_on(sandbox: Sandbox, namespace: str, name: str, commit: str,
               timeout: float = 120) -> dict[str, Any]:
    """Wait until a finished build of ``commit`` is the ImageBuild's last."""
    return wait_status(sandbox, namespace, name, f"built {commit[:12]}", timeout,
                       lambda s: s.get("phase") in ("Succeeded", "Failed")
                       and (s.get("inputs") or {}).get("commit") == commit)


def git_lookups(git: GitServer) -> int:
    """The operator's ref look-ups the git server served (each asks for one advertisement;
    the build pods' clones are go-git's, another user agent)."""
    log = (git.root / "server.log").read_text(errors="replace")
    return len(re.findall(r'"GET /\S+/info/refs\?service=git-upload-pack HTTP/[\d.]+" '
                          r'\d+ \S+ "git/stagewright"', log))


def marker_of(sandbox: Sandbox, namespace: str, pod: str) -> str:
    """What the build's ``RUN cat /marker.txt`` printed: which commit's file was built (the
    first line after that step that is not one of Kaniko's own)."""
    lines = sandbox.pod_log(pod, namespace).splitlines()
    index = next(i for i, line in enumerate(lines) if "RUN cat /marker.txt" in line)
    return next(line.strip() for line in lines[index + 1:] if kaniko_line(line) is None)


# Source --------------------------------------------------------------------------------------

def test_a_push_to_the_tracked_branch_builds_that_commit_once(
        sandbox: Sandbox, namespace: str, git: GitServer) -> None:
    first = git.create_repository("app", {"Dockerfile": GIT_DOCKERFILE, "marker.txt": "one\n"})
    url = f"{git.url}/app.git"
    sandbox.admin.apply([git_build(sandbox, namespace, "app", url)])
    built = settled_on(sandbox, namespace, "app", first)["status"]
    assert built["phase"] == "Succeeded", built.get("message")
    assert built["causes"] == [{"type": "Spec", "new": "1"}]
    assert (built["inputs"]["commit"], built["inputs"]["ref"]) == (first, "refs/heads/main")
    assert built["inputs"]["seenAt"] <= built["startTime"]

    git.commit("app", {"marker.txt": "elsewhere\n"}, branch="other")  # not tracked
    time.sleep(6)  # several polls, and past the debounce
    assert len(builds_of(sandbox, namespace, "app")) == 1

    second = git.commit("app", {"marker.txt": "two\n"})
    status = settled_on(sandbox, namespace, "app", second)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["causes"] == [{"type": "Commit", "old": first, "new": second}]
    assert built["startTime"] <= status["inputs"]["seenAt"] <= status["startTime"]
    assert status["history"][0]["causes"] == status["causes"]
    assert status["history"][1]["causes"] == [{"type": "Spec", "new": "1"}]
    assert status["observedGeneration"] == 1  # no spec change: the trigger's build
    runs = builds_of(sandbox, namespace, "app")
    assert len(runs) == 2
    assert marker_of(sandbox, namespace, runs[-1]["metadata"]["name"]) == "two"
    events = [e for e in sandbox.admin.list("v1", "Event", namespace)
              if e["reason"] == "Triggered" and e["involvedObject"]["name"] == "app"]
    assert [e["type"] for e in events] == ["Normal"]
    assert second[:12] in events[0]["message"]
    assert first[:12] in events[0]["message"]

    time.sleep(5)  # the branch stays put: nothing more is built, nothing written
    assert len(builds_of(sandbox, namespace, "app")) == 2


def test_five_pushes_inside_the_debounce_window_are_one_build(
        sandbox: Sandbox, namespace: str, git: GitServer) -> None:
    first = git.create_repository("app", {"Dockerfile": GIT_DOCKERFILE, "marker.txt": "0\n"})
    sandbox.admin.apply([git_build(sandbox, namespace, "app", f"{git.url}/app.git",
                                   debounce="8s")])
    settled_on(sandbox, namespace, "app", first)
    last = ""
    for n in range(1, 6):
        last = git.commit("app", {"marker.txt": f"{n}\n"})
        time.sleep(1)
    status = settled_on(sandbox, namespace, "app", last)["status"]
    assert status["causes"] == [{"type": "Commit", "old": first, "new": last}]
    runs = builds_of(sandbox, namespace, "app")
    assert len(runs) == 2, [p["metadata"]["name"] for p in runs]
    assert marker_of(sandbox, namespace, runs[-1]["metadata"]["name"]) == "5"


def test_an_operator_restart_between_a_push_and_its_build(
        sandbox: Sandbox, namespace: str, git: GitServer) -> None:
    """Status holds what was built: a restarted operator builds the push made while it was
    down, once, and does not rebuild what it had built."""
    first = git.create_repository("app", {"Dockerfile": GIT_DOCKERFILE, "marker.txt": "a\n"})
    sandbox.admin.apply([git_build(sandbox, namespace, "app", f"{git.url}/app.git")])
    settled_on(sandbox, namespace, "app", first)
    sandbox.operator.stop()
    try:
        second = git.commit("app", {"marker.txt": "b\n"})
    finally:
        sandbox.operator.start()
    status = settled_on(sandbox, namespace, "app", second)["status"]
    assert status["causes"] == [{"type": "Commit", "old": first, "new": second}]
    sandbox.operator.stop()
    sandbox.operator.start()
    time.sleep(6)
    assert len(builds_of(sandbox, namespace, "app")) == 2


def test_webhooks_signed_unsigned_wrongly_signed_and_replayed(
        sandbox: Sandbox, namespace: str, git: GitServer) -> None:
    """A delivery only asks for a check: the operator resolves the branch itself."""
    first = git.create_repository("app", {"Dockerfile": GIT_DOCKERFILE, "marker.txt": "a\n"})
    sandbox.admin.apply([secret(namespace, "hook", "Opaque", {"token": WEBHOOK_SECRET})])
    build = git_build(sandbox, namespace, "app", f"{git.url}/app.git",
                      webhook={"secretRef": {"name": "hook"}})
    del build["spec"]["triggers"]["source"]  # no polling: only the webhook asks
    sandbox.admin.apply([build])
    status = settled_on(sandbox, namespace, "app", first)["status"]
    path = wait_status(sandbox, namespace, "app", "webhook path shown", 30,
                       lambda s: (s.get("triggers") or {}).get("webhookPath"))["status"][
        "triggers"]["webhookPath"]
    assert re.fullmatch(r"/hooks/[0-9a-f]{40}", path)
    assert namespace not in path
    assert "app" not in path
    hook = f"http://127.0.0.1:{sandbox.operator.webhook_port}{path}"
    time.sleep(6)  # the look-up every new subscription makes (within 5 s) is behind us
    second = git.commit("app", {"marker.txt": "b\n"})
    payload = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()

    def deliver(signature: str | None, delivery: str) -> httpx.Response:
        headers = {"Content-Type": "application/json", "X-GitHub-Delivery": delivery,
                   "X-GitHub-Event": "push"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return httpx.post(hook, content=payload, headers=headers, timeout=10)

    good = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), payload, hashlib.sha256).hexdigest()
    wrong = "sha256=" + hmac.new(b"guess", payload, hashlib.sha256).hexdigest()
    before = git_lookups(git)
    assert deliver(None, "d-0").status_code == 401
    assert deliver(wrong, "d-1").status_code == 401
    assert httpx.post(f"http://127.0.0.1:{sandbox.operator.webhook_port}/hooks/{'0' * 40}",
                      content=payload, headers={"X-Hub-Signature-256": good},
                      timeout=10).status_code == 404
    time.sleep(3)
    assert git_lookups(git) == before  # refused deliveries changed nothing
    assert len(builds_of(sandbox, namespace, "app")) == 1
    accepted = deliver(good, "d-2")
    assert accepted.status_code == 202, accepted.text
    status = settled_on(sandbox, namespace, "app", second)["status"]
    # The commit built is the branch's head as the operator resolved it, not the payload's.
    assert status["causes"] == [{"type": "Commit", "old": first, "new": second}]
    checks = git_lookups(git) - before
    assert checks >= 1
    replayed = deliver(good, "d-2")
    assert (replayed.status_code, replayed.json()) == (200, {"status": "already received"})
    time.sleep(3)
    assert git_lookups(git) - before == checks  # the replay did not check again
    assert len(builds_of(sandbox, namespace, "app")) == 2


# Base images ---------------------------------------------------------------------------------

def base_build(sandbox: Sandbox, namespace: str, name: str, registry: LocalRegistry,
               base: str, **spec: Any) -> dict[str, Any]:
    output = {"image": f"{registry.host}/{namespace}/{name}", **spec.pop("output", {})}
    build = imagebuild(sandbox, namespace, name, cache={"enabled": False},
                       buildArgs={"BASE": f"{registry.host}/{base}"}, output=output, **spec)
    build["spec"]["triggers"] = {"baseImages": {"pollInterval": "1s"}, "debounce": "2s"}
    return build


def operator_manifest_requests(registry: LocalRegistry, repository: str) -> list[str]:
    """The methods of the operator's own manifest requests for ``repository`` (its user
    agent is ``stagewright``; Kaniko's pulls are go-containerregistry's)."""
    log = registry.access_log_path.read_text(errors="replace")
    return re.findall(rf'"(\w+) /v2/{re.escape(repository)}/manifests/\S+ HTTP/[\d.]+" \d+ '
                      r'\d+ "[^"]*" "stagewright"', log)


def test_a_repushed_base_tag_rebuilds_every_imagebuild_on_it_and_no_other(
        sandbox: Sandbox, namespace: str, bases: LocalRegistry) -> None:
    old_a = copy_base(sandbox, bases, "bases/a", "1", "1")
    old_b = copy_base(sandbox, bases, "bases/b", "1", "1")
    sandbox.admin.apply([context(namespace, BASE_DOCKERFILE),
                         base_build(sandbox, namespace, "on-a", bases, "bases/a:1"),
                         base_build(sandbox, namespace, "also-on-a", bases, "bases/a:1"),
                         base_build(sandbox, namespace, "on-b", bases, "bases/b:1")])
    for name, digest, base in (("on-a", old_a, "bases/a:1"), ("also-on-a", old_a, "bases/a:1"),
                               ("on-b", old_b, "bases/b:1")):
        status = wait_status(sandbox, namespace, name, "built with its base recorded", 180,
                             lambda s: s.get("phase") == "Succeeded" and (
                                 s.get("inputs") or {}).get("baseImages"))["status"]
        assert status["inputs"]["baseImages"] == [{"image": f"{bases.host}/{base}",
                                                   "digest": digest}], name
    new_a = copy_base(sandbox, bases, "bases/a", "1", "2")  # the patched base, same tag
    for name in ("on-a", "also-on-a"):
        status = wait_status(sandbox, namespace, name, "rebuilt on the new base", 180,
                             lambda s: s.get("phase") == "Succeeded" and (
                                 s.get("causes") or [{}])[0].get("type") == "BaseImage"
                             and s["inputs"]["baseImages"][0]["digest"] == new_a)["status"]
        assert status["causes"] == [{"type": "BaseImage", "image": f"{bases.host}/bases/a:1",
                                     "old": old_a, "new": new_a}]
    time.sleep(4)
    assert len(builds_of(sandbox, namespace, "on-b")) == 1
    assert [len(builds_of(sandbox, namespace, n)) for n in ("on-a", "also-on-a")] == [2, 2]
    # Polling, with every build done: HEADs only (the GETs earlier were each build's own
    # insight read of its base), one shared look-up per image per interval (1 s here),
    # though two ImageBuilds watch bases/a.
    before = {r: len(operator_manifest_requests(bases, r)) for r in ("bases/a", "bases/b")}
    time.sleep(10)
    for repository, seen in before.items():
        polls = operator_manifest_requests(bases, repository)[seen:]
        assert set(polls) == {"HEAD"}, polls
        assert 5 <= len(polls) <= 13, (repository, len(polls))


def test_a_base_image_behind_a_401_is_a_condition_not_a_build_storm(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    """The push Secret stops working (rotated credentials): the look-up fails with 401, the
    condition says so, the look-ups back off, and nothing is built."""
    with LocalRegistry(address=GATEWAY, access_log=True,
                       htpasswd=("robot", "right-password")) as private:
        auth = base64.b64encode(b"robot:right-password").decode()
        config = {"auths": {private.host: {"auth": auth}}}
        sandbox.admin.apply([
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
             "metadata": {"name": "push", "namespace": namespace},
             "stringData": {".dockerconfigjson": json.dumps(config)}},
            context(namespace, BASE_DOCKERFILE)])
        digest = copy_base(sandbox, private, "bases/p", "1", "1",
                           auth=("robot", "right-password"))
        sandbox.admin.apply([base_build(sandbox, namespace, "private", private, "bases/p:1",
                                        output={"pushSecretRef": {"name": "push"}})])
        status = wait_status(sandbox, namespace, "private", "built", 180,
                             lambda s: s.get("phase") == "Succeeded" and (
                                 s.get("inputs") or {}).get("baseImages"))["status"]
        assert status["inputs"]["baseImages"][0]["digest"] == digest
        wrong = base64.b64encode(b"robot:rotated-away").decode()
        sandbox.admin.apply([{
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "push", "namespace": namespace},
            "stringData": {".dockerconfigjson": json.dumps(
                {"auths": {private.host: {"auth": wrong}}})}}])
        failing = wait_status(sandbox, namespace, "private", "TriggersHealthy False", 60,
                              lambda s: any(c["type"] == "TriggersHealthy"
                                            and c["status"] == "False"
                                            for c in s.get("conditions") or []))["status"]
        condition = next(c for c in failing["conditions"] if c["type"] == "TriggersHealthy")
        assert condition["reason"] == "BaseImageUnreachable"
        assert "bases/p:1" in condition["message"], condition
        assert failing["phase"] == "Succeeded"  # the last build's result stands
        seen = len(operator_manifest_requests(private, "bases/p"))
        time.sleep(16)
        tries = len(operator_manifest_requests(private, "bases/p")) - seen
        # Polled every second that would be 16 look-ups or more; backing off (2, 4, 8 s...)
        # it is three or four, each one or two requests (a 401 challenge, then the
        # credentials).
        assert tries <= 10, tries
        assert len(builds_of(sandbox, namespace, "private")) == 1
