"""The sandbox's reading of a Kaniko command line, and the buildah command it becomes.

The sandbox stands in for Kaniko, so a flag it misreads would make cluster tests pass on a
build Kaniko would have done differently: each honoured flag is checked here, and each one
the sandbox cannot honour must fail with a message naming it.
"""

from __future__ import annotations

import itertools
from pathlib import Path, PurePosixPath

import pytest

from sandbox.buildah import bud_argv, registries_conf
from sandbox.kaniko_args import (
    CacheSettings,
    KanikoBuild,
    UnsupportedBuildError,
    parse_kaniko_args,
    registry_host,
    repository,
)

REGISTRY = "registry.example.com:5000"

#: What the operator's pod builder writes (DESIGN.md, "The Kaniko pod").
CONTRACT_ARGS = [
    "--context=dir:///workspace",
    "--context-sub-path=app",
    "--dockerfile=build/Dockerfile",
    "--target=runtime",
    f"--destination={REGISTRY}/acme/web:latest",
    f"--destination={REGISTRY}/acme/web:v1.2.3",
    "--build-arg=JAVA_VERSION=21",
    "--build-arg=OPTS=a=b c",
    "--label=org.opencontainers.image.source=https://github.com/acme/web",
    "--cache=true",
    f"--cache-repo={REGISTRY}/acme/web/cache",
    "--cache-ttl=72h",
    "--skip-unused-stages",
    "--digest-file=/dev/termination-log",
    f"--insecure-registry={REGISTRY}",
    f"--skip-tls-verify-registry={REGISTRY}",
    "--push-retry=2",
    "--verbosity=info",
]


def test_parses_every_flag_of_the_pod_contract() -> None:
    build = parse_kaniko_args(CONTRACT_ARGS)
    assert build == KanikoBuild(
        context=PurePosixPath("/workspace"),
        context_sub_path="app",
        dockerfile="build/Dockerfile",
        target="runtime",
        destinations=(f"{REGISTRY}/acme/web:latest", f"{REGISTRY}/acme/web:v1.2.3"),
        build_args=(("JAVA_VERSION", "21"), ("OPTS", "a=b c")),
        labels=(("org.opencontainers.image.source", "https://github.com/acme/web"),),
        cache=CacheSettings(repo=f"{REGISTRY}/acme/web/cache", ttl="72h"),
        insecure_registries=frozenset({REGISTRY}),
        digest_file="/dev/termination-log",
        push_retry=2,
        skip_unused_stages=True,
    )
    assert build.ignored_flags == ("--verbosity=info",)
    assert build.context_dir == PurePosixPath("/workspace/app")
    assert build.dockerfile_in_context == PurePosixPath("build/Dockerfile")


def test_defaults_follow_kaniko() -> None:
    build = parse_kaniko_args(
        ["--context=dir:///workspace", f"--destination={REGISTRY}/acme/web:1", "--cache"]
    )
    assert build.dockerfile == "Dockerfile"
    assert build.target is None
    assert build.skip_unused_stages is False
    # Kaniko infers the cache repository from the first destination, with a 2-week TTL.
    assert build.cache == CacheSettings(repo=f"{REGISTRY}/acme/web/cache", ttl="336h")
    assert build.push is True


def test_cache_off_and_no_push_cache() -> None:
    base = ["--context=dir:///w", f"--destination={REGISTRY}/a:1"]
    assert parse_kaniko_args([*base, "--cache=false"]).cache is None
    cache = parse_kaniko_args([*base, "--cache=true", "--no-push-cache"]).cache
    assert cache is not None
    assert cache.push is False


def test_global_insecure_flags_cover_push_and_cache_registries() -> None:
    build = parse_kaniko_args([
        "--context=dir:///w", "--destination=one.example/a:1", "--destination=two.example/b:1",
        "--cache=true", "--cache-repo=three.example:5000/cache", "--insecure",
    ])
    assert build.insecure_registries == {"one.example", "two.example", "three.example:5000"}
    assert build.insecure_pull is False
    assert parse_kaniko_args(["--context=dir:///w", "--no-push", "--skip-tls-verify-pull"]) \
        .insecure_pull is True


def test_absolute_dockerfile_inside_the_context() -> None:
    build = parse_kaniko_args([
        "--context=dir:///workspace", "--context-sub-path=app",
        "--dockerfile=/workspace/app/docker/Dockerfile", "--no-push",
    ])
    assert build.dockerfile_in_context == PurePosixPath("docker/Dockerfile")
    assert build.push is False


@pytest.mark.parametrize(
    "context",
    [
        "git://github.com/acme/web.git#refs/heads/main",
        "git://github.com/acme/web.git#refs/heads/main#0123abcd",
        "s3://bucket/context.tar.gz",
        "gs://bucket/context.tar.gz",
        "https://acme.blob.core.windows.net/ctx/context.tar.gz",
    ],
)
def test_remote_contexts_fail_like_a_build(context: str) -> None:
    with pytest.raises(UnsupportedBuildError) as error:
        parse_kaniko_args([f"--context={context}", f"--destination={REGISTRY}/a:1"])
    assert str(error.value) == (
        f"sandbox kubelet: only ConfigMap contexts can be built here (got {context})"
    )


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--target runtime", "'--target runtime': write --target=VALUE as one argument"),
        ("--target", "--target needs a value (--target=VALUE)"),
        ("runtime", "unexpected argument 'runtime'"),
        ("--frobnicate=1", "unknown flag: --frobnicate"),
        ("--tar-path=/out.tar", "--tar-path cannot be honoured"),
        ("--registry-mirror=mirror.gcr.io", "--registry-mirror cannot be honoured"),
        ("--single-snapshot", "--single-snapshot cannot be honoured"),
        ("--cache=yes", "--cache=yes is not a boolean"),
        ("--cache-ttl=2weeks", "--cache-ttl=2weeks is not a Go duration"),
        ("--build-arg=VERSION", "--build-arg=VERSION must be KEY=VALUE"),
        ("--build-arg=1X=2", "'1X' is not a valid ARG name"),
        ("--label==x", "--label==x must be KEY=VALUE"),
        ("--context-sub-path=../etc", "--context-sub-path=../etc leaves the context"),
        ("--dockerfile=../Dockerfile", "--dockerfile=../Dockerfile is outside the build context"),
        ("--dockerfile=/etc/Dockerfile", "--dockerfile=/etc/Dockerfile is outside"),
        ("--push-retry=-1", "--push-retry=-1 is not a non-negative integer"),
        ("--custom-platform=linux/arm64", "only linux/amd64 builds run here"),
        ("--insecure-registry=evil\nlocation", "is not a registry host[:port]"),
        ("--destination=Not A Ref", "--destination=Not A Ref is not an image reference"),
        ("--cache-repo=r.example/cache:tag", "is not a repository (no tag, no digest)"),
    ],
)
def test_rejects_what_cannot_be_honoured(arg: str, message: str) -> None:
    args = ["--context=dir:///workspace", f"--destination={REGISTRY}/a:1", "--cache=true", arg]
    with pytest.raises(UnsupportedBuildError) as error:
        parse_kaniko_args(args)
    assert str(error.value).startswith("sandbox kubelet: ")
    assert message in str(error.value)


def test_reports_every_problem_at_once() -> None:
    with pytest.raises(UnsupportedBuildError) as error:
        parse_kaniko_args(["--target=a", "--target=b", "--bogus"])
    text = str(error.value)
    for part in ("--target given 2 times", "unknown flag: --bogus", "no --context given",
                 "no --destination given"):
        assert part in text


def test_reference_helpers() -> None:
    assert registry_host("127.0.0.1:5000/a/b:1") == "127.0.0.1:5000"
    assert registry_host("localhost/a") == "localhost"
    assert registry_host("library/busybox") == "index.docker.io"
    assert repository("127.0.0.1:5000/a/b:1") == "127.0.0.1:5000/a/b"
    assert repository("127.0.0.1:5000/a/b@sha256:" + "0" * 64) == "127.0.0.1:5000/a/b"
    assert repository("127.0.0.1:5000/a/b") == "127.0.0.1:5000/a/b"


def test_buildah_command_matches_the_kaniko_flags() -> None:
    build = parse_kaniko_args([*CONTRACT_ARGS, "--reproducible"])
    argv = bud_argv(build, Path("/ctx/app"), Path("/ctx/app/build/Dockerfile"), Path("/a.json"))
    assert argv[0] == "bud"
    assert argv[-1] == "/ctx/app"
    pairs = list(itertools.pairwise(argv))
    for expected in [
        ("--isolation", "chroot"), ("--format", "docker"), ("--target", "runtime"),
        ("--file", "/ctx/app/build/Dockerfile"), ("--build-arg", "JAVA_VERSION=21"),
        ("--build-arg", "OPTS=a=b c"),
        ("--label", "org.opencontainers.image.source=https://github.com/acme/web"),
        ("--cache-from", f"{REGISTRY}/acme/web/cache"),
        ("--cache-to", f"{REGISTRY}/acme/web/cache"),
        ("--cache-ttl", "72h"), ("--timestamp", "0"), ("--authfile", "/a.json"),
    ]:
        assert expected in pairs
    assert "--layers" in argv
    assert "--skip-unused-stages=true" in argv
    assert "--tls-verify=false" not in argv


def test_buildah_command_without_cache_push() -> None:
    build = parse_kaniko_args(
        ["--context=dir:///w", f"--destination={REGISTRY}/a:1", "--cache", "--no-push-cache",
         "--insecure-pull"]
    )
    argv = bud_argv(build, Path("/w"), Path("/w/Dockerfile"), None)
    assert "--cache-from" in argv
    assert "--cache-to" not in argv
    assert "--tls-verify=false" in argv
    assert "--authfile" not in argv
    assert "--skip-unused-stages=false" in argv


def test_registries_conf_marks_insecure_hosts() -> None:
    text = registries_conf(["127.0.0.1:5000", "reg.example"])
    assert text.count("[[registry]]") == 2
    assert 'location = "127.0.0.1:5000"\ninsecure = true' in text
    assert 'unqualified-search-registries = ["docker.io"]' in text
