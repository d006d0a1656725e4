"""RegistryClient.head_digest: a tag's digest from one HEAD, as base-image triggers poll it.

Against a real CNCF distribution registry (Debian's docker-registry) whose own access log
says which requests arrived; the rate-limited path against a stand-in, since no real
registry answers 429 on cue.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiohttp import web
from tests.cluster import registry_fixtures
from tests.cluster.registry_fixtures import USER, AuthProxy, Pusher, docker_config, pusher_for

from sandbox.registry import LocalRegistry
from stagewright.registry import (
    ImageNotFound,
    ImageReference,
    InvalidManifest,
    RegistryAuthError,
    RegistryClient,
    RegistryNotAllowed,
    RegistryRateLimited,
    RegistryUnavailable,
)
from stagewright.registry.manifests import ACCEPT

pytestmark = pytest.mark.cluster

auth_registry = registry_fixtures.auth_registry

TIMEOUT = 5.0
_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/v2/\S+/manifests/\S+) HTTP/')


@pytest.fixture(scope="module")
def logged_registry() -> Iterator[LocalRegistry]:
    """A plain-HTTP registry that logs every request it serves."""
    with LocalRegistry(access_log=True) as reg:
        yield reg


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient(timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
async def pusher(logged_registry: LocalRegistry) -> AsyncIterator[Pusher]:
    p = pusher_for(logged_registry)
    async with p.client:
        yield p


def ref(host: str, name: str) -> ImageReference:
    return ImageReference.parse(f"{host}/{name}")


async def manifest_requests(reg: LocalRegistry, since: int, count: int) -> list[tuple[str, str]]:
    """The manifest requests logged after byte ``since``, once ``count`` are there (or 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        text = reg.access_log_path.read_bytes()[since:].decode()
        seen = [(m["method"], m["path"]) for m in _REQUEST_LINE.finditer(text)]
        if len(seen) >= count or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def test_the_digest_is_the_registrys_from_head_requests_only(
    client: RegistryClient, pusher: Pusher, logged_registry: LocalRegistry
) -> None:
    image = await pusher.image("base/app", "v1")
    index = await pusher.index("base/app", "multi", [
        (image, {"os": "linux", "architecture": "amd64"}, {}),
    ])
    async with httpx.AsyncClient(trust_env=False) as http:
        got = await http.get(f"{logged_registry.url}/v2/base/app/manifests/v1",
                             headers={"Accept": ACCEPT})
    assert got.status_code == 200
    since = logged_registry.access_log_path.stat().st_size

    host = logged_registry.host
    assert await client.head_digest(ref(host, "base/app:v1"), insecure=True) == (
        got.headers["docker-content-digest"]) == image.digest
    assert await client.head_digest(ref(host, f"base/app@{image.digest}"),
                                    insecure=True) == image.digest
    # The Accept header names indexes: an index's tag gives the index's digest.
    assert await client.head_digest(ref(host, "base/app:multi"), insecure=True) == index.digest

    assert await manifest_requests(logged_registry, since, 3) == [
        ("HEAD", "/v2/base/app/manifests/v1"),
        ("HEAD", f"/v2/base/app/manifests/{image.digest}"),
        ("HEAD", "/v2/base/app/manifests/multi"),
    ]


async def test_a_repushed_tag_gives_the_new_digest(
    client: RegistryClient, pusher: Pusher, logged_registry: LocalRegistry
) -> None:
    first = await pusher.image("base/moving", "latest")
    image = ref(logged_registry.host, "base/moving:latest")
    assert await client.head_digest(image, insecure=True) == first.digest
    second = await pusher.image("base/moving", "latest", layers=3)
    assert second.digest != first.digest
    assert await client.head_digest(image, insecure=True) == second.digest


async def test_a_missing_tag_or_repository_is_not_found(
    client: RegistryClient, pusher: Pusher, logged_registry: LocalRegistry
) -> None:
    await pusher.image("base/present", "v1")
    with pytest.raises(ImageNotFound, match=r"base/present:nope not found"):
        await client.head_digest(ref(logged_registry.host, "base/present:nope"), insecure=True)
    with pytest.raises(ImageNotFound, match="check the repository and tag"):
        await client.head_digest(ref(logged_registry.host, "base/absent:v1"), insecure=True)


async def test_head_authenticates_with_basic(
    client: RegistryClient, auth_registry: LocalRegistry
) -> None:
    p = pusher_for(auth_registry)
    async with p.client:
        pushed = await p.image("private/base", "v1")
    image = ref(auth_registry.host, "private/base:v1")
    with pytest.raises(RegistryAuthError, match="no credentials"):
        await client.head_digest(image, insecure=True)
    wrong = docker_config(auth_registry.host, USER[0], "wrong")
    with pytest.raises(RegistryAuthError, match="refused the credentials"):
        await client.head_digest(image, insecure=True, docker_config=wrong)
    good = docker_config(auth_registry.host, *USER)
    assert await client.head_digest(image, insecure=True, docker_config=good) == pushed.digest


async def test_head_authenticates_with_a_bearer_token(
    client: RegistryClient, pusher: Pusher, logged_registry: LocalRegistry
) -> None:
    pushed = await pusher.image("base/tokened", "v1")
    with AuthProxy(logged_registry) as proxy:
        config = docker_config(proxy.host, *USER)
        image = ref(proxy.host, "base/tokened:v1")
        for _ in range(2):
            assert await client.head_digest(image, insecure=True,
                                            docker_config=config) == pushed.digest
        # One 401 (a HEAD's challenge is all headers), one token, then both HEADs with it.
        assert (proxy.stats.token_requests, proxy.stats.registry_requests) == (1, 3)


async def test_a_registry_outside_the_allow_list_is_not_asked(
        logged_registry: LocalRegistry) -> None:
    async with RegistryClient(timeout=TIMEOUT, allow=["*.example.com"]) as guarded:
        with pytest.raises(RegistryNotAllowed, match="STAGEWRIGHT_REGISTRY_ALLOW"):
            await guarded.head_digest(ref(logged_registry.host, "base/app:v1"), insecure=True)


# A rate-limiting registry, which no real registry plays on cue.

@dataclass
class StandIn:
    """What the stand-in answers for each repository, and every request it was sent."""

    answers: dict[str, tuple[int, dict[str, str]]]
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    host: str = ""


@asynccontextmanager
async def rate_limiting_registry(
        answers: dict[str, tuple[int, dict[str, str]]]) -> AsyncIterator[StandIn]:
    """A stand-in for a rate-limiting registry on 127.0.0.1, plain HTTP: answers each
    ``/v2/<repo>/manifests/...`` with ``answers[repo]`` (status, headers) and no body, and
    records (method, path, Accept) of each request."""
    stand_in = StandIn(answers)

    async def answer(request: web.Request) -> web.Response:
        stand_in.seen.append((request.method, request.path, request.headers.get("Accept")))
        repo = request.path.removeprefix("/v2/").rsplit("/manifests/", 1)[0]
        status, headers = stand_in.answers.get(repo, (404, {}))
        return web.Response(status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/v2/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        stand_in.host = f"127.0.0.1:{runner.addresses[0][1]}"
        yield stand_in
    finally:
        await runner.cleanup()


async def test_429_is_rate_limited_with_the_registrys_retry_after(
        client: RegistryClient) -> None:
    in_two_minutes = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=120),
                                                 usegmt=True)
    async with rate_limiting_registry({
        "seconds": (429, {"Retry-After": "7"}),
        "date": (429, {"Retry-After": in_two_minutes}),
        "silent": (429, {}),
        "headless": (200, {}),
    }) as registry:
        with pytest.raises(RegistryRateLimited, match=r"429, retry after 7 s") as limited:
            await client.head_digest(ref(registry.host, "seconds:v1"), insecure=True)
        assert limited.value.retry_after == 7.0
        assert limited.value.temporary
        assert isinstance(limited.value, RegistryUnavailable)

        with pytest.raises(RegistryRateLimited) as limited:
            await client.head_digest(ref(registry.host, "date:v1"), insecure=True)
        assert limited.value.retry_after is not None
        assert 110 <= limited.value.retry_after <= 120

        with pytest.raises(RegistryRateLimited, match=r"requests \(429\)") as limited:
            await client.head_digest(ref(registry.host, "silent:v1"), insecure=True)
        assert limited.value.retry_after is None

        # A registry that omits the digest is an error, not a reason to GET.
        with pytest.raises(InvalidManifest, match="without a Docker-Content-Digest"):
            await client.head_digest(ref(registry.host, "headless:v1"), insecure=True)

    assert registry.seen == [("HEAD", f"/v2/{repo}/manifests/v1", ACCEPT)
                             for repo in ("seconds", "date", "silent", "headless")]
