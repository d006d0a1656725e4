"""The Helm chart lints, renders valid objects, matches the plain manifests, rejects bad values.

Runs helm offline (``helm lint``, ``helm template``) with the pinned helm from
hack/install-tools.sh; every rendered object passes the official Kubernetes schemas.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from tests.tooling import (
    CHART,
    CRD_SOURCE,
    MANIFESTS,
    Obj,
    by_kind,
    helm_template,
    kustomize,
    load_documents,
    normalized_rules,
    one,
    run,
    schema_errors,
    tool,
    validate,
)

from stagewright.settings import Settings

NAMESPACED = "watchNamespaces={team-a,team-b}"


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return helm_template()


@pytest.fixture(scope="module")
def namespaced() -> list[Obj]:
    return helm_template(NAMESPACED)


@pytest.fixture(scope="module")
def manifests() -> list[Obj]:
    return kustomize(MANIFESTS)


def _container(objs: list[Obj]) -> Obj:
    container: Obj = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(objs: list[Obj]) -> dict[str, str]:
    """The container's env; an entry from the downward API reads ``fieldRef:PATH``."""
    return {item["name"]: item["value"] if "value" in item
            else f"fieldRef:{item['valueFrom']['fieldRef']['fieldPath']}"
            for item in _container(objs)["env"]}


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The rendered env in this process (the pod's downward-API values aside)."""
    for name, value in env.items():
        if not value.startswith("fieldRef:"):
            monkeypatch.setenv(name, value)


def _namespaced_roles(objs: list[Obj]) -> list[Obj]:
    """The Roles of namespace mode (the leader-election Role is the release namespace's)."""
    return [role for role in by_kind(objs, "Role")
            if not role["metadata"]["name"].endswith("-leader-election")]


@pytest.mark.parametrize("values", [[], [NAMESPACED], ["crds.enabled=false"]])
def test_helm_lint(values: list[str]) -> None:
    argv: list[Any] = [tool("helm"), "lint", "--strict", CHART]
    for value in values:
        argv += ["--set", value]
    run(argv)


@pytest.mark.parametrize("mode", ["default", "namespaced"])
def test_every_rendered_object_passes_the_official_schemas(
    mode: str, request: pytest.FixtureRequest,
) -> None:
    objs: list[Obj] = request.getfixturevalue(mode)
    assert objs
    errors = schema_errors(objs)
    assert not errors, "\n".join(errors)


def test_default_renders_a_cluster_wide_install(default: list[Obj]) -> None:
    assert sorted(obj["kind"] for obj in default) == sorted([
        "ServiceAccount", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
        "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget",
    ])
    assert one(default, "ClusterRole")["metadata"]["name"] == "stagewright-operator"
    assert "STAGEWRIGHT_NAMESPACES" not in _env(default)


# RBAC


def test_cluster_wide_rbac_equals_the_plain_manifests(
    default: list[Obj], manifests: list[Obj],
) -> None:
    chart_role = one(default, "ClusterRole")
    plain_role = one(manifests, "ClusterRole")
    # Same rules, in the same order and layout, not only the same grants.
    assert chart_role["rules"] == plain_role["rules"]
    assert chart_role["metadata"]["name"] == plain_role["metadata"]["name"]
    chart_binding = one(default, "ClusterRoleBinding")
    plain_binding = one(manifests, "ClusterRoleBinding")
    assert chart_binding["roleRef"] == plain_binding["roleRef"]
    assert chart_binding["subjects"] == plain_binding["subjects"]


def test_namespaced_mode_grants_the_same_rules_only_where_watched(
    namespaced: list[Obj], default: list[Obj],
) -> None:
    roles = _namespaced_roles(namespaced)
    bindings = [b for b in by_kind(namespaced, "RoleBinding")
                if not b["metadata"]["name"].endswith("-leader-election")]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    operator_sa = one(namespaced, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{
            "kind": "ServiceAccount", "name": operator_sa["name"],
            "namespace": operator_sa["namespace"],
        }]
    # Nothing cluster-wide: the informers watch only the listed namespaces and need no CRD read.
    assert by_kind(namespaced, "ClusterRole") == []
    assert by_kind(namespaced, "ClusterRoleBinding") == []
    for role in roles:
        assert normalized_rules(role["rules"]) == normalized_rules(
            one(default, "ClusterRole")["rules"],
        )
    assert _env(namespaced)["STAGEWRIGHT_NAMESPACES"] == "team-a,team-b"


def test_rules_have_no_wildcards(default: list[Obj], namespaced: list[Obj]) -> None:
    for role in by_kind(default + namespaced, "ClusterRole") + by_kind(default + namespaced,
                                                                        "Role"):
        for grant in normalized_rules(role["rules"]):
            assert "*" not in grant, (role["metadata"]["name"], grant)


# CRD


def test_crd_is_the_generated_one_and_kept_by_default(default: list[Obj]) -> None:
    crd = one(default, "CustomResourceDefinition")
    source = yaml.safe_load(CRD_SOURCE.read_text())
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crd_keep_false_lets_helm_delete_it() -> None:
    crd = one(helm_template("crds.keep=false"), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crds_disabled_renders_no_crd() -> None:
    assert not by_kind(helm_template("crds.enabled=false"), "CustomResourceDefinition")


# Deployment


def test_deployment_matches_the_plain_manifests_security(
    default: list[Obj], manifests: list[Obj],
) -> None:
    chart_pod = one(default, "Deployment")["spec"]["template"]["spec"]
    plain_pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert chart_pod["securityContext"] == plain_pod["securityContext"]
    for key in ("securityContext", "volumeMounts", "startupProbe", "livenessProbe",
                "readinessProbe", "ports", "resources"):
        assert _container(default)[key] == _container(manifests)[key], key
    assert chart_pod["volumes"] == plain_pod["volumes"]
    deployment = one(default, "Deployment")["spec"]
    plain = one(manifests, "Deployment")["spec"]
    assert deployment["replicas"] == plain["replicas"] == 2
    assert deployment["strategy"] == plain["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_default_env_gives_the_operator_its_own_defaults(
    default: list[Obj], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chart's defaults are the operator's: the rendered env parses to Settings()."""
    env = _env(default)
    field_envs = {f"STAGEWRIGHT_{name.upper()}" for name in Settings.model_fields}
    # Optional settings are rendered only when configured (watchNamespaces, caBundle.configMap,
    # the queue limits: unset is unlimited).
    optional = {"STAGEWRIGHT_NAMESPACES", "STAGEWRIGHT_CA_BUNDLE_CONFIGMAP",
                "STAGEWRIGHT_CA_BUNDLE_FILE", "STAGEWRIGHT_MAX_RUNNING_BUILDS",
                "STAGEWRIGHT_MAX_RUNNING_BUILDS_PER_NAMESPACE",
                "STAGEWRIGHT_REGISTRY_ALLOW", "STAGEWRIGHT_WEBHOOK_PORT",
                "STAGEWRIGHT_WEBHOOK_ADDRESS"}
    # The pod's own name and IP (downward API): its identity and address in the Lease.
    assert set(env) == field_envs - optional | {"POD_NAME", "POD_IP"}
    assert env["STAGEWRIGHT_LEASE_NAMESPACE"] == "fieldRef:metadata.namespace"
    baseline = Settings()
    _set_env(monkeypatch, env)
    rendered = Settings()
    # The chart serves what the operator leaves off: probes and metrics, on the pod's IP, and
    # leader election (two replicas) on the release's own Lease.
    served = {"liveness_endpoint": None, "readiness_endpoint": None, "metrics_port": None,
              "metrics_address": "127.0.0.1", "leader_election": False,
              "lease_name": "stagewright"}
    assert rendered.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert rendered.readiness_endpoint == "http://0.0.0.0:8082/readyz"
    assert (rendered.metrics_port, rendered.metrics_address) == (9090, "0.0.0.0")
    assert (rendered.leader_election, rendered.lease_name) == (True, "stagewright-operator")
    assert rendered.model_copy(update=served) == baseline.model_copy(update=served)


def test_values_reach_the_deployment() -> None:
    objs = helm_template(
        "image.digest=sha256:" + "a" * 64,
        "kaniko.image=registry.example.com/kaniko:v9",
        "buildah.image=registry.example.com/buildah:v9",
        "build.defaultTimeout=45m",
        "build.defaultResources.limits.memory=8Gi",
        "nodeSelector.pool=ops",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "operator.healthPort=9090",
    )
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    container = _container(objs)
    env = _env(objs)
    assert container["image"] == "ghcr.io/stagewright/stagewright@sha256:" + "a" * 64
    assert env["STAGEWRIGHT_KANIKO_IMAGE"] == "registry.example.com/kaniko:v9"
    assert env["STAGEWRIGHT_BUILDAH_IMAGE"] == "registry.example.com/buildah:v9"
    assert env["STAGEWRIGHT_DEFAULT_TIMEOUT"] == "45m"
    assert json.loads(env["STAGEWRIGHT_DEFAULT_RESOURCES"])["limits"]["memory"] == "8Gi"
    assert env["STAGEWRIGHT_LIVENESS_ENDPOINT"] == "http://0.0.0.0:9090/healthz"
    assert container["ports"][0]["containerPort"] == 9090
    assert pod["nodeSelector"] == {"pool": "ops"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    for obj in objs:
        validate(obj)


def test_queue_limits_and_metrics_reach_the_deployment() -> None:
    objs = helm_template("queue.maxRunningBuilds=50", "queue.maxRunningBuildsPerNamespace=5",
                         "metrics.port=9191", "metrics.serviceMonitor.enabled=true")
    env = _env(objs)
    assert env["STAGEWRIGHT_MAX_RUNNING_BUILDS"] == "50"
    assert env["STAGEWRIGHT_MAX_RUNNING_BUILDS_PER_NAMESPACE"] == "5"
    assert env["STAGEWRIGHT_METRICS_PORT"] == "9191"
    service = one(objs, "Service")
    assert service["spec"]["ports"][0]["port"] == 9191
    monitor = one(objs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]


def test_metrics_can_be_turned_off() -> None:
    objs = helm_template("metrics.enabled=false")
    assert "STAGEWRIGHT_METRICS_PORT" not in _env(objs)
    assert not [obj for obj in objs if obj["kind"] in ("Service", "ServiceMonitor")]


def test_ca_bundle_reaches_the_operator_and_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """caBundle mounts the ConfigMap into the operator and names it for the build pods."""
    objs = helm_template("caBundle.configMap=corp-ca", "caBundle.key=root.pem")
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    items = [{"key": "root.pem", "path": "ca-bundle.crt"}]
    assert {"name": "ca-bundle", "configMap": {"name": "corp-ca", "items": items}} in pod["volumes"]
    env = _env(objs)
    mount = next(m for m in _container(objs)["volumeMounts"] if m["name"] == "ca-bundle")
    assert env["STAGEWRIGHT_CA_BUNDLE_FILE"].startswith(mount["mountPath"] + "/")
    _set_env(monkeypatch, env)
    settings = Settings()
    assert (settings.ca_bundle_configmap, settings.ca_bundle_key) == ("corp-ca", "root.pem")
    validate(deployment)


def test_registry_allow_list_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = helm_template("registryAllow={registry.example.com,*.corp.example}")
    _set_env(monkeypatch, _env(objs))
    assert Settings().registry_allow == ["registry.example.com", "*.corp.example"]


def test_image_tag_defaults_to_the_app_version(default: list[Obj]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert _container(default)["image"] == f"ghcr.io/stagewright/stagewright:{app_version}"


# Availability: replicas, leader election, disruption budget, shards, logs


def test_leader_election_rbac_equals_the_plain_manifests_and_stays_in_its_namespace(
    default: list[Obj], manifests: list[Obj],
) -> None:
    chart_role, plain_role = one(default, "Role"), one(manifests, "Role")
    assert chart_role["rules"] == plain_role["rules"]
    assert chart_role["metadata"]["namespace"] == "stagewright-system"
    assert chart_role["metadata"]["name"] == plain_role["metadata"]["name"]
    assert one(default, "RoleBinding")["subjects"] == one(manifests, "RoleBinding")["subjects"]
    # Leases nowhere else: the ClusterRole grants none.
    for grant in normalized_rules(one(default, "ClusterRole")["rules"]):
        assert grant[0] != "coordination.k8s.io", grant


def test_pdb_selects_the_operator_pods_and_leaves_one_to_lead(
    default: list[Obj], manifests: list[Obj],
) -> None:
    for objs in (default, manifests):
        pdb = one(objs, "PodDisruptionBudget")
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["maxUnavailable"] == 1
        labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Kubernetes 1.20 serves only policy/v1beta1.
    old = one(helm_template(kube_version="1.20.2"), "PodDisruptionBudget")
    assert old["apiVersion"] == "policy/v1beta1"
    assert not by_kind(helm_template("podDisruptionBudget.enabled=false"),
                       "PodDisruptionBudget")


def test_replicas_spread_over_nodes_unless_affinity_is_given(default: list[Obj]) -> None:
    pod = one(default, "Deployment")["spec"]["template"]
    preferred = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert preferred[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= (
        pod["metadata"]["labels"].items())
    given = one(helm_template("affinity.nodeAffinity.x=y"), "Deployment")
    assert given["spec"]["template"]["spec"]["affinity"] == {"nodeAffinity": {"x": "y"}}


def test_one_replica_without_leader_election_is_recreated() -> None:
    objs = helm_template("replicas=1", "leaderElection.enabled=false")
    deployment = one(objs, "Deployment")["spec"]
    assert (deployment["replicas"], deployment["strategy"]) == (1, {"type": "Recreate"})
    assert _env(objs)["STAGEWRIGHT_LEADER_ELECTION"] == "false"
    assert not by_kind(objs, "Role")
    result = run([tool("helm"), "template", "x", CHART, "--set", "leaderElection.enabled=false"],
                 check=False)
    assert result.returncode != 0
    assert "replicas > 1 needs leaderElection.enabled" in result.stderr


def test_every_port_of_the_operator_is_its_own() -> None:
    """Liveness, readiness, metrics and webhooks on four ports, with everything turned on."""
    container = _container(helm_template("triggers.webhook.enabled=true"))
    numbers = [port["containerPort"] for port in container["ports"]]
    assert len(numbers) == 4
    assert len(set(numbers)) == 4, numbers


def test_readiness_probe_asks_the_readiness_endpoint(default: list[Obj]) -> None:
    container = _container(default)
    port = next(p for p in container["ports"] if p["name"] == "ready")["containerPort"]
    assert _env(default)["STAGEWRIGHT_READINESS_ENDPOINT"] == f"http://0.0.0.0:{port}/readyz"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}
    # Liveness stays kopf's, true for a standby as for the leader.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_a_shard_gets_its_namespaces_its_own_lease_and_cluster_rbac(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objs = helm_template("shard.namespaces={team-*,!team-x}", "crds.enabled=false",
                         release="sw-teams")
    env = _env(objs)
    assert env["STAGEWRIGHT_NAMESPACES"] == "team-*,!team-x"
    assert env["STAGEWRIGHT_LEASE_NAME"] == "sw-teams-stagewright-operator"
    assert one(objs, "ClusterRole")  # patterns cannot be granted per namespace
    assert not _namespaced_roles(objs)
    assert not by_kind(objs, "CustomResourceDefinition")
    monkeypatch.setenv("STAGEWRIGHT_NAMESPACES", env["STAGEWRIGHT_NAMESPACES"])
    scope = Settings().scope
    assert scope.covers("team-a")
    assert not scope.covers("team-x")
    assert not scope.covers("default")
    both = run([tool("helm"), "template", "x", CHART, "--set", "shard.namespaces={a}",
                "--set", "watchNamespaces={b}"], check=False)
    assert "set shard.namespaces or watchNamespaces, not both" in both.stderr


def test_json_logs_and_lease_timing_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = helm_template("logFormat=json", "leaderElection.leaseDurationSeconds=30",
                         "leaderElection.renewDeadlineSeconds=20",
                         "leaderElection.retryPeriodSeconds=4",
                         "leaderElection.leaseName=builds")
    _set_env(monkeypatch, _env(objs))
    settings = Settings()
    assert settings.log_format == "json"
    assert (settings.lease_duration_seconds, settings.renew_deadline_seconds,
            settings.retry_period_seconds, settings.lease_name) == (30, 20, 4, "builds")


# values.schema.json


@pytest.mark.parametrize(("value", "error"), [
    ("replica=2", "additional properties 'replica' not allowed"),
    ("replicas=0", "/replicas"),
    ("logFormat=xml", "/logFormat"),
    ("shard.namespaces={Team_A}", "/shard/namespaces/0"),
    ("leaderElection.leaseName=Bad_Name", "/leaderElection/leaseName"),
    ("build.defaultTimeout=thirty", "/build/defaultTimeout"),
    ("crds.keep=maybe", "/crds/keep"),
    ("operator.messageLimit=oops", "/operator/messageLimit"),
    ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("caBundle.configMap=Corp_CA", "/caBundle/configMap"),
    ("registryAllow={http://x}", "/registryAllow/0"),
    ("image.digest=latest", "/image/digest"),
    ("operator.extraEnv[0].name=STAGEWRIGHT_NAMESPACES", "/operator/extraEnv/0"),
])
def test_schema_rejects_bad_values(value: str, error: str) -> None:
    result = run([tool("helm"), "template", "x", CHART, "--set", value], check=False)
    assert result.returncode != 0, f"--set {value} rendered"
    assert error in result.stderr, result.stderr


def test_notes_tell_how_to_follow_a_build() -> None:
    result = run([
        tool("helm"), "install", "stagewright", CHART, "--dry-run=client",
        "--namespace", "stagewright-system",
    ])
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl get ib" in notes
    assert "kubectl wait" in notes
    assert "--for=condition=Ready ib/" in notes
    # The rendered manifests printed by a dry run are the same objects helm template gives.
    assert load_documents(result.stdout.split("NOTES:", 1)[0].split("MANIFEST:", 1)[1])


def test_the_webhook_endpoint_is_off_by_default_and_served_when_enabled(
        default: list[Obj]) -> None:
    assert not [o for o in default if o["kind"] == "Service"
                and o["metadata"]["name"].endswith("-webhooks")]
    assert "STAGEWRIGHT_WEBHOOK_PORT" not in _env(default)
    objs = helm_template("triggers.webhook.enabled=true", "triggers.webhook.port=9443")
    service = next(o for o in objs if o["kind"] == "Service"
                   and o["metadata"]["name"].endswith("-webhooks"))
    assert service["spec"]["ports"] == [{"name": "webhooks", "port": 9443,
                                         "targetPort": "webhooks", "protocol": "TCP"}]
    assert service["spec"]["selector"] == one(objs, "Deployment")["spec"]["selector"][
        "matchLabels"]
    env = _env(objs)
    assert (env["STAGEWRIGHT_WEBHOOK_PORT"], env["STAGEWRIGHT_WEBHOOK_ADDRESS"]) == (
        "9443", "0.0.0.0")
    assert {"name": "webhooks", "containerPort": 9443, "protocol": "TCP"} in _container(
        objs)["ports"]
