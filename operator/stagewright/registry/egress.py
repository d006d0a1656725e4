"""Where the operator's registry look-ups may go: the host allow-list and the address guard.

A tenant chooses ``output.image``, so a tenant chooses which host the operator contacts with
the tenant's push credentials. Two rules bound that:

- ``STAGEWRIGHT_REGISTRY_ALLOW`` (host patterns, default any) names the registries the
  operator will contact at all: checked before a build pod exists and on every request,
  token realms and redirects included.
- Link-local and cloud metadata addresses are refused always, whatever the allow-list says,
  before a connection is opened. The check sits in the connection pool's resolver
  (:class:`GuardedResolver`, an aiohttp resolver), after name resolution: the addresses checked
  are the addresses connected to, so a name that resolves (or re-resolves, DNS rebinding) to
  a metadata service never gets through. IP literals, which aiohttp connects to without asking
  a resolver, are checked by the client on every request and redirect hop
  (:func:`refuse_forbidden_literal`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from aiohttp.abc import AbstractResolver, ResolveResult

#: Addresses no registry look-up may reach: link-local (cloud metadata at 169.254.169.254,
#: GCP, Azure, Alibaba's 100.100.100.200 is not link-local but listed), AWS's IPv6 metadata.
FORBIDDEN_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32",
))

#: Resolves a host name to its IP addresses (as strings), in connection order.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class ForbiddenAddressError(OSError):
    """A registry host resolved to a link-local or metadata address: never connected.

    An OSError, so aiohttp reports it as the cause of its connection error.
    """


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


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver step, resolving names itself and refusing forbidden addresses.

    TLS still verifies the registry's name (aiohttp uses the request's host as the server
    name), while the TCP connection goes to an address this class has checked.
    """

    def __init__(self, resolver: Resolver = system_resolver) -> None:
        self._resolve = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET,  # noqa: ARG002
                      ) -> list[ResolveResult]:
        """Resolve; refuse the host if any address is forbidden, else answer them all."""
        try:
            addresses = [host] if _is_ip(host) else await self._resolve(host, port)
        except OSError as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        refused = [a for a in addresses if forbidden_address(a)]
        if refused:
            raise ForbiddenAddressError(
                f"{host} resolves to {', '.join(refused)}: link-local and cloud metadata "
                "addresses are never contacted")
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for address in addresses]

    async def close(self) -> None:
        """Nothing to release: resolution goes through the resolver function."""


def refuse_forbidden_literal(host: str) -> None:
    """Raise ForbiddenAddressError for an IP-literal host (``[v6]:port`` or ``v4:port``
    accepted) that no registry look-up may reach; names are left to the resolver."""
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    bare = bare.strip("[]")
    if _is_ip(bare) and forbidden_address(bare):
        raise ForbiddenAddressError(
            f"{bare} is a link-local or cloud metadata address: never contacted")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True
