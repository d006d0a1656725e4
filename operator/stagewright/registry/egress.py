"""Where the operator's registry look-ups may go: the host allow-list and the address guard.

A tenant chooses ``output.image``, so a tenant chooses which host the operator contacts with
the tenant's push credentials. Two rules bound that:

- ``STAGEWRIGHT_REGISTRY_ALLOW`` (host patterns, default any) names the registries the
  operator will contact at all: checked before a build pod exists and on every request,
  token realms and redirects included.
- Link-local and cloud metadata addresses are refused always, whatever the allow-list says,
  before a connection is opened. The check sits in the network backend, after name
  resolution: the addresses checked are the addresses connected to, so neither an IP
  literal nor a name that resolves (or re-resolves, DNS rebinding) to a metadata service
  gets through.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence

import httpcore
import httpx

#: Addresses no registry look-up may reach: link-local (cloud metadata at 169.254.169.254,
#: GCP, Azure, Alibaba's 100.100.100.200 is not link-local but listed), AWS's IPv6 metadata.
FORBIDDEN_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32",
))

#: Resolves a host name to its IP addresses (as strings), in connection order.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class ForbiddenAddressError(httpcore.ConnectError):
    """A registry host resolved to a link-local or metadata address: never connected."""


def forbidden_address(address: str) -> bool:
    """Whether ``address`` (an IP literal) is one no registry look-up may reach."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in FORBIDDEN_NETWORKS)


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether ``host`` (``name[:port]``) matches one of the allow-list's patterns.

    Patterns are shell globs matched case-insensitively against the host with its port
    (``registry.example.com``, ``*.corp.example``, ``127.0.0.1:5000``); a pattern without a
    port also matches the host on any port. No patterns: every host is allowed.
    """
    if not patterns:
        return True
    host = host.lower()
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return any(fnmatch.fnmatchcase(host, p.lower()) or
               (":" not in p and fnmatch.fnmatchcase(bare, p.lower())) for p in patterns)


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer for ``host`` (IPv4 and IPv6), as getaddrinfo orders it."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving names itself and refusing forbidden addresses.

    TLS still verifies the registry's name (httpcore passes the request's host as the server
    name), while the TCP connection goes to an address this class has checked.
    """

    def __init__(self, resolver: Resolver = system_resolver,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._resolve = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int,
                          timeout: float | None = None,  # noqa: ASYNC109 - httpcore's API
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        """Resolve, refuse the host if any address is forbidden, else connect to one."""
        try:
            addresses = [host] if _is_ip(host) else await self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        refused = [a for a in addresses if forbidden_address(a)]
        if refused:
            raise ForbiddenAddressError(
                f"{host} resolves to {', '.join(refused)}: link-local and cloud metadata "
                "addresses are never contacted")
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address,
                                                      socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def sleep(self, seconds: float) -> None:
        """Delegated: httpcore's retry back-off."""
        await self._inner.sleep(seconds)


def guarded_transport(verify: ssl.SSLContext | bool,
                      resolver: Resolver = system_resolver) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through :class:`GuardedNetworkBackend`.

    httpx has no public parameter for httpcore's network backend, so the transport's pool is
    replaced by one built with the same TLS context and httpx's default limits; the
    registry tests prove the guard is in the path (a forbidden name never connects).
    """
    context = verify if isinstance(verify, ssl.SSLContext) else _unverified_context()
    if verify is True:
        context = ssl.create_default_context()
    transport = httpx.AsyncHTTPTransport(verify=context)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=context, max_connections=100, max_keepalive_connections=20,
        keepalive_expiry=5.0, network_backend=GuardedNetworkBackend(resolver))
    return transport


def _unverified_context() -> ssl.SSLContext:
    """TLS without certificate checks: for registries marked ``output.insecure`` only."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True
