"""Where the registry client may go: metadata addresses, the allow-list, redirects, realms.

Traffic goes to 127.0.0.1 only. Refusals of link-local and metadata addresses are proven
where the address is checked: the test controls name resolution, and the real connect step
(the event loop's socket connect, which aiohttp's connector reaches for names and IP literals
alike) is instrumented to fail the test if it is ever reached with a forbidden address, so no
request can leave for one.
"""

from __future__ import annotations

import asyncio.selector_events
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from tests.cluster.registry_fixtures import docker_config

from sandbox.processes import free_port
from stagewright.registry import (
    ImageNotFound,
    ImageReference,
    RegistryClient,
    RegistryNotAllowed,
    RegistryTLSError,
)
from stagewright.registry.egress import forbidden_address, host_allowed

pytestmark = pytest.mark.cluster

USER, PASSWORD = "tenant", "s3cret-push-password"


@pytest.fixture
def no_forbidden_connect(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Instrument the real connect step: a forbidden address reaching it fails the test."""
    reached: list[str] = []
    loop_class = asyncio.selector_events.BaseSelectorEventLoop
    original = loop_class.sock_connect

    async def sock_connect(self: asyncio.AbstractEventLoop, sock: socket.socket,
                           address: Any) -> None:
        host, port = str(address[0]), address[1]
        reached.append(host)
        if forbidden_address(host):
            pytest.fail(f"a connection to forbidden {host}:{port} was attempted")
        return await original(self, sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_class, "sock_connect", sock_connect)
    return reached


def resolving_to(*addresses: str) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


@pytest.mark.parametrize("addresses", [
    ("169.254.169.254",), ("127.0.0.1", "169.254.169.254"), ("fd00:ec2::254",),
    ("::ffff:169.254.169.254",), ("fe80::1%eth0",), ("100.100.100.200",),
], ids=["aws-v4", "mixed", "aws-v6", "v4-mapped", "link-local-v6", "alibaba"])
async def test_a_name_resolving_to_metadata_is_refused_before_connecting(
        addresses: tuple[str, ...], no_forbidden_connect: list[str]) -> None:
    async with RegistryClient(timeout=5, resolver=resolving_to(*addresses)) as client:
        with pytest.raises(RegistryNotAllowed, match="metadata"):
            await client.resolve(ImageReference.parse("registry.test/team/app:v1"))
    assert no_forbidden_connect == []


@pytest.mark.parametrize("image", ["169.254.169.254/app:v1", "[fd00:ec2::254]:443/app:v1"])
async def test_a_metadata_ip_literal_is_refused(image: str,
                                                no_forbidden_connect: list[str]) -> None:
    async with RegistryClient(timeout=5) as client:
        with pytest.raises(RegistryNotAllowed):
            await client.resolve(ImageReference.parse(image), insecure=True)
    assert no_forbidden_connect == []


def test_allow_list_patterns() -> None:
    patterns = ["registry.example.com", "*.corp.example", "127.0.0.1:5000"]
    assert host_allowed("registry.example.com:443", patterns)
    assert host_allowed("Mirror.Corp.Example", patterns)
    assert host_allowed("127.0.0.1:5000", patterns)
    assert not host_allowed("127.0.0.1:5001", patterns)
    assert not host_allowed("corp.example.evil.test", patterns)
    assert host_allowed("anything.test", [])


async def test_a_registry_outside_the_allow_list_is_never_contacted(
        no_forbidden_connect: list[str]) -> None:
    async with RegistryClient(timeout=5, allow=["*.example.com"]) as client:
        with pytest.raises(RegistryNotAllowed, match="STAGEWRIGHT_REGISTRY_ALLOW"):
            await client.resolve(ImageReference.parse(f"127.0.0.1:{free_port()}/app:v1"),
                                 insecure=True)
    assert no_forbidden_connect == []


# A hostile registry: TLS on 127.0.0.1, scripted answers, every request recorded.

@dataclass
class Seen:
    path: str
    authorization: str | None


@dataclass
class Hostile:
    """One scripted HTTPS server; ``answer(path, headers) -> (status, headers, body)``."""

    cert: Path
    key: Path
    answer: Callable[[str, dict[str, str]], tuple[int, dict[str, str], bytes]]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _serve(server: Hostile) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            server.seen.append(Seen(self.path, headers.get("authorization")))
            status, extra, body = server.answer(self.path, headers)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._reply()

        def do_POST(self) -> None:
            self._reply()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (both hostile servers use it)."""
    directory = tmp_path_factory.mktemp("hostile-tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=hostile",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def servers(certificate: tuple[Path, Path]) -> Iterator[Callable[..., Hostile]]:
    started: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[str, dict[str, str]], tuple[int, dict[str, str], bytes]],
              ) -> Hostile:
        server = Hostile(*certificate, answer=answer)
        started.append(_serve(server))
        return server

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


NOT_FOUND = (404, {"Content-Type": "application/json"},
             json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN"}]}).encode())


def basic_then(then: Callable[[str], tuple[int, dict[str, str], bytes]],
               ) -> Callable[[str, dict[str, str]], tuple[int, dict[str, str], bytes]]:
    """Ask for Basic credentials, then answer with ``then``."""
    def answer(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if "authorization" not in headers:
            return 401, {"WWW-Authenticate": 'Basic realm="hostile"'}, b""
        return then(path)
    return answer


async def test_a_redirect_to_another_host_loses_the_credentials(
        servers: Callable[..., Hostile], certificate: tuple[Path, Path]) -> None:
    elsewhere = servers(lambda path, headers: NOT_FOUND)
    registry = servers(basic_then(lambda path: (307, {"Location": elsewhere.base + path}, b"")))
    host = f"127.0.0.1:{registry.port}"
    async with RegistryClient(timeout=5, ca_bundle=certificate[0]) as client:
        with pytest.raises(ImageNotFound):
            await client.resolve(ImageReference.parse(f"{host}/app:v1"),
                                 docker_config=docker_config(host, USER, PASSWORD))
    assert [s.authorization is not None for s in registry.seen] == [False, True]
    assert [s.authorization for s in elsewhere.seen] == [None]


async def test_a_redirect_never_downgrades_to_plain_http(
        servers: Callable[..., Hostile], certificate: tuple[Path, Path]) -> None:
    plain_port = free_port()
    registry = servers(lambda path, headers: (
        302, {"Location": f"http://127.0.0.1:{plain_port}{path}"}, b""))
    async with RegistryClient(timeout=5, ca_bundle=certificate[0]) as client:
        with pytest.raises(RegistryTLSError, match="downgrade"):
            await client.resolve(ImageReference.parse(f"127.0.0.1:{registry.port}/app:v1"))


async def test_a_redirect_to_a_host_outside_the_allow_list_is_refused(
        servers: Callable[..., Hostile], certificate: tuple[Path, Path]) -> None:
    elsewhere = servers(lambda path, headers: NOT_FOUND)
    registry = servers(lambda path, headers: (307, {"Location": elsewhere.base + path}, b""))
    async with RegistryClient(timeout=5, ca_bundle=certificate[0],
                              allow=[f"127.0.0.1:{registry.port}"]) as client:
        with pytest.raises(RegistryNotAllowed, match="led to"):
            await client.resolve(ImageReference.parse(f"127.0.0.1:{registry.port}/app:v1"))
    assert elsewhere.seen == []


@pytest.mark.parametrize(("realm_host", "gets_credentials"),
                         [("127.0.0.1", True), ("localhost", False)],
                         ids=["same-host", "another-host"])
async def test_a_token_realm_gets_credentials_only_on_the_registrys_site(
        servers: Callable[..., Hostile], certificate: tuple[Path, Path], realm_host: str,
        gets_credentials: bool) -> None:
    tokens = servers(lambda path, headers: (
        200, {"Content-Type": "application/json"}, json.dumps({"token": "t0k3n"}).encode()))
    realm = f"https://{realm_host}:{tokens.port}/token"

    def registry_answer(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if headers.get("authorization") != "Bearer t0k3n":
            return 401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'}, b""
        return NOT_FOUND

    registry = servers(registry_answer)
    host = f"127.0.0.1:{registry.port}"
    async with RegistryClient(timeout=5, ca_bundle=certificate[0]) as client:
        with pytest.raises(ImageNotFound):
            await client.resolve(ImageReference.parse(f"{host}/app:v1"),
                                 docker_config=docker_config(host, USER, PASSWORD))
    assert len(tokens.seen) == 1
    assert (tokens.seen[0].authorization is not None) is gets_credentials
