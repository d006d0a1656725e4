"""Parse a Kaniko executor's command line into the build it asks for (pure, no I/O).

The sandbox kubelet runs each build pod's build with buildah because Kaniko cannot run on
this machine. To stand in for Kaniko honestly it must build exactly what the pod asks for:
so every flag is either honoured, ignored because it cannot change the pushed image (logging,
Kaniko's own scratch paths), or rejected with a message saying what the sandbox cannot do.
Unknown flags are rejected too, as Kaniko itself rejects them ("unknown flag").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

#: Prefix of every message the sandbox (not Kaniko) writes, so a reader knows who spoke.
SANDBOX = "sandbox kubelet"

#: Kaniko's default cache TTL (two weeks), used when ``--cache-ttl`` is absent.
DEFAULT_CACHE_TTL = "336h"

_GO_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")
#: A registry host with an optional port: what registries.conf accepts as a location.
_HOST = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?|\[[0-9a-fA-F:]+\](:[0-9]{1,5})?"
)
#: An image reference: [host[:port]/]path[:tag][@digest] (the shape, not every rule).
_REFERENCE = re.compile(
    r"([A-Za-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_PLATFORM = "linux/amd64"

#: Flags whose values the sandbox uses.
_VALUE_FLAGS = frozenset({
    "context", "context-sub-path", "dockerfile", "target", "destination", "build-arg",
    "label", "cache-repo", "cache-ttl", "digest-file", "insecure-registry",
    "skip-tls-verify-registry", "push-retry", "custom-platform",
})
#: Boolean flags the sandbox honours (``--flag``, ``--flag=true`` or ``--flag=false``).
_BOOL_FLAGS = frozenset({
    "cache", "no-push", "no-push-cache", "skip-unused-stages", "insecure", "skip-tls-verify",
    "insecure-pull", "skip-tls-verify-pull", "reproducible",
})
#: Flags that steer Kaniko's logging, retries or scratch space but not the image it pushes.
_IGNORED_FLAGS = frozenset({
    "verbosity", "log-format", "log-timestamp", "cache-dir", "kaniko-dir", "cleanup",
    "image-fs-extract-retry", "image-download-retry", "ignore-path", "ignore-var-run",
    "use-new-run", "snapshot-mode", "snapshotMode", "cache-copy-layers", "cache-run-layers",
    "compressed-caching", "skip-push-permission-check", "push-ignore-immutable-tag-errors",
    "force", "preserve-context", "image-name-with-digest-file",
    "image-name-tag-with-digest-file", "skip-default-registry-fallback",
})
#: Real Kaniko flags the sandbox cannot honour, and why.
_UNSUPPORTED_FLAGS = {
    "tar-path": "it writes a tarball inside the pod instead of pushing",
    "oci-layout-path": "it writes an OCI layout inside the pod",
    "registry-mirror": "base images come only from the registries the build names",
    "registry-map": "base images come only from the registries the build names",
    "registry-certificate": "custom CAs are not wired into buildah here",
    "registry-client-cert": "client certificates are not wired into buildah here",
    "single-snapshot": "buildah commits one layer per step",
    "git": "only ConfigMap contexts can be built here",
    "compression": "the sandbox pushes gzip layers only",
    "compression-level": "the sandbox pushes gzip layers only",
}


class UnsupportedBuildError(ValueError):
    """The pod asks for a build the sandbox cannot run (or Kaniko would refuse).

    The kubelet turns it into what Kaniko does with a bad command line: the container exits 1
    and the message is its log, hence its termination message.
    """


@dataclass(frozen=True)
class CacheSettings:
    """Kaniko's registry layer cache: where cached layers live and how long they count."""

    repo: str
    ttl: str = DEFAULT_CACHE_TTL
    #: False with ``--no-push-cache``: use the cache but add nothing to it.
    push: bool = True


@dataclass(frozen=True)
class KanikoBuild:
    """One Kaniko build as its command line describes it, with container paths kept as-is."""

    #: The ``dir://`` context, a path inside the build container (e.g. ``/workspace``).
    context: PurePosixPath
    destinations: tuple[str, ...]
    dockerfile: str = "Dockerfile"
    context_sub_path: str | None = None
    target: str | None = None
    build_args: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    cache: CacheSettings | None = None
    #: Registries reached over plain HTTP or with an unverified certificate (push, cache, pull).
    insecure_registries: frozenset[str] = frozenset()
    #: ``--insecure-pull``/``--skip-tls-verify-pull``: any registry, for pulls.
    insecure_pull: bool = False
    digest_file: str | None = None
    push: bool = True
    push_retry: int = 0
    reproducible: bool = False
    skip_unused_stages: bool = False
    #: Flags accepted without effect, reported in the build log.
    ignored_flags: tuple[str, ...] = field(default=(), compare=False)

    @property
    def context_dir(self) -> PurePosixPath:
        """The directory buildah builds in: the context plus ``--context-sub-path``."""
        if self.context_sub_path is None:
            return self.context
        return self.context / self.context_sub_path

    @property
    def dockerfile_in_context(self) -> PurePosixPath:
        """The Dockerfile relative to :attr:`context_dir` (parsing ensured it lies inside)."""
        path = PurePosixPath(self.dockerfile)
        if path.is_absolute():
            return path.relative_to(self.context_dir)
        return path


def parse_kaniko_args(args: Sequence[str]) -> KanikoBuild:
    """Parse Kaniko ``--flag=value`` arguments; raise :class:`UnsupportedBuildError` on any problem.

    All problems are reported at once, so one failed pod shows everything to fix.
    """
    errors: list[str] = []
    values: dict[str, list[str]] = {}
    flags: dict[str, bool] = {}
    ignored: list[str] = []
    for arg in args:
        _sort_arg(arg, values, flags, ignored, errors)

    def one(name: str) -> str | None:
        given = values.get(name, [])
        if len(given) > 1:
            errors.append(f"--{name} given {len(given)} times")
        return given[-1] if given else None

    context = _parse_context(one("context"), errors)
    sub_path = one("context-sub-path")
    dockerfile = one("dockerfile") or "Dockerfile"
    _check_paths(context, sub_path, dockerfile, errors)
    destinations = tuple(values.get("destination", []))
    no_push = flags.get("no-push", False)
    _check_destinations(destinations, no_push, errors)
    build_args = _pairs("build-arg", values.get("build-arg", []), errors, names=True)
    labels = _pairs("label", values.get("label", []), errors, names=False)
    cache = _parse_cache(flags, one("cache-repo"), one("cache-ttl"), destinations, errors)
    insecure = _insecure_hosts(values, flags, destinations, cache, errors)
    push_retry = _parse_count("push-retry", one("push-retry"), errors)
    target = one("target")
    digest_file = one("digest-file")
    platform = one("custom-platform")
    if platform is not None and platform != _HOST_PLATFORM:
        errors.append(f"--custom-platform={platform}: only {_HOST_PLATFORM} builds run here")
    if errors:
        raise UnsupportedBuildError(f"{SANDBOX}: " + "; ".join(errors))
    return KanikoBuild(
        context=context,
        context_sub_path=sub_path,
        dockerfile=dockerfile,
        target=target,
        destinations=destinations,
        build_args=build_args,
        labels=labels,
        cache=cache,
        insecure_registries=insecure,
        insecure_pull=flags.get("insecure-pull", False) or flags.get("skip-tls-verify-pull", False),
        digest_file=digest_file,
        push=not no_push,
        push_retry=push_retry,
        reproducible=flags.get("reproducible", False),
        skip_unused_stages=flags.get("skip-unused-stages", False),
        ignored_flags=tuple(ignored),
    )


def registry_host(reference: str) -> str:
    """The registry host of an image reference, defaulting to Docker Hub as Kaniko does."""
    first, sep, _ = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "index.docker.io"


def repository(reference: str) -> str:
    """The repository of a reference: no tag, no digest."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _sort_arg(
    arg: str,
    values: dict[str, list[str]],
    flags: dict[str, bool],
    ignored: list[str],
    errors: list[str],
) -> None:
    """File one argument under values, flags or ignored, or record why it cannot be used."""
    if not arg.startswith("--"):
        errors.append(f"unexpected argument {arg!r} (the pod contract is --flag=value)")
        return
    name, eq, value = arg[2:].partition("=")
    if " " in name and name.split()[0] in _VALUE_FLAGS | _BOOL_FLAGS:
        errors.append(f"{arg!r}: write --{name.split()[0]}=VALUE as one argument")
    elif name in _VALUE_FLAGS:
        if not eq:
            errors.append(f"--{name} needs a value (--{name}=VALUE)")
        else:
            values.setdefault(name, []).append(value)
    elif name in _BOOL_FLAGS:
        if eq and value.lower() not in {"true", "false"}:
            errors.append(f"--{name}={value} is not a boolean")
        else:
            flags[name] = not eq or value.lower() == "true"
    elif name in _IGNORED_FLAGS:
        ignored.append(arg)
    elif name in _UNSUPPORTED_FLAGS:
        errors.append(f"--{name} cannot be honoured: {_UNSUPPORTED_FLAGS[name]}")
    else:
        errors.append(f"unknown flag: --{name}")


def _parse_context(value: str | None, errors: list[str]) -> PurePosixPath:
    """Accept ``dir://PATH`` (or a bare absolute path, as Kaniko does); refuse remote contexts."""
    if value is None:
        errors.append("no --context given")
        return PurePosixPath("/workspace")
    if value.startswith("dir://"):
        path = value.removeprefix("dir://")
    elif "://" in value:
        errors.append(f"only ConfigMap contexts can be built here (got {value})")
        return PurePosixPath("/workspace")
    else:
        path = value
    if not path.startswith("/"):
        errors.append(f"--context={value} must be an absolute dir:// path")
        return PurePosixPath("/workspace")
    return PurePosixPath(path)


def _check_paths(
    context: PurePosixPath, sub_path: str | None, dockerfile: str, errors: list[str]
) -> None:
    """The sub-path and the Dockerfile must stay inside the context, as in Kaniko."""
    if sub_path is not None and not _is_inside(sub_path):
        errors.append(f"--context-sub-path={sub_path} leaves the context")
    context_dir = context / sub_path if sub_path else context
    if not _dockerfile_inside(dockerfile, context_dir):
        errors.append(f"--dockerfile={dockerfile} is outside the build context {context_dir}")


def _check_destinations(destinations: Sequence[str], no_push: bool, errors: list[str]) -> None:
    for ref in destinations:
        if not _REFERENCE.fullmatch(ref):
            errors.append(f"--destination={ref} is not an image reference")
    if not destinations and not no_push:
        errors.append("no --destination given (and no --no-push)")


def _is_inside(relative: str) -> bool:
    path = PurePosixPath(relative)
    return not path.is_absolute() and ".." not in path.parts


def _dockerfile_inside(dockerfile: str, context_dir: PurePosixPath) -> bool:
    path = PurePosixPath(dockerfile)
    if path.is_absolute():
        return path.is_relative_to(context_dir) and ".." not in path.parts
    return _is_inside(dockerfile)


def _pairs(
    flag: str, raw: Iterable[str], errors: list[str], *, names: bool
) -> tuple[tuple[str, str], ...]:
    """Split ``K=V`` values; build-arg names must be valid ARG names."""
    pairs: list[tuple[str, str]] = []
    for item in raw:
        key, eq, value = item.partition("=")
        if not eq or not key:
            errors.append(f"--{flag}={item} must be KEY=VALUE")
        elif names and not _ARG_NAME.fullmatch(key):
            errors.append(f"--{flag}={item}: {key!r} is not a valid ARG name")
        else:
            pairs.append((key, value))
    return tuple(pairs)


def _parse_cache(
    flags: dict[str, bool],
    repo: str | None,
    ttl: str | None,
    destinations: Sequence[str],
    errors: list[str],
) -> CacheSettings | None:
    """``--cache=true`` turns the cache on; the repo defaults to ``<destination>/cache``."""
    if not flags.get("cache", False):
        return None
    if ttl is not None and not _GO_DURATION.fullmatch(ttl):
        errors.append(f"--cache-ttl={ttl} is not a Go duration such as 336h")
    if repo is None:
        if not destinations:
            errors.append("--cache=true needs --cache-repo or a --destination")
            return None
        repo = repository(destinations[0]) + "/cache"
    elif not _REFERENCE.fullmatch(repo) or repository(repo) != repo:
        errors.append(f"--cache-repo={repo} is not a repository (no tag, no digest)")
    return CacheSettings(
        repo=repo, ttl=ttl or DEFAULT_CACHE_TTL, push=not flags.get("no-push-cache", False)
    )


def _insecure_hosts(
    values: dict[str, list[str]],
    flags: dict[str, bool],
    destinations: Sequence[str],
    cache: CacheSettings | None,
    errors: list[str],
) -> frozenset[str]:
    """Per-registry flags name hosts; ``--insecure``/``--skip-tls-verify`` mean the push ones."""
    hosts = set(values.get("insecure-registry", []) + values.get("skip-tls-verify-registry", []))
    if flags.get("insecure", False) or flags.get("skip-tls-verify", False):
        hosts.update(registry_host(ref) for ref in destinations)
        if cache is not None:
            hosts.add(registry_host(cache.repo))
    for host in sorted(hosts):
        if not _HOST.fullmatch(host):
            errors.append(f"{host!r} is not a registry host[:port]")
    return frozenset(hosts)


def _parse_count(flag: str, value: str | None, errors: list[str]) -> int:
    if value is None:
        return 0
    if not value.isdigit():
        errors.append(f"--{flag}={value} is not a non-negative integer")
        return 0
    return int(value)
