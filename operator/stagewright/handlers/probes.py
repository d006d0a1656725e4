"""The readiness endpoint: which role this replica plays, for probes and people.

kopf serves liveness (``/healthz``, true for a leader and a standby alike). Readiness is ours:
``GET /readyz`` answers 200 with ``leader`` or ``standby`` once the replica leads or has made
its first attempt at the Lease, and 503 ``starting`` before. A ready standby counts as ready:
a rolling update (``maxUnavailable: 0``) waits for the new pod to stand by before it stops
the old leader, and a Service may send either one a request (the leader's address is on the
Lease for a standby to forward webhooks to).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web

#: The role this replica plays now: "leader", "standby", or None while starting.
Role = Callable[[], str | None]


class Readiness:
    """``async with Readiness("http://0.0.0.0:8082/readyz", role)``: served until exit."""

    def __init__(self, endpoint: str, role: Role) -> None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme != "http" or not parts.port:
            raise ValueError(f"the readiness endpoint must be http://HOST:PORT/PATH: {endpoint}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port
        self.path = parts.path or "/readyz"
        self._role = role
        self._runner: web.AppRunner | None = None

    async def _answer(self, _request: web.Request) -> web.Response:
        role = self._role()
        if role is None:
            return web.Response(status=503, text="starting\n")
        return web.Response(text=f"{role}\n")

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.add_routes([web.get(self.path, self._answer)])
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0,
                                     access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
