"""The Buildah container of a build pod: pure, no I/O, so every argument is unit-tested.

Buildah needs more than one command (build, then one push per tag), and they must share one
image store and end in one exit code and one termination message (what status reads), so the
one container runs :data:`BUILD_SCRIPT`, a constant, as ``sh -c BUILD_SCRIPT sh ARG...``,
with the arguments still a list. The script reads user input only as ``"$@"`` and quoted
variables, never as code: a build argument, label or tag with shell metacharacters stays one
argument. The only value it writes into a file is the output registry's host, which the API
already restricts to ``host[:port]`` characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stagewright.api.v1alpha1 import ContextFile, ImageBuildSpec
from stagewright.resources.pod_common import (
    TERMINATION_LOG,
    WORKSPACE_DIR,
    BuilderParts,
    build_container,
    ca_bundle_volume,
    context_volumes,
    push_secret_volume,
)
from stagewright.settings import Settings

#: Where the push Secret's ``config.json`` is mounted; REGISTRY_AUTH_FILE points buildah there
#: for every registry access: base image pulls, the layer cache and the pushes.
AUTH_DIR = "/var/run/stagewright/registry-auth"
#: Where the operator's extra CA bundle is mounted; SSL_CERT_DIR adds it to the trust.
EXTRA_CA_DIR = "/var/run/stagewright/extra-certs"
#: Go's own certificate directories on Linux, kept in SSL_CERT_DIR so that setting it adds
#: the bundle instead of replacing them (Go still reads its default bundle file as well).
SYSTEM_CERT_DIRS = ("/etc/ssl/certs", "/etc/pki/tls/certs")
#: Buildah's image store: an emptyDir, so layers land on the node's ephemeral storage (counted
#: against the pod's limit) instead of the container's overlay root.
STORAGE_DIR = "/var/lib/containers"
#: Env var through which the script learns the registry to treat as insecure.
INSECURE_REGISTRY_ENV = "STAGEWRIGHT_INSECURE_REGISTRY"
#: The registries.conf drop-in that marks that registry insecure (read after the image's own).
INSECURE_DROP_IN = "/etc/containers/registries.conf.d/zz-stagewright-insecure.conf"
#: Where each push leaves its digest before the script copies the first to the termination log.
DIGEST_FILE = "/tmp/stagewright-digest"  # noqa: S108 (the container's own /tmp)

#: Runs ``buildah build "$@"``, then pushes every ``--tag=IMAGE:TAG`` among its arguments and
#: writes the digest to the termination log only once every push has succeeded (a digest
#: there means "pushed", unlike Kaniko's digest file, which is written before the push).
#: Every user value is passed as one ``--flag=value`` argument, so the only arguments that
#: start with ``--tag=`` are the destinations. ``output.insecure`` becomes a registries.conf
#: drop-in that names only the output registry (plain HTTP or unverified TLS there, for pulls,
#: the cache and pushes), not ``--tls-verify=false``, which would weaken every registry.
BUILD_SCRIPT = f"""\
set -eu
if [ -n "${{{INSECURE_REGISTRY_ENV}:-}}" ]; then
  mkdir -p "$(dirname {INSECURE_DROP_IN})"
  printf '[[registry]]\\nlocation = "%s"\\ninsecure = true\\n' "${INSECURE_REGISTRY_ENV}" \\
    > {INSECURE_DROP_IN}
fi
buildah build "$@"
digest=
for arg do
  case $arg in
    --tag=*)
      destination=${{arg#--tag=}}
      buildah push --digestfile={DIGEST_FILE} "$destination" "docker://$destination" \\
        || {{ echo "error pushing image $destination" >&2; exit 1; }}
      [ -n "$digest" ] || digest=$(cat {DIGEST_FILE})
      ;;
  esac
done
printf '%s' "$digest" > {TERMINATION_LOG}
"""

#: The capabilities a Buildah build needs, measured by dropping each in turn (docs/install.md
#: has the table). Every RUN step gets buildah's default set minus :data:`RUN_CAPS_DROPPED`,
#: and a process cannot hand out what it lacks, so those come first: CHOWN, DAC_OVERRIDE,
#: FOWNER, FSETID, KILL, SETFCAP, SETGID, SETUID and SYS_CHROOT (which also unpacks layers,
#: in a chroot). SYS_ADMIN is for the mount namespace and bind mounts of ``--isolation chroot``;
#: without it buildah tries a user namespace, which RuntimeDefault seccomp forbids. The
#: runtime's RuntimeDefault profile opens mount/unshare only because SYS_ADMIN is granted.
BUILDAH_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETFCAP", "SETGID", "SETUID",
    "SYS_CHROOT", "SYS_ADMIN",
)
#: Capabilities of buildah's default RUN set that the pod does not get, so RUN steps do not
#: ask for them (binding ports below 1024, changing capability sets); Kaniko's RUN steps
#: lack them too.
RUN_CAPS_DROPPED = ("NET_BIND_SERVICE", "SETPCAP")
#: AppArmor's runtime default profile denies mount(2), which chroot isolation needs; on nodes
#: without AppArmor the kubelet accepts (and ignores) ``unconfined``.
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/buildah"


def buildah_context(spec: ImageBuildSpec) -> str:
    """The build context argument: a directory, an https archive, or ``repo.git#ref:subdir``."""
    source = spec.source
    if source.config_map is not None:
        return _in_workspace(source.context_dir)
    if source.git is not None:
        fragment = f"{source.git.revision or ''}:{source.context_dir}" if source.context_dir \
            else source.git.revision or ""
        return f"{source.git.url}#{fragment}" if fragment else source.git.url
    assert source.url is not None  # the model guarantees exactly one source
    return source.url


def _in_workspace(path: str | None) -> str:
    return f"{WORKSPACE_DIR}/{path.strip('/')}" if path else WORKSPACE_DIR


def buildah_args(spec: ImageBuildSpec) -> list[str]:
    """``buildah build`` arguments, one list item per flag, the context last.

    ``--isolation chroot`` runs RUN steps without an OCI runtime inside the pod (no nested
    cgroups or namespaces but a mount namespace); ``--format docker`` keeps the manifests
    Kaniko pushes and the HEALTHCHECK/SHELL instructions the OCI format drops.
    """
    source = spec.source
    dockerfile = (f"{_in_workspace(source.context_dir)}/{spec.dockerfile}"
                  if source.config_map is not None else spec.dockerfile)
    args = ["--isolation=chroot", "--format=docker",
            *[f"--cap-drop={cap}" for cap in RUN_CAPS_DROPPED], f"--file={dockerfile}"]
    if spec.target:
        args.append(f"--target={spec.target}")
    args += [f"--build-arg={name}={value}" for name, value in sorted(spec.build_args.items())]
    args += [f"--label={name}={value}" for name, value in sorted(spec.output.labels.items())]
    if spec.cache.enabled:
        args += ["--layers", f"--cache-from={spec.cache_repo}", f"--cache-to={spec.cache_repo}",
                 f"--cache-ttl={spec.cache.ttl}"]
    else:
        args.append("--layers=false")
    args += [f"--tag={spec.output.image}:{tag}" for tag in spec.output.tags]
    args.append(buildah_context(spec))
    return args


def _env(spec: ImageBuildSpec, *, ca_bundle: bool) -> list[dict[str, Any]]:
    # vfs needs no mounts and works on any node filesystem, overlay included.
    env: list[dict[str, Any]] = [{"name": "STORAGE_DRIVER", "value": "vfs"}]
    if spec.output.push_secret_ref is not None:
        env.append({"name": "REGISTRY_AUTH_FILE", "value": f"{AUTH_DIR}/config.json"})
    if spec.output.insecure:
        env.append({"name": INSECURE_REGISTRY_ENV, "value": spec.output.registry})
    if ca_bundle:
        env.append({"name": "SSL_CERT_DIR", "value": ":".join((*SYSTEM_CERT_DIRS, EXTRA_CA_DIR))})
    return env


def buildah_container(spec: ImageBuildSpec, settings: Settings,
                      files: Sequence[ContextFile], staging: str | None = None) -> BuilderParts:
    """The Buildah container, the volumes it mounts and the AppArmor exception it needs.

    ``files`` are the ConfigMap context's files, unused for other sources. ``staging`` (a
    size budget) is refused for Buildah by the API models, so it is always None here.
    """
    assert staging is None, "output.maxSize is validated away for the buildah builder"
    volumes, mounts = context_volumes(spec, files)
    volumes.append({"name": "containers-storage", "emptyDir": {}})
    mounts.append({"name": "containers-storage", "mountPath": STORAGE_DIR})
    secret = push_secret_volume(spec)
    if secret is not None:
        volumes.append(secret)
        mounts.append({"name": secret["name"], "mountPath": AUTH_DIR, "readOnly": True})
    ca_volume = ca_bundle_volume(settings)
    if ca_volume is not None:
        volumes.append(ca_volume)
        mounts.append({"name": ca_volume["name"], "mountPath": EXTRA_CA_DIR, "readOnly": True})
    container = build_container(
        spec, settings, image=settings.buildah_image, command=["sh", "-c", BUILD_SCRIPT, "sh"],
        args=buildah_args(spec), env=_env(spec, ca_bundle=ca_volume is not None), mounts=mounts,
        security={"capabilities": {"drop": ["ALL"], "add": list(BUILDAH_CAPABILITIES)}},
    )
    return BuilderParts(container, volumes, {APPARMOR_ANNOTATION: "unconfined"})
