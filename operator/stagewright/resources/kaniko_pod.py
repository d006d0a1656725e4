"""Build the Kaniko Pod for an ImageBuild: pure, no I/O, so every flag is unit-tested.

Arguments are a list (never a shell string), so user input cannot become a command.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

from stagewright.api.v1alpha1 import (
    API_VERSION,
    CHECKS_ANNOTATION,
    GROUP,
    KIND,
    REBUILD_ANNOTATION,
    ConfigMapSource,
    ContextFile,
    ImageBuild,
    ImageBuildSpec,
    parse_duration,
)
from stagewright.resources.checks import check_containers
from stagewright.settings import Settings

CONTAINER_NAME = "kaniko"
#: Where Kaniko looks for registry credentials; a different path is the classic failure.
DOCKER_CONFIG_DIR = "/kaniko/.docker"
#: Kaniko's documented default context directory; ConfigMap contexts are mounted here.
WORKSPACE_DIR = "/workspace"
TERMINATION_LOG = "/dev/termination-log"
#: Where the Kaniko image keeps its CA certificates (upstream's deploy/Dockerfile sets
#: SSL_CERT_DIR to it), and where the operator's extra CA bundle is mounted beside them.
KANIKO_CERT_DIR = "/kaniko/ssl/certs"
EXTRA_CA_DIR = "/kaniko/ssl/extra-certs"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "stagewright"
LABEL_IMAGEBUILD = f"{GROUP}/imagebuild"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_ATTEMPT = f"{GROUP}/attempt"
ANNOTATION_TARGET = f"{GROUP}/target"

#: Kaniko runs as root inside its container to unpack base images and run RUN steps; these
#: are the capabilities that needs (the runtime's defaults minus network and device ones).
KANIKO_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]

_MAX_NAME = 63


def build_key(generation: int, rebuild: str | None) -> str:
    """Identify one requested build: a spec generation plus the rebuild annotation's value."""
    if not rebuild:
        return str(generation)
    return f"{generation}-{hashlib.sha256(rebuild.encode()).hexdigest()[:6]}"


def pod_name(build_name: str, key: str, attempt: int) -> str:
    """Deterministic per build and attempt, so a retried create finds its own pod (409)."""
    return f"{_bounded(build_name, _MAX_NAME - len(key) - len(str(attempt)) - 2)}-{key}-{attempt}"


def imagebuild_label(name: str) -> str:
    """The ``stagewright.dev/imagebuild`` label value of an ImageBuild's pods (max. 63)."""
    return _bounded(name, _MAX_NAME)


def _bounded(name: str, limit: int) -> str:
    """``name`` if it fits, else a prefix plus a hash of the whole, so long names stay unique."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[: limit - 7].rstrip('-.')}-{digest}"


def staging_tag(build_name: str) -> str:
    """The one tag Kaniko pushes to when ``output.maxSize`` is set: never an output tag.

    The operator tags the image with ``output.tags`` only once it is within budget, so an
    image over budget is never reachable under them (see docs/insight.md).
    """
    return f"stagewright-staging-{_bounded(build_name, 100)}"


def kaniko_context(spec: ImageBuildSpec) -> str:
    """The ``--context`` value for the source kind."""
    source = spec.source
    if source.config_map is not None:
        return f"dir://{WORKSPACE_DIR}"
    if source.git is not None:
        # Kaniko takes git contexts as git://host/path[#ref-or-commit] and clones with the
        # scheme from GIT_PULL_METHOD; plain branch and tag names go through --git=branch=.
        location = source.git.url.split("://", 1)[1]
        revision = source.git.revision
        if revision is not None and (_is_commit(revision) or revision.startswith("refs/")):
            return f"git://{location}#{revision}"
        return f"git://{location}"
    assert source.url is not None  # the model guarantees exactly one source
    return source.url


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def kaniko_args(spec: ImageBuildSpec, staging: str | None = None) -> list[str]:
    """Kaniko executor flags, one list item per flag, in a stable order.

    ``staging``: push only to this tag (a size budget), not to ``output.tags``.
    """
    args = [f"--context={kaniko_context(spec)}"]
    git = spec.source.git
    if git is not None and git.revision and not (
        _is_commit(git.revision) or git.revision.startswith("refs/")
    ):
        args.append(f"--git=branch={git.revision}")
    if spec.source.context_dir:
        args.append(f"--context-sub-path={spec.source.context_dir}")
    args.append(f"--dockerfile={spec.dockerfile}")
    if spec.target:
        args.append(f"--target={spec.target}")
    tags = [staging] if staging else spec.output.tags
    args += [f"--destination={spec.output.image}:{tag}" for tag in tags]
    args += [f"--build-arg={name}={value}" for name, value in sorted(spec.build_args.items())]
    args += [f"--label={name}={value}" for name, value in sorted(spec.output.labels.items())]
    if spec.cache.enabled:
        args += ["--cache=true", f"--cache-repo={spec.cache_repo}", f"--cache-ttl={spec.cache.ttl}"]
    else:
        args.append("--cache=false")
    if spec.output.insecure:
        # Per-registry flags: plain HTTP or self-signed for this registry only (push, cache,
        # base images), nothing else weakened.
        host = spec.output.registry
        args += [f"--insecure-registry={host}", f"--skip-tls-verify-registry={host}"]
    # Unused stages are skipped by default in the pinned executor (v1.28.3), where
    # --skip-unused-stages only prints a deprecation warning: it is not passed.
    args += [
        # Kaniko writes this before it pushes: trusted only after exit code 0.
        f"--digest-file={TERMINATION_LOG}",
        "--push-retry=2",
        "--verbosity=info",
    ]
    return args


def context_files(source: ConfigMapSource, keys: Iterable[str]) -> list[ContextFile]:
    """The files of a ConfigMap context: ``source.items``, else every key at the root.

    ``keys`` are the ConfigMap's data and binaryData keys, as read from the cluster; items
    naming a key it lacks are reported by :func:`missing_context_keys`, not here.
    """
    if source.items is not None:
        return list(source.items)
    return [ContextFile(key=key, path=key) for key in sorted(set(keys))]


def missing_context_keys(source: ConfigMapSource, keys: Iterable[str]) -> list[str]:
    """Keys ``source.items`` names that the ConfigMap does not have."""
    present = set(keys)
    return sorted({item.key for item in source.items or [] if item.key not in present})


def _volumes(spec: ImageBuildSpec, files: Sequence[ContextFile],
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if spec.source.config_map is not None:
        # The kubelet projects ConfigMap keys as symlinks into a hidden ..data directory, and
        # Kaniko's COPY copies a symlink as a symlink, not its content. A subPath mount is a
        # bind mount of the resolved file: each key arrives as a regular file, at any path,
        # with no ..data entries in the context. The emptyDir holds those mount points.
        volumes += [
            {"name": "context-files", "configMap": {"name": spec.source.config_map.name}},
            {"name": "context", "emptyDir": {}},
        ]
        mounts.append({"name": "context", "mountPath": WORKSPACE_DIR})
        mounts += [
            {"name": "context-files", "mountPath": f"{WORKSPACE_DIR}/{file.path.strip('/')}",
             "subPath": file.key, "readOnly": True}
            for file in files
        ]
    if spec.output.push_secret_ref is not None:
        volumes.append({
            "name": "docker-config",
            "secret": {
                "secretName": spec.output.push_secret_ref.name,
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
            },
        })
        mounts.append({"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True})
    return volumes, mounts


def _ca_bundle(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                            list[dict[str, Any]]]:
    """Volume, mount and env that add the CA bundle to Kaniko's trust.

    Go reads every PEM file in each directory of a colon-separated SSL_CERT_DIR, so listing
    the bundle's directory after the image's own adds to the default trust for every
    registry (push, cache and base images) instead of replacing it.
    """
    if not settings.ca_bundle_configmap:
        return [], [], []
    volume = {"name": "ca-bundle", "configMap": {
        "name": settings.ca_bundle_configmap,
        "items": [{"key": settings.ca_bundle_key, "path": "ca-bundle.crt"}]}}
    mount = {"name": "ca-bundle", "mountPath": EXTRA_CA_DIR, "readOnly": True}
    env = {"name": "SSL_CERT_DIR", "value": f"{KANIKO_CERT_DIR}:{EXTRA_CA_DIR}"}
    return [volume], [mount], [env]


def _env(spec: ImageBuildSpec) -> list[dict[str, Any]]:
    git = spec.source.git
    if git is None:
        return []
    env: list[dict[str, Any]] = []
    if git.url.startswith("http://"):
        env.append({"name": "GIT_PULL_METHOD", "value": "http"})
    if git.secret_ref is not None:
        # Kaniko reads GIT_USERNAME/GIT_PASSWORD for clones; a basic-auth Secret has both.
        env += [
            {
                "name": env_name,
                "valueFrom": {"secretKeyRef": {"name": git.secret_ref.name, "key": key}},
            }
            for env_name, key in (("GIT_USERNAME", "username"), ("GIT_PASSWORD", "password"))
        ]
    return env


def deadline_seconds(spec: ImageBuildSpec, settings: Settings) -> int:
    """The build's deadline in whole seconds (the spec's timeout, else the operator's)."""
    timeout = parse_duration(spec.timeout or settings.default_timeout)
    return max(1, math.ceil(timeout.total_seconds()))


def build_pod(build: ImageBuild, settings: Settings, *, key: str, attempt: int,
              files: Sequence[ContextFile] = ()) -> dict[str, Any]:
    """The Kaniko Pod for one attempt of one build of ``build``.

    ``files`` are the ConfigMap context's files (:func:`context_files`), unused for other
    sources.
    """
    spec = build.spec
    volumes, mounts = _volumes(spec, files)
    ca_volumes, ca_mounts, ca_env = _ca_bundle(settings)
    volumes, mounts = volumes + ca_volumes, mounts + ca_mounts
    resources = spec.resources or settings.default_resources
    labels = {
        "app.kubernetes.io/name": "stagewright-build",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_IMAGEBUILD: imagebuild_label(build.name),
        LABEL_GENERATION: str(build.generation),
        LABEL_ATTEMPT: str(attempt),
    }
    annotations = {ANNOTATION_TARGET: spec.target or "(last stage)"}
    if build.rebuild_token:
        annotations[REBUILD_ANNOTATION] = build.rebuild_token
    if spec.checks:
        annotations[CHECKS_ANNOTATION] = ",".join(spec.checks)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.kaniko_image,
        "args": kaniko_args(spec, staging_tag(build.name) if spec.output.max_size else None),
        "env": _env(spec) + ca_env,
        "volumeMounts": mounts,
        "resources": resources.model_dump(mode="json", exclude_defaults=False),
        "terminationMessagePath": TERMINATION_LOG,
        # On failure the log tail becomes the termination message: the reason users read.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "privileged": False,
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"drop": ["ALL"], "add": KANIKO_CAPABILITIES},
        },
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": deadline_seconds(spec, settings),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if spec.checks:
        pod_spec["initContainers"] = check_containers(container, spec)
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    metadata: dict[str, Any] = {
        "name": pod_name(build.name, key, attempt),
        "namespace": build.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if build.uid:
        metadata["ownerReferences"] = [{
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": build.name,
            "uid": build.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}
