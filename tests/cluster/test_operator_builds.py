"""The build loop end to end: ImageBuild -> build pod -> real build and push -> status.

The operator runs as ``stagewright run`` with only the RBAC we ship; its build pods are
scheduled by the real scheduler and run the real Kaniko executor (or Buildah, for the tests
parametrised over ``builder``) on the sandbox's node, which pushes to a real registry. Sizes
and digests are checked against the registry directly, not through the operator's own client.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from kubernetes.dynamic.exceptions import UnprocessibleEntityError
from tests.cluster.builds import (
    ACCEPT,
    SLOW_DOCKERFILE,
    context,
    imagebuild,
    manifest,
    pods,
    wait_phase,
    wait_pod_running,
)
from tests.cluster.registry_fixtures import docker_config

from sandbox.demo import APP as DEMO_APP
from sandbox.demo import DOCKERFILE as DEMO_DOCKERFILE
from sandbox.node import GATEWAY
from sandbox.registry import LocalRegistry
from sandbox.stack import IMAGEBUILD_API, Sandbox

pytestmark = pytest.mark.cluster

#: The builders the core scenarios run with: the same contract, so the same assertions.
BUILDERS = pytest.mark.parametrize("builder", ["kaniko", "buildah"])
#: Each builder's log line for a RUN step answered from the registry's layer cache.
CACHE_HIT = {"kaniko": "Using caching version of cmd", "buildah": "Cache pulled from remote"}


@BUILDERS
def test_two_targets_give_two_images_the_registry_confirms(sandbox: Sandbox, namespace: str,
                                                           builder: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, DEMO_DOCKERFILE, files={"app.sh": DEMO_APP})])
    admin.apply([imagebuild(sandbox, namespace, "fat", target="build", builder=builder),
                 imagebuild(sandbox, namespace, "slim", target="runtime", builder=builder,
                            output={"tags": ["latest", "v1"]})])
    statuses = {}
    for name in ("fat", "slim"):
        obj = sandbox.wait_settled(name, namespace)
        status = obj["status"]
        assert status["phase"] == "Succeeded", status
        repository = f"{namespace}/{name}"
        digest, body = manifest(sandbox, repository, "latest")
        assert status["digest"] == digest
        assert status["image"] == f"{sandbox.registry.host}/{repository}@{digest}"
        assert status["size"] == body["config"]["size"] + sum(
            layer["size"] for layer in body["layers"])
        assert status["layers"] == len(body["layers"])
        assert status["shortDigest"] == digest.removeprefix("sha256:")[:12]
        ready = {c["type"]: c for c in status["conditions"]}["Ready"]
        assert ready["status"] == "True"
        assert ready["observedGeneration"] == 1
        [pod] = pods(sandbox, namespace, name)
        assert [c["name"] for c in pod["spec"]["containers"]] == [builder]
        statuses[name] = status
    assert statuses["fat"]["digest"] != statuses["slim"]["digest"]
    assert statuses["slim"]["size"] * 10 < statuses["fat"]["size"]
    # Every tag points at the same pushed image.
    assert manifest(sandbox, f"{namespace}/slim", "v1")[0] == statuses["slim"]["digest"]


@BUILDERS
def test_rebuild_of_the_same_spec_hits_the_registry_cache(sandbox: Sandbox, namespace: str,
                                                          builder: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, DEMO_DOCKERFILE, files={"app.sh": DEMO_APP})])
    admin.apply([imagebuild(sandbox, namespace, "app", target="runtime", builder=builder)])
    first = sandbox.wait_settled("app", namespace)["status"]
    assert first["phase"] == "Succeeded"
    first_log = sandbox.pod_log(first["podName"], namespace)
    tags = httpx.get(f"{sandbox.registry.url}/v2/{namespace}/app/cache/tags/list", timeout=10)
    assert tags.status_code == 200
    assert tags.json()["tags"], "no layers were cached"

    second = sandbox.rebuild("app", namespace, request="again")["status"]
    assert second["phase"] == "Succeeded", second
    assert second["podName"] != first["podName"]
    second_log = sandbox.pod_log(second["podName"], namespace)
    # A fresh build pod has an empty filesystem: cache hits can only come from the registry.
    assert CACHE_HIT[builder] not in first_log
    assert second_log.count(CACHE_HIT[builder]) >= 2, second_log[-2000:]
    if builder == "buildah":
        # Buildah caches COPY steps and the final config too: the very same image.
        assert second["digest"] == first["digest"]
    # Kaniko stamps new times into the config and the COPY layer (it caches RUN layers only):
    # not the same digest, but the same base layer, and as many layers.
    _, first_manifest = manifest(sandbox, f"{namespace}/app", first["digest"])
    _, second_manifest = manifest(sandbox, f"{namespace}/app", second["digest"])
    assert len(second_manifest["layers"]) == len(first_manifest["layers"])
    assert second_manifest["layers"][0]["digest"] == first_manifest["layers"][0]["digest"]


@BUILDERS
def test_failing_run_step_fails_with_the_command_in_the_message(sandbox: Sandbox,
                                                                namespace: str,
                                                                builder: str) -> None:
    admin = sandbox.admin
    dockerfile = ("ARG BASE\nFROM ${BASE}\nRUN echo preparing\n"
                  "RUN echo compiling && ls /no/such/dir\n")
    admin.apply([context(namespace, dockerfile)])
    admin.apply([imagebuild(sandbox, namespace, "broken", builder=builder)])
    status = sandbox.wait_settled("broken", namespace)["status"]
    assert status["phase"] == "Failed", status
    assert status["reason"] == "BuildFailed", status["message"]
    assert "ls /no/such/dir" in status["message"]
    # The first line says who failed, at which step.
    first_line = status["message"].splitlines()[0]
    assert first_line.startswith(f"{builder.title()} exited with code"), first_line
    assert "at step RUN echo compiling && ls /no/such/dir" in first_line, first_line
    stalled = {c["type"]: c for c in status["conditions"]}["Stalled"]
    assert stalled["status"] == "True"
    assert stalled["reason"] == "BuildFailed"
    assert "digest" not in status or status.get("digest") is None
    assert len(pods(sandbox, namespace, "broken")) == 1, "a failed build must not be retried"


def test_api_server_rejects_what_the_schema_forbids(sandbox: Sandbox, namespace: str) -> None:
    bad = imagebuild(sandbox, namespace, "two-sources")
    bad["spec"]["source"]["url"] = "s3://bucket/ctx.tar.gz"
    with pytest.raises(UnprocessibleEntityError) as caught:
        sandbox.admin.apply([bad])
    assert "source" in str(caught.value.body)
    bad_image = imagebuild(sandbox, namespace, "bad-image", output={"image": "Reg/UPPER:tag"})
    with pytest.raises(UnprocessibleEntityError):
        sandbox.admin.apply([bad_image])


def test_invalid_spec_the_schema_cannot_catch_ends_in_failed(sandbox: Sandbox,
                                                             namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, SLOW_DOCKERFILE)])
    admin.apply([imagebuild(sandbox, namespace, "bad-args", buildArgs={"NOT-VALID": "1"})])
    obj = sandbox.wait_settled("bad-args", namespace)
    status = obj["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "buildArgs" in status["message"]
    assert "NOT-VALID" in status["message"]
    assert pods(sandbox, namespace, "bad-args") == []
    # No crash loop, no retry loop: another event on the object is answered with no write.
    admin.resource(IMAGEBUILD_API, "ImageBuild").patch(
        name="bad-args", namespace=namespace, content_type="application/merge-patch+json",
        body={"metadata": {"labels": {"touched": "yes"}}})
    time.sleep(3)
    again = sandbox.imagebuild("bad-args", namespace)
    assert again is not None
    assert again["status"] == status
    assert sandbox.operator.log().count(f"[{namespace}/bad-args] Invalid spec: ") == 1
    assert sandbox.operator.running


def test_a_source_buildah_cannot_build_ends_invalid_spec_without_a_pod(
        sandbox: Sandbox, namespace: str) -> None:
    """The CRD accepts an s3:// context (Kaniko builds it); the operator says Buildah cannot."""
    admin = sandbox.admin
    build = imagebuild(sandbox, namespace, "from-s3", builder="buildah")
    build["spec"]["source"] = {"url": "s3://bucket/ctx.tar.gz"}
    admin.apply([build])
    status = sandbox.wait_settled("from-s3", namespace)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec"), status
    assert "builder buildah cannot build this source" in status["message"]
    assert "s3://" in status["message"]
    assert pods(sandbox, namespace, "from-s3") == []


def test_spec_change_mid_build_cancels_and_builds_the_new_spec(sandbox: Sandbox,
                                                               namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, SLOW_DOCKERFILE)])
    admin.apply([imagebuild(sandbox, namespace, "moving")])
    building = wait_phase(sandbox, namespace, "moving", "Building")["status"]
    first_pod = building["podName"]
    wait_pod_running(sandbox, namespace, first_pod)

    admin.resource(IMAGEBUILD_API, "ImageBuild").patch(
        name="moving", namespace=namespace, content_type="application/merge-patch+json",
        body={"spec": {"buildArgs": {"BASE": sandbox.base_image, "STEP": "two"}}})
    status = sandbox.wait_settled("moving", namespace, generation=2)["status"]
    assert status["phase"] == "Succeeded"
    assert status["podName"] != first_pod
    old = sandbox.admin.get("v1", "Pod", first_pod, namespace)
    # Deleted: gone, or still stopping within its grace period on the real kubelet.
    assert old is None or old["metadata"].get("deletionTimestamp"), "old pod not deleted"
    assert "step two" in sandbox.pod_log(status["podName"], namespace)


def test_operator_restart_mid_build_neither_loses_nor_duplicates(sandbox: Sandbox,
                                                                 namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, SLOW_DOCKERFILE)])
    admin.apply([imagebuild(sandbox, namespace, "survivor")])
    pod = wait_phase(sandbox, namespace, "survivor", "Building")["status"]["podName"]
    wait_pod_running(sandbox, namespace, pod)
    sandbox.operator.stop(kill=True)  # a crash, not a clean shutdown
    try:
        time.sleep(1)
    finally:
        sandbox.operator.start()
    status = sandbox.wait_settled("survivor", namespace)["status"]
    assert status["phase"] == "Succeeded"
    assert status["podName"] == pod
    assert status["attempt"] == 1
    assert [p["metadata"]["name"] for p in pods(sandbox, namespace, "survivor")] == [pod]


def test_finished_builds_are_not_repeated_by_a_restart(sandbox: Sandbox, namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN echo done > /done\n")])
    admin.apply([imagebuild(sandbox, namespace, "finished")])
    before = sandbox.wait_settled("finished", namespace)
    assert before["status"]["phase"] == "Succeeded"
    sandbox.operator.stop()
    sandbox.operator.start()
    time.sleep(6)  # start-up lists every ImageBuild, then a few resync periods pass
    after = sandbox.imagebuild("finished", namespace)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert len(pods(sandbox, namespace, "finished")) == 1


def test_a_build_costs_three_writes(sandbox: Sandbox, namespace: str) -> None:
    """Create pod, status Building, status Succeeded: nothing else touches the ImageBuild."""
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN echo cheap > /cheap\n")])
    created = admin.resource(IMAGEBUILD_API, "ImageBuild").create(
        body=imagebuild(sandbox, namespace, "cheap"), namespace=namespace)
    start_version = created.metadata.resourceVersion  # before the operator could write
    final = sandbox.wait_settled("cheap", namespace)
    events = admin.resource(IMAGEBUILD_API, "ImageBuild").watch(
        namespace=namespace, resource_version=start_version, timeout=2)
    modified = [e for e in events if e["type"] == "MODIFIED"]
    assert [e["object"]["status"]["phase"] for e in modified] == ["Building", "Succeeded"]
    metadata = final["metadata"]
    assert not metadata.get("finalizers")
    assert not any(k.startswith(("kopf.", "stagewright.dev/"))
                   for k in (metadata.get("annotations") or {}))
    assert len(pods(sandbox, namespace, "cheap")) == 1
    # The scheduler and kubelet post Events about the pod; none is about a routine success.
    k8s_events = [e for e in admin.list("v1", "Event", namespace)
                  if e["involvedObject"]["kind"] == "ImageBuild" and e["type"] == "Normal"]
    assert k8s_events == [], [e.get("message") for e in k8s_events]


def test_timeout_ends_in_failed_timeout(sandbox: Sandbox, namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN sleep 60\n")])
    admin.apply([imagebuild(sandbox, namespace, "slowpoke", timeout="3s")])
    status = sandbox.wait_settled("slowpoke", namespace, timeout=60)["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "Timeout")
    assert "timeout" in status["message"].lower()


@BUILDERS
def test_push_secret_is_used_for_push_and_for_the_digest_check(sandbox: Sandbox,
                                                                namespace: str,
                                                                builder: str) -> None:
    admin = sandbox.admin
    # FROM scratch: output.insecure covers the private registry only, not the base's.
    admin.apply([context(namespace, "FROM scratch\nCOPY Dockerfile /Dockerfile\n")])
    with LocalRegistry(htpasswd=("pusher", "s3cret"), address=GATEWAY) as private:
        auth = docker_config(private.host, "pusher", "s3cret")  # as kubectl writes it
        admin.apply([{
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": "regcred", "namespace": namespace},
            "stringData": {".dockerconfigjson": json.dumps(auth)},
        }])
        image = f"{private.host}/team/private"
        admin.apply([
            imagebuild(sandbox, namespace, "no-creds", cache={"enabled": False},
                       output={"image": image}, builder=builder),
            imagebuild(sandbox, namespace, "with-creds", cache={"enabled": False},
                       output={"image": image + "-ok", "pushSecretRef": {"name": "regcred"}},
                       builder=builder),
        ])
        denied = sandbox.wait_settled("no-creds", namespace)["status"]
        assert (denied["phase"], denied["reason"]) == ("Failed", "PushFailed"), denied
        pushed = sandbox.wait_settled("with-creds", namespace)["status"]
        assert pushed["phase"] == "Succeeded", pushed
        response = httpx.get(f"{private.url}/v2/team/private-ok/manifests/latest",
                             headers={"Accept": ACCEPT}, auth=("pusher", "s3cret"), timeout=10)
        assert pushed["digest"] == response.headers["Docker-Content-Digest"]
        assert pushed["size"] > 0


@pytest.mark.parametrize(("retries", "phase"), [(1, "Succeeded"), (0, "Failed")])
def test_a_lost_pod_is_retried_only_within_retries(sandbox: Sandbox, namespace: str,
                                                   retries: int, phase: str) -> None:
    """A deleted pod (a drained node) is an infrastructure failure: retried, not a build error.

    Seen while it terminates, it is Evicted (1.20 cannot tell a deletion from an eviction).
    """
    admin = sandbox.admin
    admin.apply([context(namespace, SLOW_DOCKERFILE)])
    admin.apply([imagebuild(sandbox, namespace, "drained", retries=retries)])
    first = wait_phase(sandbox, namespace, "drained", "Building")["status"]["podName"]
    wait_pod_running(sandbox, namespace, first)
    admin.delete("v1", "Pod", first, namespace)
    status = sandbox.wait_settled("drained", namespace)["status"]
    assert status["phase"] == phase
    if retries:
        assert status["attempt"] == 2
        assert status["podName"] == first.removesuffix("-1") + "-2"
    else:
        assert status["reason"] == "Evicted"
        assert first in status["message"]


def test_a_missing_context_is_reported_and_the_build_starts_once_it_exists(
        sandbox: Sandbox, namespace: str) -> None:
    admin = sandbox.admin
    admin.apply([imagebuild(sandbox, namespace, "early")])  # its ConfigMap comes later
    pending = wait_phase(sandbox, namespace, "early", "Pending",
                         reason="ReferenceNotFound")["status"]
    assert "ConfigMap ctx" in pending["message"]
    assert pods(sandbox, namespace, "early") == []
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN echo late > /late\n")])
    status = sandbox.wait_settled("early", namespace)["status"]
    assert status["phase"] == "Succeeded"
    assert len(pods(sandbox, namespace, "early")) == 1


def test_a_missing_service_account_is_waited_for_not_failed(sandbox: Sandbox,
                                                            namespace: str) -> None:
    """The ServiceAccount admission plugin refuses a pod whose account does not exist (a
    namespace created a moment ago has no default one yet): the build waits, in words."""
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN echo ok > /ok\n"),
                 imagebuild(sandbox, namespace, "robot", serviceAccountName="builder")])
    pending = wait_phase(sandbox, namespace, "robot", "Pending",
                         reason="ReferenceNotFound")["status"]
    assert pending["message"] == (f"Waiting for ServiceAccount builder in namespace "
                                  f"{namespace}; the build starts when it exists.")
    assert pods(sandbox, namespace, "robot") == []
    admin.apply([{"apiVersion": "v1", "kind": "ServiceAccount",
                  "metadata": {"name": "builder", "namespace": namespace}}])
    status = sandbox.wait_settled("robot", namespace, timeout=240)["status"]
    assert status["phase"] == "Succeeded", status


def test_a_full_resource_quota_holds_the_build_until_capacity_frees(sandbox: Sandbox,
                                                                    namespace: str) -> None:
    """The ResourceQuota admission plugin's refusal passes on its own: the build waits,
    Pending with the quota's words, and starts once the quota allows a pod."""
    admin = sandbox.admin
    quota = {"apiVersion": "v1", "kind": "ResourceQuota",
             "metadata": {"name": "no-pods", "namespace": namespace},
             "spec": {"hard": {"pods": "0"}}}
    admin.apply([quota])
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN echo ok > /ok\n"),
                 imagebuild(sandbox, namespace, "held")])
    pending = wait_phase(sandbox, namespace, "held", "Pending", reason="PodRejected")["status"]
    assert "exceeded quota: no-pods" in pending["message"], pending
    assert pods(sandbox, namespace, "held") == []
    admin.apply([{**quota, "spec": {"hard": {"pods": "1"}}}])
    status = sandbox.wait_settled("held", namespace, timeout=240)["status"]
    assert status["phase"] == "Succeeded", status
    assert len(pods(sandbox, namespace, "held")) == 1
