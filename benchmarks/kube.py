"""The benchmark's own API access: aiohttp with a bearer token, plus streaming watches.

Separate from the operator's client on purpose: the harness must not share (or flatter) the
code it measures.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import aiohttp

from sandbox.controlplane import ControlPlane, Identity


class Kube:
    """``async with Kube(control_plane, identity) as kube``: requests and watches as one user."""

    def __init__(self, control_plane: ControlPlane, identity: Identity,
                 connections: int = 32) -> None:
        self.base = control_plane.url
        self._token = identity.token
        self._ssl = ssl.create_default_context(
            cafile=str(control_plane.work_dir / "pki" / "ca.crt"))
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
            headers={"Authorization": f"Bearer {self._token}"}, read_bufsize=2**20)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session (inside ``async with``)."""
        if self._session is None:
            raise RuntimeError("use Kube as an async context manager")
        return self._session

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      params: dict[str, str] | None = None) -> dict[str, Any]:
        """One call; raises on any error status."""
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.base + path, data=data, params=params,
                                        headers={"Content-Type": content_type}) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
            result: dict[str, Any] = json.loads(text)
            return result

    async def list_version(self, path: str) -> str:
        """The resourceVersion to start a watch of ``path`` from."""
        listed = await self.request("GET", path, params={"limit": "1"})
        return str(listed["metadata"]["resourceVersion"])

    async def count(self, path: str, label_selector: str = "") -> int:
        """How many objects ``path`` lists."""
        params = {"labelSelector": label_selector} if label_selector else None
        return len((await self.request("GET", path, params=params)).get("items") or [])

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Every event after ``resource_version``, reconnecting where the last one ended."""
        version = resource_version
        while True:
            params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "3600",
                      "allowWatchBookmarks": "true"}
            async with self.session.get(self.base + path, params=params,
                                        timeout=aiohttp.ClientTimeout(total=None)) as response:
                if response.status >= 400:
                    raise RuntimeError(f"watch {path}: {response.status}")
                async for line in response.content:
                    if not line.strip():
                        continue
                    event: dict[str, Any] = json.loads(line)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {path} failed: {event['object']}")
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        yield event
