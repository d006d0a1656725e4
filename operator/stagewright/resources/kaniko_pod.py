"""The Kaniko container of a build pod: pure, no I/O, so every flag is unit-tested.

Arguments are a list (never a shell string), so user input cannot become a command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stagewright.api.v1alpha1 import CHECKS_ANNOTATION, ContextFile, ImageBuildSpec
from stagewright.resources.checks import check_containers
from stagewright.resources.pod_common import (
    ANNOTATION_DOCKERFILE,
    TERMINATION_LOG,
    WORKSPACE_DIR,
    BuilderParts,
    build_container,
    ca_bundle_volume,
    context_volumes,
    is_commit,
    push_secret_volume,
)
from stagewright.settings import Settings

#: Where Kaniko looks for registry credentials; a different path is the classic failure.
DOCKER_CONFIG_DIR = "/kaniko/.docker"
#: Where the Kaniko image keeps its CA certificates (upstream's deploy/Dockerfile sets
#: SSL_CERT_DIR to it); the operator's extra CA bundle is mounted beside them.
KANIKO_CERT_DIR = "/kaniko/ssl/certs"
EXTRA_CA_DIR = "/kaniko/ssl/extra-certs"

#: Kaniko runs as root inside its container to unpack base images and run RUN steps; these
#: are the capabilities that needs (the runtime's defaults minus network and device ones).
KANIKO_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")


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
        if revision is not None and (is_commit(revision) or revision.startswith("refs/")):
            return f"git://{location}#{revision}"
        return f"git://{location}"
    assert source.url is not None  # the model guarantees exactly one source
    return source.url


def kaniko_args(spec: ImageBuildSpec, staging: str | None = None,
                custom_platform: str | None = None) -> list[str]:
    """Kaniko executor flags, one list item per flag, in a stable order.

    ``staging``: push only to this tag (a size budget), not to ``output.tags``.
    ``custom_platform``: build for this platform (one platform of ``spec.platforms``):
    Kaniko picks each base image's entry for it, stamps it in the image config and sets the
    predefined ``TARGET*`` ARGs from it (and ``BUILD*`` from the node it runs on), so no
    ``--build-arg`` is passed for them.
    """
    args = [f"--context={kaniko_context(spec)}"]
    git = spec.source.git
    if git is not None and git.revision and not (
        is_commit(git.revision) or git.revision.startswith("refs/")
    ):
        args.append(f"--git=branch={git.revision}")
    if spec.source.context_dir:
        args.append(f"--context-sub-path={spec.source.context_dir}")
    args.append(f"--dockerfile={spec.dockerfile}")
    if spec.target:
        args.append(f"--target={spec.target}")
    if custom_platform:
        args.append(f"--custom-platform={custom_platform}")
    tags = [staging] if staging else spec.output.tags
    args += [f"--destination={spec.output.image}:{tag}" for tag in tags]
    args += [f"--build-arg={name}={value}" for name, value in sorted(spec.build_args.items())]
    args += [f"--label={name}={value}" for name, value in sorted(spec.output.labels.items())]
    if spec.cache.enabled:
        args += ["--cache=true", f"--cache-repo={spec.cache_repo}", f"--cache-ttl={spec.cache.ttl}"]
    else:
        args.append("--cache=false")
    if spec.output.reproducible:
        # No build times in the image: the same inputs give the same digest.
        args.append("--reproducible")
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


def kaniko_container(spec: ImageBuildSpec, settings: Settings,
                     files: Sequence[ContextFile], staging: str | None = None, *,
                     custom_platform: str | None = None,
                     pinned_dockerfile: str | None = None) -> BuilderParts:
    """The Kaniko container, its check stages (init containers) and the volumes they mount.

    ``files`` are the ConfigMap context's files, unused for other sources.
    ``custom_platform``: the platform to build (see :func:`kaniko_args`).
    ``pinned_dockerfile``: a ConfigMap context's Dockerfile to build instead of the
    ConfigMap's (a cross build's, its build-platform FROMs pinned by digest), carried in
    the pod's own annotation.
    """
    volumes, mounts = context_volumes(spec, files, pinned_dockerfile=pinned_dockerfile is not None)
    annotations = ({ANNOTATION_DOCKERFILE: pinned_dockerfile}
                   if pinned_dockerfile is not None else {})
    secret = push_secret_volume(spec)
    if secret is not None:
        volumes.append(secret)
        mounts.append({"name": secret["name"], "mountPath": DOCKER_CONFIG_DIR, "readOnly": True})
    env = _env(spec)
    ca_volume = ca_bundle_volume(settings)
    if ca_volume is not None:
        # Go reads every PEM file in each directory of a colon-separated SSL_CERT_DIR: the
        # bundle's directory after the image's own adds to the default trust of every
        # registry (push, cache, base images) instead of replacing it.
        volumes.append(ca_volume)
        mounts.append({"name": ca_volume["name"], "mountPath": EXTRA_CA_DIR, "readOnly": True})
        env.append({"name": "SSL_CERT_DIR", "value": f"{KANIKO_CERT_DIR}:{EXTRA_CA_DIR}"})
    container = build_container(
        spec, settings, image=settings.kaniko_image,
        args=kaniko_args(spec, staging, custom_platform), env=env, mounts=mounts,
        security={"capabilities": {"drop": ["ALL"], "add": list(KANIKO_CAPABILITIES)}},
    )
    if not spec.checks:
        return BuilderParts(container, volumes, annotations=annotations)
    return BuilderParts(container, volumes,
                        annotations={CHECKS_ANNOTATION: ",".join(spec.checks), **annotations},
                        init_containers=check_containers(container, spec))
