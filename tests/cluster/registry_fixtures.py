"""Real registries for the cluster tier, and what tests need to put images in them.

``Pusher`` speaks the distribution API itself (blob POST+PUT, manifest PUT) so each test
knows exactly which bytes it uploaded. ``AuthProxy`` is a tiny token service and
authenticating reverse proxy in front of a real registry: distribution's own token auth
needs a signing setup, and this also lets a test count token requests or alter answers.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx
import pytest

from sandbox.registry import LocalRegistry
from stagewright.registry.client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)

USER = ("builder", "s3cret-pass")
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def docker_config(host: str, user: str, password: str) -> dict[str, Any]:
    """A parsed ``.dockerconfigjson`` as ``kubectl create secret docker-registry`` writes it."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"auths": {host: {"username": user, "password": password, "auth": auth}}}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Pushed:
    """A manifest the test uploaded: its registry digest and the sizes it declares."""

    digest: str
    media_type: str
    size: int
    layers: int
    body: bytes


class Pusher:
    """Uploads blobs and manifests to a registry over its HTTP API."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client = client
        self.base_url = base_url

    async def blob(self, repo: str, data: bytes, media_type: str) -> dict[str, Any]:
        """Monolithic upload (POST then PUT with the digest); returns the descriptor."""
        digest = sha256(data)
        start = await self.client.post(f"{self.base_url}/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = httpx.URL(self.base_url).join(start.headers["location"])
        done = await self.client.put(
            location.copy_merge_params({"digest": digest}),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    async def manifest(self, repo: str, ref: str, manifest: dict[str, Any]) -> Pushed:
        body = json.dumps(manifest, indent=2).encode()
        media_type = manifest["mediaType"]
        response = await self.client.put(
            f"{self.base_url}/v2/{repo}/manifests/{ref}",
            content=body,
            headers={"Content-Type": media_type},
        )
        assert response.status_code == 201, response.text
        digest = response.headers["docker-content-digest"]
        assert digest == sha256(body)
        if "layers" in manifest:
            size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
            return Pushed(digest, media_type, size, len(manifest["layers"]), body)
        return Pushed(digest, media_type, 0, 0, body)

    async def image(
        self,
        repo: str,
        tag: str,
        *,
        docker: bool = False,
        layers: int = 2,
        arch: str = "amd64",
        extra: dict[str, Any] | None = None,
    ) -> Pushed:
        """An image with random layers of different sizes (so sums are meaningful)."""
        config = json.dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        config_type, layer_type = (DOCKER_CONFIG, DOCKER_LAYER) if docker else (
            OCI_CONFIG, OCI_LAYER
        )
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": await self.blob(repo, config, config_type),
            "layers": [
                await self.blob(repo, secrets.token_bytes(1000 + 517 * i), layer_type)
                for i in range(layers)
            ],
            **(extra or {}),
        }
        return await self.manifest(repo, tag, manifest)

    async def index(
        self,
        repo: str,
        tag: str,
        children: list[tuple[Pushed, dict[str, str], dict[str, str]]],
        *,
        docker: bool = False,
    ) -> Pushed:
        """An index / manifest list of (manifest, platform, annotations) entries."""
        manifests = []
        for child, platform, notes in children:
            entry: dict[str, Any] = {
                "mediaType": child.media_type,
                "digest": child.digest,
                "size": len(child.body),
                "platform": platform,
            }
            if notes:
                entry["annotations"] = notes
            manifests.append(entry)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
            "manifests": manifests,
        }
        return await self.manifest(repo, tag, manifest)


@pytest.fixture(scope="module")
def registry() -> Iterator[LocalRegistry]:
    """A plain-HTTP registry, as on kind with a local registry."""
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[LocalRegistry]:
    """A plain-HTTP registry with htpasswd (Basic) auth for ``USER``."""
    with LocalRegistry(htpasswd=USER) as reg:
        yield reg


@pytest.fixture(scope="module")
def tls_registry() -> Iterator[LocalRegistry]:
    """A registry with a self-signed certificate for 127.0.0.1."""
    with LocalRegistry(tls=True) as reg:
        yield reg


def pusher_for(reg: LocalRegistry) -> Pusher:
    """A pusher that trusts ``reg``'s certificate and knows its password; close its client."""
    verify = reg.ssl_context() if reg.tls else True
    auth = httpx.BasicAuth(*reg.htpasswd) if reg.htpasswd else None
    return Pusher(httpx.AsyncClient(verify=verify, auth=auth, trust_env=False), reg.url)


@dataclass
class ProxyStats:
    token_requests: int = 0
    refresh_requests: int = 0
    registry_requests: int = 0
    issued: set[str] = field(default_factory=set)


class AuthProxy:
    """Token service + authenticating reverse proxy for a plain-HTTP registry, on 127.0.0.1.

    ``/token`` issues a random token after checking Basic credentials (GET) or a refresh
    token (OAuth2 POST); ``/v2/...`` (GET or HEAD) answers 401 ``Bearer realm=...`` unless
    the request carries a token it issued, then forwards to the registry.
    ``require_token=False`` makes it a plain proxy; ``tamper`` rewrites 200 bodies (headers
    kept); ``hide_length`` drops Content-Length so the body ends at connection close.
    """

    def __init__(
        self,
        backend: LocalRegistry,
        *,
        user: tuple[str, str] | None = USER,
        refresh_token: str | None = None,
        require_token: bool = True,
        tamper: Callable[[bytes], bytes] | None = None,
        hide_length: bool = False,
    ) -> None:
        self.backend = backend
        self.user = user
        self.refresh_token = refresh_token
        self.require_token = require_token
        self.tamper = tamper
        self.hide_length = hide_length
        self.stats = ProxyStats()
        self._server = _ProxyServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> AuthProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def issue(self) -> str:
        token = secrets.token_urlsafe(16)
        self.stats.issued.add(token)
        return token


class _ProxyServer(ThreadingHTTPServer):
    def __init__(self, proxy: AuthProxy) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.proxy = proxy


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows failures, not every request."""

    @property
    def proxy(self) -> AuthProxy:
        return self.server.proxy

    def _answer(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if not self.proxy.hide_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self) -> None:
        """OAuth2 refresh-token grant, as a registry's token service offers for identity tokens."""
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        proxy = self.proxy
        if self.path.split("?")[0] != "/token" or proxy.refresh_token is None:
            self._answer(404)
            return
        proxy.stats.refresh_requests += 1
        grant = (form.get("grant_type"), form.get("refresh_token"))
        if grant != (["refresh_token"], [proxy.refresh_token]):
            self._answer(401)
            return
        self._answer(200, json.dumps({"access_token": proxy.issue()}).encode())

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            self._token()
        elif self.path.startswith("/v2/"):
            self._forward()
        else:
            self._answer(404)

    def do_HEAD(self) -> None:
        if self.path.startswith("/v2/"):
            self._forward()
        else:
            self._answer(404)

    def _token(self) -> None:
        """A token for whoever presents the right Basic credentials (or anyone, if none)."""
        proxy = self.proxy
        proxy.stats.token_requests += 1
        if proxy.user is not None:
            expected = "Basic " + base64.b64encode(":".join(proxy.user).encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._answer(401, b'{"details": "bad credentials"}')
                return
        body = json.dumps({"token": proxy.issue(), "expires_in": 300}).encode()
        self._answer(200, body, {"Content-Type": "application/json"})

    def _forward(self) -> None:
        proxy = self.proxy
        proxy.stats.registry_requests += 1
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if proxy.require_token and token not in proxy.stats.issued:
            repo = self.path.split("/v2/", 1)[1].rsplit("/manifests/", 1)[0]
            challenge = (
                f'Bearer realm="http://{proxy.host}/token",service="sandbox",'
                f'scope="repository:{repo}:pull"'
            )
            self._answer(
                401,
                b'{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}',
                {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
            )
            return
        backend = http.client.HTTPConnection(proxy.backend.host, timeout=5)
        try:
            backend.request(self.command, self.path,
                            headers={"Accept": self.headers["Accept"]})
            reply = backend.getresponse()
            body = reply.read()
        finally:
            backend.close()
        if reply.status == 200 and proxy.tamper is not None:
            body = proxy.tamper(body)
        keep = ("content-type", "docker-content-digest")
        self._answer(reply.status, body, {k: v for k, v in reply.getheaders() if k.lower() in keep})


@pytest.fixture
def silent_port() -> Iterator[str]:
    """``127.0.0.1:PORT`` that accepts connections and never answers (for timeouts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"
