"""List-then-watch of one kind of object, as client-go's reflector, without a cache.

An informer lists its objects (streamed item by item from the API server's watch cache),
hands each to ``on_event`` as ``ADDED``, then watches from the list's resourceVersion (with
bookmarks, so a quiet watch stays resumable) and hands on every event. It keeps no object:
the caller decides on sight what an object means and keeps only what it must (unfinished
builds), so memory does not grow with history.

Failures are level-based, as in client-go: a watch that ends is resumed from the last
resourceVersion seen; ``410 Gone`` (the version is too old) relists, and after a relist
``on_relist`` is told every key listed, so the caller can drop what was deleted unseen; other
failures back off exponentially and retry. A resource that is not served yet (its CRD is not
installed: 404) is retried quietly until it is.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from stagewright.handlers.kube_api import ApiError, KubeApi

#: Told of each object listed ("ADDED") and each watch event ("ADDED", "MODIFIED", "DELETED").
OnEvent = Callable[[str, dict[str, Any]], None]
#: Told the (namespace, name) of every object a completed list returned.
OnRelist = Callable[[set[tuple[str, str]]], None]

_log = logging.getLogger("stagewright")


class _Gone(Exception):  # noqa: N818 - control flow: the resourceVersion expired, relist
    pass


class Informer:
    """Lists then watches ``path`` (a collection URL), optionally label- and field-selected."""

    #: Watch requests last this long on the server (plus up to as much again, at random, so
    #: informers started together do not reconnect together).
    watch_seconds = 300
    #: Back-off after a failure: doubled per failure up to the maximum, reset on success (a
    #: few watches cost the API server little; an API server back after an outage is
    #: watched again within seconds).
    min_delay, max_delay = 0.5, 5.0

    def __init__(self, api: KubeApi, path: str, on_event: OnEvent, *,
                 label_selector: str = "", field_selector: str = "",
                 on_relist: OnRelist | None = None, kind: str = "",
                 on_listed: OnEvent | None = None) -> None:
        self._api = api
        self.path = path
        self._on_event = on_event
        #: Told of each object a list returns, if it is to be told apart from watch events
        #: (the controller gives them low priority); else ``on_event`` is.
        self._on_listed = on_listed or on_event
        self._on_relist = on_relist
        self._selector = label_selector
        self._fields = field_selector
        self._kind = kind
        #: The version the next watch resumes from; None: list first.
        self.resource_version: str | None = None
        #: Set once the first list has been handed on.
        self.synced = asyncio.Event()

    def _params(self) -> dict[str, str]:
        params = {"labelSelector": self._selector} if self._selector else {}
        if self._fields:
            params["fieldSelector"] = self._fields
        return params

    async def list(self) -> bool:
        """List every object (as ``ADDED``) and note the version to watch from.

        From the API server's watch cache (``resourceVersion=0``, as client-go's reflector
        lists), read item by item as the response arrives, so the objects are never all
        alive at once (``liststream``). False when the path is not served yet (404), e.g. a
        CRD not installed.
        """
        seen: set[tuple[str, str]] = set()

        def item(obj: dict[str, Any]) -> None:
            if self._kind:  # list items carry no kind; watch events' objects do
                obj.setdefault("kind", self._kind)
            meta = obj["metadata"]
            seen.add((meta.get("namespace") or "", meta["name"]))
            self._hand_on("ADDED", obj, self._on_listed)

        fields = await self._api.list_stream(self.path, {**self._params(),
                                                         "resourceVersion": "0"}, item)
        if fields is None:
            return False
        self.resource_version = str((fields.get("metadata") or {}).get("resourceVersion")
                                    or "") or None
        if self._on_relist is not None:
            self._on_relist(seen)
        self.synced.set()
        return True

    def _hand_on(self, kind: str, obj: dict[str, Any], to: OnEvent | None = None) -> None:
        try:
            (to or self._on_event)(kind, obj)
        except Exception:  # one object the caller cannot handle must not stop the watch
            meta = obj.get("metadata") or {}
            _log.exception(f"Handling {kind} {meta.get('namespace')}/{meta.get('name')} "
                           "failed")

    async def run(self) -> None:
        """Watch (listing first when needed) until cancelled; never raises otherwise."""
        delay = self.min_delay
        while True:
            try:
                if self.resource_version is None and not await self.list():
                    _log.debug(f"{self.path} is not served yet; looking again in {delay} s.")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay)
                    continue
                await self._watch()
                delay = self.min_delay
            except _Gone:
                self.resource_version = None  # relist at once
            except ApiError as exc:
                log = _log.info if exc.temporary else _log.warning
                log(f"Watching {self.path} failed ({exc}); retrying in {delay} s.")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
            except (ValueError, KeyError, TypeError) as exc:  # a malformed event: start over
                _log.warning(f"Watching {self.path} failed ({exc!r}); relisting.")
                self.resource_version = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)

    async def _watch(self) -> None:
        """One watch request, from ``resource_version`` until the server ends it."""
        seconds = self.watch_seconds + random.randrange(self.watch_seconds)  # noqa: S311
        params = {**self._params(), "resourceVersion": str(self.resource_version),
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds)}
        try:
            async for event in self._api.watch(self.path, params, timeout=seconds + 30):
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message")),
                                   str(obj.get("reason") or ""))
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if kind != "BOOKMARK":
                    self._hand_on(str(kind), obj)
                if version:
                    self.resource_version = str(version)
        except ApiError as exc:
            if exc.status == 410:
                raise _Gone from exc
            raise
