"""kmock's Kubernetes emulator as a real HTTP API server for fault tests of the reconciler.

kmock stores every create/patch/delete *before* it looks for a reaction (its design: reactions
shape the response, the objects stay available for assertions), so ``emu["patch"] << 500``
answers 500 and still keeps the patch. A real API server that rejects a write (validation,
admission, etcd unavailable) stores nothing; ``FaultyEmulator.refuse`` models that case by
answering before the emulator's bookkeeping runs. kmock's own reactions remain right for reads
and for a write that committed and then failed (an apiserver timeout does that).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
from kmock import KubernetesEmulator, KubernetesError, Request, Server, View, resource
from kubernetes import client as k8s_client

from stagewright.handlers.kube_api import KubeApi

IMAGEBUILDS = resource("stagewright.dev", "v1alpha1", "imagebuilds")
PODS = resource("", "v1", "pods")
CONFIGMAPS = resource("", "v1", "configmaps")
SECRETS = resource("", "v1", "secrets")
EVENTS = resource("", "v1", "events")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class _Refusal:
    requests: View
    error: KubernetesError
    remaining: int
    served: list[Request] = field(default_factory=list)


@attrs.define(kw_only=True)
class FaultyEmulator(KubernetesEmulator):
    """A KubernetesEmulator whose refusals answer before anything is stored."""

    _refusals: list[_Refusal] = attrs.field(factory=list, init=False)

    def refuse(self, requests: View, status: int, reason: str, message: str,
               times: int = 1) -> list[Request]:
        """Answer the next ``times`` requests matching ``requests`` with a Status error.

        Returns the live list of refused requests, for assertions.
        """
        refusal = _Refusal(requests, KubernetesError(status=status, reason=reason,
                                                     message=message), times)
        self._refusals.append(refusal)
        return refusal.served

    async def _handle(self, request: Request) -> aiohttp.web.StreamResponse:
        for refusal in self._refusals:
            if refusal.remaining > 0 and request in refusal.requests:
                refusal.remaining -= 1
                refusal.served.append(request)
                raise refusal.error  # rendered as a v1 Status by KubernetesScaffold
        return await super()._handle(request)

    def writes(self) -> list[Request]:
        """Every request that asked the server to change something, refused or not."""
        return [request for request in self if request.method.value in WRITES]

    def stored(self, res: resource, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the server holds it now, or None when it does not exist."""
        key = (res, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def versions(self, res: resource, namespace: str, name: str) -> int:
        """How many times the object was written (created counts as one)."""
        return len(self.objects[res, namespace, name].history)


def configuration_for(server: Server) -> Any:
    """A kubernetes Configuration pointing at the emulator (plain HTTP, no credentials)."""
    configuration = k8s_client.Configuration()
    configuration.host = str(server.url).rstrip("/")
    return configuration


@contextlib.asynccontextmanager
async def emulated_api() -> AsyncIterator[tuple[FaultyEmulator, Server, KubeApi]]:
    """An emulator listening on 127.0.0.1 and a KubeApi talking to it; both stopped after."""
    async with (
        FaultyEmulator() as emulator,
        Server(emulator, host="127.0.0.1") as server,
        KubeApi(configuration_for(server)) as api,
    ):
        yield emulator, server, api
