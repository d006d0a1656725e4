"""The trigger webhook endpoint: ``POST /hooks/<hash>`` on its own port (off unless set).

A delivery is authenticated with the ImageBuild's webhook Secret (``triggers.webhook``) and,
if authentic and new, asks the trigger watch to check that ImageBuild's source now; nothing
in the payload is used (no commit is taken from it). Answers reveal nothing about the
cluster: an unknown path is 404, a bad or missing signature 401, a replayed delivery ID 200
("already received", no second check), an accepted one 202.

With several replicas, only the leader acts: a standby that receives a delivery forwards it
verbatim to the leader's address (which the leader publishes on its Lease), so a webhook that
lands on any replica leads to exactly one check, by the leader. A forwarded delivery that
reaches a replica which is not (or no longer) the leader is refused with 503, never passed
on again, and a sender such as GitHub shows it as failed, to redeliver.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Protocol

import aiohttp
from aiohttp import web

from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.handlers.trigger_watch import TriggerWatch
from stagewright.triggers.webhook import (
    PATH_PREFIX,
    Replays,
    WebhookRefusedError,
    authenticate,
)

_log = logging.getLogger("stagewright")
#: The largest delivery read (GitHub caps payloads at 25 MB; a check needs none of it).
MAX_BODY = 1024 * 1024
FORWARDED = "X-Stagewright-Forwarded"
#: Headers a forwarded delivery keeps (what authentication and replay detection read).
_KEPT = ("Content-Type", "X-Hub-Signature-256", "X-GitHub-Delivery", "X-GitHub-Event",
         "X-Gitlab-Token", "X-Gitlab-Event-UUID", "X-Gitlab-Event",
         "X-Stagewright-Signature", "X-Stagewright-Delivery")


class LeaderView(Protocol):
    """What the webhook server needs from leader election."""

    def is_leader(self) -> bool:
        """Whether this replica acts (the only one with one replica)."""
        ...

    def leader_address(self) -> str | None:
        """``host:port`` of the leader's webhook endpoint, when known."""
        ...


class WebhookServer:
    """Serves deliveries on ``address:port`` until stopped."""

    def __init__(self, api: KubeApi, triggers: TriggerWatch, address: str, port: int,
                 leader: LeaderView | None = None) -> None:
        self.api = api
        self.triggers = triggers
        self.address = address
        self.port = port
        self.leader = leader
        self.replays = Replays()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Listen (the port is bound before this returns)."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH_PREFIX + "{hook}", self.deliver)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port).start()
        _log.info(f"Serving trigger webhooks on {self.address}:{self.port}{PATH_PREFIX}*.")

    async def stop(self) -> None:
        """Stop listening; deliveries in flight are answered first."""
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def deliver(self, request: web.Request) -> web.Response:
        """One delivery: authenticate, drop replays, ask for a check."""
        body = await request.read()
        if self.leader is not None and not self.leader.is_leader():
            return await self._forward(request, body)
        path = request.path
        key = self.triggers.webhook_key(path)
        secret_ref = self.triggers.webhook_secret(key) if key is not None else None
        if key is None or secret_ref is None:
            return web.json_response({"error": "not found"}, status=404)
        try:
            secret = await self._secret(*secret_ref)
            delivery = authenticate(request.headers, body, secret)
        except WebhookRefusedError as exc:
            return web.json_response({"error": str(exc)}, status=401)
        except ApiError as exc:
            _log.warning(f"Could not read webhook Secret {secret_ref[1]} in namespace "
                         f"{secret_ref[0]}: {exc}")
            return web.json_response({"error": "try again later"}, status=503)
        if not self.replays.first_time(path, delivery):
            return web.json_response({"status": "already received"}, status=200)
        checking = self.triggers.check_now(key)
        _log.info(f"Webhook delivery {delivery.delivery_id} ({delivery.provider}) for "
                  f"{key[0]}/{key[1]}: {'checking the source' if checking else 'no source'}.")
        return web.json_response({"status": "checking" if checking else "accepted"},
                                 status=202)

    async def _secret(self, namespace: str, name: str) -> bytes:
        secret = await self.api.get_secret(namespace, name)
        token = ((secret or {}).get("data") or {}).get("token")
        if not token:
            raise WebhookRefusedError("the webhook Secret or its key `token` is missing")
        try:
            return base64.b64decode(token, validate=True)
        except (binascii.Error, ValueError):
            raise WebhookRefusedError("the webhook Secret's `token` is not base64") from None

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        """A standby passes the delivery to the leader once, and answers as it answered."""
        assert self.leader is not None
        address = self.leader.leader_address()
        if request.headers.get(FORWARDED) or address is None:
            return web.json_response({"error": "no leader yet; redeliver shortly"}, status=503)
        if self._client is None:
            self._client = aiohttp.ClientSession(trust_env=False,
                                                 timeout=aiohttp.ClientTimeout(total=10))
        headers = {name: value for name in _KEPT if (value := request.headers.get(name))}
        try:
            async with self._client.post(f"http://{address}{request.path}", data=body,
                                         headers={**headers, FORWARDED: "1"}) as answer:
                return web.Response(status=answer.status, body=await answer.read(),
                                    content_type=answer.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning(f"Could not forward a webhook delivery to the leader at {address}: "
                         f"{exc}")
            return web.json_response({"error": "leader unreachable; redeliver shortly"},
                                     status=503)
