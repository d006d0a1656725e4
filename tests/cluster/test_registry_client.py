"""RegistryClient against a real CNCF distribution registry (Debian's docker-registry).

Each test pushes the exact bytes it then resolves, so digests are checked against the
registry's Docker-Content-Digest and sizes against what was uploaded.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.cluster import registry_fixtures
from tests.cluster.registry_fixtures import USER, AuthProxy, Pusher, docker_config, pusher_for

from sandbox.registry import LocalRegistry
from stagewright.registry import (
    ImageNotFound,
    ImageReference,
    InvalidManifest,
    RegistryAuthError,
    RegistryClient,
    RegistryTLSError,
    RegistryUnavailable,
)
from stagewright.registry.client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)

pytestmark = pytest.mark.cluster

# Shared fixtures: pytest finds fixtures among a test module's attributes.
registry = registry_fixtures.registry
auth_registry = registry_fixtures.auth_registry
tls_registry = registry_fixtures.tls_registry
silent_port = registry_fixtures.silent_port

TIMEOUT = 5.0


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient(timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
async def pusher(registry: LocalRegistry) -> AsyncIterator[Pusher]:
    p = pusher_for(registry)
    async with p.client:
        yield p


def ref(host: str, name: str) -> ImageReference:
    return ImageReference.parse(f"{host}/{name}")


async def test_docker_v2s2_image(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    pushed = await pusher.image("team/docker", "v1", docker=True, layers=3)
    info = await client.resolve(ref(registry.host, "team/docker:v1"), insecure=True)
    assert (info.digest, info.media_type, info.size, info.layers) == (
        pushed.digest, DOCKER_MANIFEST, pushed.size, 3
    )
    dumped = info.model_dump(mode="json", by_alias=True)
    assert dumped["platforms"] == []
    assert [layer["instruction"] for layer in dumped["layerDetails"]] == [None] * 3


async def test_oci_image_by_tag_and_by_digest(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    pushed = await pusher.image("oci", "v1", layers=2)
    by_tag = await client.resolve(ref(registry.host, "oci:v1"), insecure=True)
    assert (by_tag.digest, by_tag.media_type, by_tag.size, by_tag.layers) == (
        pushed.digest, OCI_MANIFEST, pushed.size, 2,
    )
    by_digest = await client.resolve(ref(registry.host, f"oci@{pushed.digest}"), insecure=True)
    assert by_digest == by_tag


async def test_oci_index_skips_attestations(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    amd64 = await pusher.image("multi", "amd64", layers=2, arch="amd64")
    arm64 = await pusher.image("multi", "arm64", layers=3, arch="arm64")
    attestation = await pusher.image("multi", "att", layers=1)
    index = await pusher.index("multi", "v1", [
        (amd64, {"os": "linux", "architecture": "amd64"}, {}),
        (arm64, {"os": "linux", "architecture": "arm64", "variant": "v8"}, {}),
        (attestation, {"os": "unknown", "architecture": "unknown"}, {
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": amd64.digest,
        }),
    ])
    info = await client.resolve(ref(registry.host, "multi:v1"), insecure=True)
    assert info.digest == index.digest
    assert info.media_type == OCI_INDEX
    assert [(p.platform, p.digest, p.size, p.layers) for p in info.platforms] == [
        ("linux/amd64", amd64.digest, amd64.size, 2),
        ("linux/arm64/v8", arm64.digest, arm64.size, 3),
    ]
    assert info.size == amd64.size + arm64.size
    assert info.layers == 5


async def test_docker_manifest_list(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    amd64 = await pusher.image("list", "amd64", docker=True, layers=1)
    arm = await pusher.image("list", "arm", docker=True, layers=2, arch="arm")
    listed = await pusher.index("list", "v1", [
        (amd64, {"os": "linux", "architecture": "amd64"}, {}),
        (arm, {"os": "linux", "architecture": "arm", "variant": "v7"}, {}),
    ], docker=True)
    info = await client.resolve(ref(registry.host, "list:v1"), insecure=True)
    assert (info.digest, info.media_type) == (listed.digest, DOCKER_MANIFEST_LIST)
    assert [p.platform for p in info.platforms] == ["linux/amd64", "linux/arm/v7"]
    assert [p.media_type for p in info.platforms] == [DOCKER_MANIFEST, DOCKER_MANIFEST]
    assert info.size == amd64.size + arm.size


async def test_not_found(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    await pusher.image("present", "v1")
    with pytest.raises(ImageNotFound, match=r"present:nope not found.*MANIFEST_UNKNOWN"):
        await client.resolve(ref(registry.host, "present:nope"), insecure=True)
    with pytest.raises(ImageNotFound, match="check the repository and tag"):
        await client.resolve(ref(registry.host, "absent/repo:v1"), insecure=True)


async def test_oversized_manifest(pusher: Pusher, registry: LocalRegistry) -> None:
    pushed = await pusher.image("big", "v1", layers=1, extra={
        "annotations": {"padding": "x" * 4096},
    })
    async with RegistryClient(timeout=TIMEOUT, max_manifest_bytes=2048) as small:
        with pytest.raises(InvalidManifest, match="larger than 2048 bytes"):
            await small.resolve(ref(registry.host, "big:v1"), insecure=True)
        # Without Content-Length the limit holds while streaming.
        with (
            AuthProxy(registry, require_token=False, hide_length=True) as proxy,
            pytest.raises(InvalidManifest, match="larger than 2048 bytes"),
        ):
            await small.resolve(ref(proxy.host, "big:v1"), insecure=True)
    async with RegistryClient(timeout=TIMEOUT, max_manifest_bytes=len(pushed.body)) as exact:
        assert (await exact.resolve(ref(registry.host, "big:v1"), insecure=True)).size == (
            pushed.size
        )


async def test_digest_mismatch(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    await pusher.image("tampered", "v1")
    with (
        AuthProxy(registry, require_token=False, tamper=lambda b: b.replace(b"2", b"3")) as p,
        pytest.raises(InvalidManifest, match="but its content hashes to"),
    ):
        await client.resolve(ref(p.host, "tampered:v1"), insecure=True)


async def test_htpasswd_registry(client: RegistryClient, auth_registry: LocalRegistry) -> None:
    p = pusher_for(auth_registry)
    async with p.client:
        pushed = await p.image("private", "v1")
    image = ref(auth_registry.host, "private:v1")
    with pytest.raises(RegistryAuthError, match=r"requires authentication.*no credentials"):
        await client.resolve(image, insecure=True)
    other = docker_config("elsewhere.example.com", *USER)
    with pytest.raises(RegistryAuthError, match=r"has entries for elsewhere\.example\.com"):
        await client.resolve(image, insecure=True, docker_config=other)
    wrong = docker_config(auth_registry.host, USER[0], "wrong")
    with pytest.raises(RegistryAuthError, match="refused the credentials"):
        await client.resolve(image, insecure=True, docker_config=wrong)
    good = docker_config(auth_registry.host, *USER)
    info = await client.resolve(image, insecure=True, docker_config=good)
    assert (info.digest, info.size) == (pushed.digest, pushed.size)


async def test_bearer_token_flow(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    amd64 = await pusher.image("tokened", "amd64")
    arm64 = await pusher.image("tokened", "arm64", arch="arm64")
    index = await pusher.index("tokened", "v1", [
        (amd64, {"os": "linux", "architecture": "amd64"}, {}),
        (arm64, {"os": "linux", "architecture": "arm64"}, {}),
    ])
    with AuthProxy(registry) as proxy:
        image = ref(proxy.host, "tokened:v1")
        good = docker_config(proxy.host, *USER)
        info = await client.resolve(image, insecure=True, docker_config=good)
        assert (info.digest, info.size) == (index.digest, amd64.size + arm64.size)
        # One 401, one token, then index + 2 children with that token.
        assert (proxy.stats.token_requests, proxy.stats.registry_requests) == (1, 4)

        again = await client.resolve(image, insecure=True, docker_config=good)
        assert again == info
        assert (proxy.stats.token_requests, proxy.stats.registry_requests) == (1, 7)

        # A cached token is never lent to a caller without those credentials.
        with pytest.raises(RegistryAuthError, match="no credentials"):
            await client.resolve(image, insecure=True)
        wrong = docker_config(proxy.host, USER[0], "wrong")
        with pytest.raises(RegistryAuthError, match=r"token service .* refused the credentials"):
            await client.resolve(image, insecure=True, docker_config=wrong)


async def test_identity_token_is_used_as_refresh_token(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    pushed = await pusher.image("refreshed", "v1")
    with AuthProxy(registry, user=None, refresh_token="rt-123") as proxy:
        config = {"auths": {proxy.host: {"identitytoken": "rt-123"}}}
        info = await client.resolve(ref(proxy.host, "refreshed:v1"), insecure=True,
                                    docker_config=config)
        assert info.digest == pushed.digest
        assert (proxy.stats.refresh_requests, proxy.stats.token_requests) == (1, 0)


async def test_self_signed_tls(client: RegistryClient, tls_registry: LocalRegistry) -> None:
    p = pusher_for(tls_registry)
    async with p.client:
        pushed = await p.image("secure", "v1")
    image = ref(tls_registry.host, "secure:v1")
    with pytest.raises(RegistryTLSError, match=r"not trusted.*set output.insecure: true"):
        await client.resolve(image)
    info = await client.resolve(image, insecure=True)  # this registry speaks no plain HTTP
    assert info.digest == pushed.digest


async def test_plain_http_registry(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    pushed = await pusher.image("plain", "v1")
    image = ref(registry.host, "plain:v1")
    with pytest.raises(RegistryTLSError, match=r"serves plain HTTP, set output.insecure: true"):
        await client.resolve(image)
    assert (await client.resolve(image, insecure=True)).digest == pushed.digest


async def test_stopped_registry_is_temporary(client: RegistryClient) -> None:
    with LocalRegistry() as reg:
        host, pid, root = reg.host, reg.pid, reg.root
    assert pid is not None
    with pytest.raises(ProcessLookupError):  # stopped and reaped, files removed
        os.kill(pid, 0)
    assert not root.exists()
    for insecure in (False, True):
        with pytest.raises(RegistryUnavailable, match=f"cannot connect to registry {host}") as e:
            await client.resolve(ref(host, "gone:v1"), insecure=insecure)
        assert e.value.temporary


async def test_silent_registry_times_out(silent_port: str) -> None:
    async with RegistryClient(timeout=0.5) as quick:
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match=r"did not answer within 0\.5 s"):
            await quick.resolve(ref(silent_port, "slow:v1"))
        assert time.monotonic() - started < 2


def test_local_registry_needs_the_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="run `make deps`"):
        LocalRegistry().start()


async def test_ca_bundle_adds_a_private_ca_to_the_default_trust(
        tls_registry: LocalRegistry) -> None:
    """STAGEWRIGHT_CA_BUNDLE_FILE: a private-CA registry is verified, not skipped, and the
    system's CAs stay trusted (the bundle is added; SSL_CERT_FILE would replace them)."""
    p = pusher_for(tls_registry)
    async with p.client:
        pushed = await p.image("private-ca", "v1")
    assert tls_registry.cert_path is not None
    async with RegistryClient(timeout=5, ca_bundle=tls_registry.cert_path) as trusting:
        info = await trusting.resolve(ref(tls_registry.host, "private-ca:v1"))
        system_cas = ssl.create_default_context().cert_store_stats()["x509_ca"]
        assert trusting.trust_context().cert_store_stats()["x509_ca"] == system_cas + 1
    assert info.digest == pushed.digest


async def test_details_name_each_platform_layer_from_its_config_history(
    client: RegistryClient, pusher: Pusher, registry: LocalRegistry
) -> None:
    """An index: each platform's config blob is read (digest-checked) and paired with its layers."""
    children: list[tuple[registry_fixtures.Pushed, dict[str, str], dict[str, str]]] = []
    for arch in ("amd64", "arm64"):
        layer = await pusher.blob("hist", f"{arch} layer".encode() * 50,
                                  registry_fixtures.OCI_LAYER)
        config = json.dumps({"architecture": arch, "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []},
                             "history": [{"created_by": f"/bin/sh -c make {arch}"}]}).encode()
        child = await pusher.manifest("hist", arch, {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": await pusher.blob("hist", config, registry_fixtures.OCI_CONFIG),
            "layers": [layer]})
        children.append((child, {"os": "linux", "architecture": arch}, {}))
    await pusher.index("hist", "v1", children)
    info = await client.resolve(ref(registry.host, "hist:v1"), insecure=True, details=True)
    assert [(p.platform, [layer.instruction for layer in p.layer_details])
            for p in info.platforms] == [
        ("linux/amd64", ["RUN make amd64"]), ("linux/arm64", ["RUN make arm64"])]
    plain = await client.resolve(ref(registry.host, "hist:v1"), insecure=True)
    assert [layer.instruction for layer in plain.platforms[0].layer_details] == [None]


async def test_a_config_is_read_once_the_manifest_every_time(
    pusher: Pusher, registry: LocalRegistry
) -> None:
    """Config blobs are content-addressed: kept by digest. The manifest, which proves the
    registry serves the image, is asked for on every resolve."""
    layer = await pusher.blob("again", b"layer" * 50, registry_fixtures.OCI_LAYER)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []},
                         "history": [{"created_by": "/bin/sh -c make"}]}).encode()
    await pusher.manifest("again", "v1", {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": await pusher.blob("again", config, registry_fixtures.OCI_CONFIG),
        "layers": [layer]})
    requests: list[str] = []
    async with RegistryClient(timeout=TIMEOUT,
                              observer=lambda code, _: requests.append(code)) as client:
        first = await client.resolve(ref(registry.host, "again:v1"), insecure=True,
                                     details=True)
        asked = len(requests)
        second = await client.resolve(ref(registry.host, "again:v1"), insecure=True,
                                      details=True)
    assert [layer.instruction for layer in second.layer_details] == ["RUN make"]
    assert second == first
    assert len(requests) - asked == 1  # the manifest only


async def test_tag_points_each_tag_at_the_same_manifest_bytes(
    client: RegistryClient, auth_registry: LocalRegistry
) -> None:
    """The size budget's promotion: PUT the staged manifest under each output tag."""
    p = pusher_for(auth_registry)
    async with p.client:
        staged = await p.image("budget/app", "stagewright-staging-app", docker=True)
        old = await p.image("budget/app", "latest")
    by_digest = ref(auth_registry.host, f"budget/app@{staged.digest}")
    with pytest.raises(RegistryAuthError):
        await client.tag(by_digest, ["latest"], insecure=True)
    good = docker_config(auth_registry.host, *USER)
    await client.tag(by_digest, ["latest", "v1"], insecure=True, docker_config=good)
    for tag in ("latest", "v1"):
        info = await client.resolve(ref(auth_registry.host, f"budget/app:{tag}"),
                                    insecure=True, docker_config=good)
        assert info.digest == staged.digest != old.digest
    with pytest.raises(InvalidManifest, match="by digest"):
        await client.tag(ref(auth_registry.host, "budget/app:v1"), ["x"], insecure=True,
                         docker_config=good)
