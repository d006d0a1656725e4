"""The plain install (manifests/) renders, validates, and grants only what the operator needs.

Everything here runs offline: ``kubectl kustomize`` renders, ``kubernetes-validate`` checks
objects against the official schemas, samples are checked against the CRD's own schema and
the pydantic models the operator parses them with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from tests.tooling import (
    CHART,
    CRD_COPIES,
    CRD_SOURCE,
    MANIFESTS,
    ROOT,
    SAMPLES,
    Obj,
    by_kind,
    imagebuild_schema,
    kustomize,
    load_documents,
    normalized_rules,
    one,
    schema_errors,
    validate,
)

from sandbox.images import BASE_REPOSITORY
from sandbox.keep import REGISTRY_PORT
from sandbox.node import GATEWAY
from stagewright.api.v1alpha1 import ImageBuild
from stagewright.settings import DEFAULT_BUILDAH_IMAGE, DEFAULT_KANIKO_IMAGE

NAMESPACE = "stagewright-system"
OPERATOR = "stagewright-operator"
RBAC_FILE = MANIFESTS / "base" / "rbac.yaml"

#: Every grant the operator has, spelled out: changing RBAC means changing this on purpose.
EXPECTED_GRANTS = {
    ("stagewright.dev", "imagebuilds", "get"),
    ("stagewright.dev", "imagebuilds", "list"),
    ("stagewright.dev", "imagebuilds", "watch"),
    ("stagewright.dev", "imagebuilds/status", "patch"),
    ("stagewright.dev", "imagebuilds/finalizers", "update"),
    ("", "pods", "create"),
    ("", "pods", "delete"),
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods/log", "get"),
    ("", "secrets", "get"),
    ("", "configmaps", "get"),
    ("", "events", "create"),
}


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    return kustomize(MANIFESTS)


def test_kustomize_renders_the_install(rendered: list[Obj]) -> None:
    kinds = sorted(obj["kind"] for obj in rendered)
    assert kinds == sorted([
        "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "PodDisruptionBudget",
    ])
    for obj in rendered:
        if obj["kind"] in ("ServiceAccount", "Deployment", "Role", "RoleBinding",
                           "PodDisruptionBudget"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
    assert one(rendered, "Namespace")["metadata"]["name"] == NAMESPACE


def test_every_rendered_object_passes_the_official_schemas(rendered: list[Obj]) -> None:
    errors = schema_errors(rendered)
    assert not errors, "\n".join(errors)


def test_validation_catches_an_invalid_object(rendered: list[Obj]) -> None:
    """The schema check above can fail: an unknown field in strict mode is an error."""
    deployment = yaml.safe_load(yaml.safe_dump(one(rendered, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


@pytest.mark.parametrize("copy", CRD_COPIES, ids=lambda path: str(path.relative_to(ROOT)))
def test_crd_copies_are_byte_identical_to_the_generated_crd(copy: Path) -> None:
    assert CRD_SOURCE.exists(), f"{CRD_SOURCE} is missing: run `stagewright crd`"
    assert copy.read_bytes() == CRD_SOURCE.read_bytes(), (
        f"{copy.relative_to(ROOT)} drifted from {CRD_SOURCE.relative_to(ROOT)}: "
        f"cp {CRD_SOURCE.relative_to(ROOT)} {copy.relative_to(ROOT)}"
    )


def test_rendered_crd_is_the_generated_crd(rendered: list[Obj]) -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    crd = one(rendered, "CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]


def test_deployment_runs_two_restricted_replicas_with_leader_election(
        rendered: list[Obj]) -> None:
    deployment = one(rendered, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # The new pod stands by (Ready) before the old leader is stopped and gives its Lease up.
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    env = {item["name"]: item for item in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["STAGEWRIGHT_LEADER_ELECTION"]["value"] == "true"
    assert env["STAGEWRIGHT_LEASE_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}}
    for name, path in (("POD_NAME", "metadata.name"), ("POD_IP", "status.podIP")):
        assert env[name]["valueFrom"] == {"fieldRef": {"fieldPath": path}}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp"
    assert "emptyDir" in pod["volumes"][0]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


def test_probes_hit_the_liveness_endpoint_the_operator_serves(rendered: list[Obj]) -> None:
    container = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    for setting, port_name, probes in (
            ("STAGEWRIGHT_LIVENESS_ENDPOINT", "health", ("startupProbe", "livenessProbe")),
            ("STAGEWRIGHT_READINESS_ENDPOINT", "ready", ("readinessProbe",))):
        endpoint = env[setting]
        match = re.fullmatch(r"http://0\.0\.0\.0:(\d+)(/\S+)", endpoint)
        assert match, endpoint
        (port,) = [p for p in container["ports"] if p["name"] == port_name]
        assert port["containerPort"] == int(match.group(1))
        for probe in probes:
            assert container[probe]["httpGet"] == {"path": match.group(2),
                                                   "port": port_name}, probe


def test_image_and_builder_defaults_match_the_chart_and_settings(rendered: list[Obj]) -> None:
    container = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container["image"] == f"ghcr.io/stagewright/stagewright:{app_version}"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["STAGEWRIGHT_KANIKO_IMAGE"] == DEFAULT_KANIKO_IMAGE
    assert env["STAGEWRIGHT_BUILDAH_IMAGE"] == DEFAULT_BUILDAH_IMAGE
    assert env["STAGEWRIGHT_NAMESPACES"] == ""  # cluster-wide, as the ClusterRole grants


def test_operator_image_user_matches_the_pod_security_context() -> None:
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users, "operator/Dockerfile sets no USER"
    assert users[-1].split(":")[0] == "65532", users


# RBAC


def _rbac_file() -> list[Obj]:
    return load_documents(RBAC_FILE.read_text())


def test_rbac_file_holds_the_cluster_role_and_its_binding() -> None:
    docs = _rbac_file()
    assert [doc["kind"] for doc in docs] == ["ClusterRole", "ClusterRoleBinding"]
    role, binding = docs
    assert role["metadata"]["name"] == OPERATOR
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE},
    ]
    for doc in docs:
        validate(doc)


def test_rbac_grants_exactly_what_the_operator_needs() -> None:
    role = _rbac_file()[0]
    assert normalized_rules(role["rules"]) == EXPECTED_GRANTS


def test_rbac_has_no_wildcards_and_no_resource_names() -> None:
    for rule in _rbac_file()[0]["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert "nonResourceURLs" not in rule, rule
        assert "resourceNames" not in rule, rule


def test_every_rbac_rule_is_commented_with_its_reason() -> None:
    lines = RBAC_FILE.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
    assert len(starts) == len(_rbac_file()[0]["rules"])
    for index in starts:
        assert lines[index - 1].lstrip().startswith("#"), f"rule at line {index + 1} has no reason"


def test_only_the_operator_is_bound(rendered: list[Obj]) -> None:
    """Build pods get no API access: nothing binds any other subject."""
    bindings = by_kind(rendered, "ClusterRoleBinding") + by_kind(rendered, "RoleBinding")
    subjects = [subject for binding in bindings for subject in binding["subjects"]]
    assert subjects == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}] * 2
    (role,) = by_kind(rendered, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE  # Leases only where the operator runs


LEADER_ELECTION_FILE = MANIFESTS / "base" / "leader-election.yaml"


def test_leader_election_rbac_is_the_lease_and_its_events_in_the_operators_namespace() -> None:
    role, binding = load_documents(LEADER_ELECTION_FILE.read_text())
    assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert normalized_rules(role["rules"]) == {
        ("coordination.k8s.io", "leases", "create"), ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "update"), ("", "events", "create")}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    lines = LEADER_ELECTION_FILE.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
    assert len(starts) == len(role["rules"])
    for index in starts:
        assert lines[index - 1].lstrip().startswith("#"), f"rule at line {index + 1} has no reason"
    for doc in (role, binding):
        validate(doc)


# Samples


def _sample_docs() -> list[tuple[str, Obj]]:
    return [
        (path.name, doc)
        for path in sorted(SAMPLES.glob("*.yaml"))
        for doc in load_documents(path.read_text())
    ]


SAMPLE_DOCS = _sample_docs()


@pytest.mark.parametrize(
    ("file", "obj"), SAMPLE_DOCS,
    ids=[f"{file}:{obj['kind']}/{obj['metadata']['name']}" for file, obj in SAMPLE_DOCS],
)
def test_sample_is_valid(file: str, obj: Obj) -> None:
    if obj["kind"] == "ImageBuild":
        # What the API server checks, then what the operator checks on top (exactly one
        # source, build-arg names, ...).
        jsonschema.validate(obj, imagebuild_schema())
        ImageBuild.model_validate(obj)
    else:
        validate(obj)


def test_crd_schema_rejects_a_bad_imagebuild() -> None:
    """The sample check can fail: an image with a tag is not a repository."""
    build = next(obj for _, obj in SAMPLE_DOCS if obj["kind"] == "ImageBuild")
    broken: dict[str, Any] = yaml.safe_load(yaml.safe_dump(build))
    broken["spec"]["output"]["image"] = "registry.example.com/acme/web:v1"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, imagebuild_schema())


def _samples_in(name: str) -> list[Obj]:
    return load_documents((SAMPLES / name).read_text())


def test_git_sample_builds_a_target_with_the_cache() -> None:
    spec = one(_samples_in("git-build.yaml"), "ImageBuild")["spec"]
    assert spec["source"]["git"]["url"].startswith("https://")
    assert spec["target"]
    assert spec["cache"]["enabled"] is True


def test_configmap_sample_holds_a_multistage_dockerfile_with_the_targets() -> None:
    docs = _samples_in("configmap-build.yaml")
    config_map = one(docs, "ConfigMap")
    dockerfile = config_map["data"]["Dockerfile"]
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, flags=re.MULTILINE | re.I)
    assert len(stages) >= 2, stages
    builds = by_kind(docs, "ImageBuild")
    assert {build["spec"]["target"] for build in builds} == set(stages)
    for build in builds:
        assert build["spec"]["source"]["configMap"]["name"] == config_map["metadata"]["name"]


def test_private_registry_sample_shows_the_push_secret_shape() -> None:
    docs = _samples_in("private-registry.yaml")
    secret = one(docs, "Secret")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert "auths" in yaml.safe_load(secret["stringData"][".dockerconfigjson"])
    build = one(docs, "ImageBuild")
    assert build["spec"]["output"]["pushSecretRef"]["name"] == secret["metadata"]["name"]


def test_kind_sample_pushes_to_the_insecure_local_registry() -> None:
    docs = _samples_in("kind-local-registry.yaml")
    output = one(docs, "ImageBuild")["spec"]["output"]
    assert output["image"].startswith("kind-registry:5000/")
    assert output["insecure"] is True
    assert one(docs, "ConfigMap")


def test_buildah_sample_is_a_buildah_build_the_operator_accepts() -> None:
    """Valid for the CRD (checked with every sample) and for the model, which is stricter for
    Buildah: a source it cannot build would be InvalidSpec."""
    docs = _samples_in("buildah-build.yaml")
    build = one(docs, "ImageBuild")
    assert build["spec"]["builder"] == "buildah"
    ImageBuild.model_validate(build)
    dockerfile = one(docs, "ConfigMap")["data"]["Dockerfile"]
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    # Registry-qualified: short names resolve through the image's registries.conf.
    assert all(base == "scratch" or "." in base.split("/")[0] for base in bases), bases


def test_sandbox_quickstart_sample_names_the_kept_sandboxs_registry_and_base() -> None:
    """`make sandbox` serves its registry at a fixed address so this file can name it; the
    README's quick start builds it word for word (hack/sandbox/quickstart_check.py, in CI)."""
    docs = _samples_in("sandbox-quickstart.yaml")
    registry = f"{GATEWAY}:{REGISTRY_PORT}"
    namespace = one(docs, "Namespace")["metadata"]["name"]
    build = one(docs, "ImageBuild")
    assert build["metadata"]["namespace"] == one(docs, "ConfigMap")["metadata"]["namespace"] == (
        namespace)  # no -n needed: the file's own namespace is used, as kubectl does
    assert build["spec"]["output"]["image"].startswith(f"{registry}/")
    assert build["spec"]["output"]["insecure"] is True
    dockerfile = one(docs, "ConfigMap")["data"]["Dockerfile"]
    assert f"ARG BASE={registry}/{BASE_REPOSITORY}" in dockerfile
    ImageBuild.model_validate(build)


def test_the_webhooks_component_opens_the_endpoint_behind_a_service(tmp_path: Path) -> None:
    """Off in the plain install; an overlay with the component serves it (kustomize renders
    components only from a kustomization that names them)."""
    assert not [o for o in kustomize(MANIFESTS) if o["kind"] == "Service"]
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    for name in ("manifests", "crds"):
        (tmp_path / name).symlink_to(MANIFESTS.parent / name)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../manifests"], "components": ["../manifests/components/webhooks"]}))
    objs = kustomize(overlay)
    service = one(objs, "Service")
    deployment = one(objs, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["STAGEWRIGHT_WEBHOOK_PORT"], env["STAGEWRIGHT_WEBHOOK_ADDRESS"]) == (
        "8081", "0.0.0.0")
    assert {"name": "webhooks", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    numbers = [port["containerPort"] for port in container["ports"]]
    assert len(numbers) == len(set(numbers)), numbers  # readiness, metrics, webhooks apart
    for obj in objs:
        if obj["kind"] != "CustomResourceDefinition":
            validate(obj)
