"""A small async Kubernetes REST client for the handful of calls the operator makes.

Why not the ``kubernetes`` client's API classes: they are synchronous and (since v30)
convert every body through generated pydantic models, while the operator builds plain dicts
and runs in kopf's event loop. Configuration (kubeconfig, in-cluster token rotation, exec
plugins) still comes from the ``kubernetes`` package, so credentials behave as users expect.

Why aiohttp: chosen by measurement (benchmarks/burst.py, benchmarks/README.md). Under a burst
of a thousand ImageBuilds the operator has hundreds of requests in flight; httpx's connection
pool re-scans every queued request on each state change (quadratic in queued requests), and
that bookkeeping was most of the operator's CPU. aiohttp's connector hands a freed connection
to the next waiter in constant time, and kopf already depends on it (no new dependency).

Fencing (leader election, ``handlers/election.py``): with a ``fence``, every write (any
method but GET) except the Lease's own is refused with :class:`NotLeaderError` unless the
fence says this replica may write now. It is asked before the request waits for a
connection and again when the request gets one, right before its bytes are sent, so a write
queued (or a process frozen) past the lease's deadline never reaches the API server.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace, TracebackType
from typing import Any, Protocol, Self

import aiohttp
from aiohttp.client import DEFAULT_TIMEOUT
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from stagewright.api.v1alpha1 import GROUP, PLURAL, VERSION
from stagewright.handlers.liststream import ListParser

#: Told of every request: (method, status code or "error", seconds). Metrics hook in here.
RequestObserver = Callable[[str, str, float], None]

#: The JSON decoder of every response and watch event (measured: see benchmarks/README.md).
loads: Callable[[str | bytes | bytearray], Any] = json.loads

#: Status codes that mean "try again later" rather than "your request is wrong".
_TEMPORARY = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status message."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def temporary(self) -> bool:
        """Worth retrying: conflicts, throttling and server-side failures."""
        return self.status in _TEMPORARY


class NotLeaderError(ApiError):
    """A write refused before it left: this replica does not hold the Lease (any more)."""

    def __init__(self) -> None:
        super().__init__(503, "this replica does not hold the leader Lease; nothing written",
                         "NotLeader")


class WriteFence(Protocol):
    """Says whether a write may leave now (``election.Fence``)."""

    def check(self) -> None:
        """Raise NotLeaderError unless a write may leave now."""


def api_error(status: int, text: bytes) -> ApiError:
    """The ApiError for a non-2xx answer: the Status object's message and reason, or the
    first bytes of whatever else the server (or a proxy in front of it) sent."""
    try:
        document = loads(text) if text else {}
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    return ApiError(status, str(document.get("message") or text[:500].decode(errors="replace")),
                    str(document.get("reason") or ""))


def load_configuration() -> k8s_client.Configuration:
    """In-cluster config inside a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


#: How long a bearer token is reused before the configuration is asked again (in-cluster
#: tokens are refreshed by the kubelet well before they expire).
TOKEN_SECONDS = 30.0

#: The API server names a write's field manager after the client's User-Agent (up to the
#: first "/"): the operator's status writes show as "stagewright" in managedFields, not as
#: aiohttp's "Python".
USER_AGENT = "stagewright"

#: Connections to the API server at most; more requests wait for a free one (FIFO). With
#: STAGEWRIGHT_WORKERS at its default of 128, 64 kept a burst's writes flowing where 32 made
#: them queue (benchmarks/README.md, "The floor", run g2).
MAX_CONNECTIONS = 64
#: Connections for build-log reads (``pods/log``), a pool of their own: the kubelet streams a
#: log through the apiserver in 50-100 ms, longer than any write, and in the shared pool those
#: reads made the writes of other builds queue behind them under a burst (benchmarks/README.md,
#: "The floor").
MAX_LOG_CONNECTIONS = 16


class KubeApi:
    """Async calls on Pods, Secrets and ImageBuilds, dicts in and dicts out."""

    def __init__(self, configuration: k8s_client.Configuration, timeout: float = 30.0,
                 observer: RequestObserver | None = None,
                 fence: WriteFence | None = None) -> None:
        self._configuration = configuration
        self._base_url = configuration.host.rstrip("/")
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._ssl = context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        #: Connection pools by use: (connection limit, or 0 for none; default timeout).
        #: Watches hold a connection each for minutes and get a pool of their own, so they
        #: never take a slot from the requests of reconciles; so do build-log reads. (Watches
        #: and streamed lists set their own timeouts per request.)
        self._pool_limits: dict[str, tuple[int, aiohttp.ClientTimeout]] = {
            "requests": (MAX_CONNECTIONS, self._timeout),
            "watches": (0, DEFAULT_TIMEOUT),
            "logs": (MAX_LOG_CONNECTIONS, self._timeout),
        }
        self._pools: dict[str, aiohttp.ClientSession] = {}
        self._observer = observer
        #: With leader election: asked before every write but the Lease's (see the module).
        self.fence = fence
        self._bearer: str | None = None
        self._bearer_until = 0.0

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    def _open(self, pool: str = "requests") -> aiohttp.ClientSession:
        """The session of one connection pool (see ``_pool_limits``), opened on first use."""
        session = self._pools.get(pool)
        if session is None or session.closed:
            limit, timeout = self._pool_limits[pool]
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=limit)
            session = self._pools[pool] = aiohttp.ClientSession(
                connector=connector, timeout=timeout, headers={"User-Agent": USER_AGENT},
                trace_configs=[self._fence_trace()] if self.fence is not None else None)
        return session

    def _fence_trace(self) -> aiohttp.TraceConfig:
        """Asks the fence again once a fenced request has its connection, right before it is
        sent: a write that waited for a connection past the deadline is never sent."""

        async def connected(_session: aiohttp.ClientSession, context: SimpleNamespace,
                            _params: object) -> None:
            if context.trace_request_ctx == "fenced" and self.fence is not None:
                self.fence.check()

        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(connected)
        trace.on_connection_create_end.append(connected)
        return trace

    async def aclose(self) -> None:
        """Close the connection pools."""
        pools, self._pools = self._pools, {}
        for session in pools.values():
            await session.close()

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        authorization = self._authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def _authorization(self) -> str | None:
        """The bearer token, asked of the configuration at most every TOKEN_SECONDS.

        Asked again periodically, so in-cluster token rotation and exec plugins can refresh
        it; not per request: the kubeconfig loader rebuilds its configuration on each ask,
        which cost a few percent of the operator's CPU under a burst.
        """
        now = time.monotonic()
        if self._bearer_until <= now:
            bearer = self._configuration.auth_settings().get("BearerToken")
            self._bearer = str(bearer["value"]) if bearer and bearer.get("value") else None
            self._bearer_until = now + TOKEN_SECONDS
        return self._bearer

    async def _request(self, method: str, path: str, body: Any = None,
                       content_type: str = "application/json",
                       params: dict[str, str] | None = None,
                       fenced: bool = True) -> dict[str, Any] | None:
        """One API call; None for a 404 (the object is gone), ApiError for other failures.

        A write (``fenced``, any method but GET) is refused with NotLeaderError, unsent,
        unless the fence allows it now.
        """
        fenced = fenced and method != "GET" and self.fence is not None
        if fenced:
            assert self.fence is not None
            self.fence.check()
        started = time.monotonic()
        code = "error"
        try:
            code, text = await self._send(method, path, body, content_type, params, fenced)
        finally:
            if self._observer is not None:
                self._observer(method, code, time.monotonic() - started)
        status_code = int(code)
        if status_code == 404 and method in ("GET", "DELETE", "PATCH"):
            return None
        if status_code >= 400:
            raise api_error(status_code, text)
        try:
            result: dict[str, Any] = loads(text) if text else {}
        except ValueError as exc:  # a proxy's page, say: retried like a server failure
            raise ApiError(502, f"not JSON: {text[:200].decode(errors='replace')}",
                           "BadGateway") from exc
        return result

    async def _send(self, method: str, path: str, body: Any, content_type: str,
                    params: dict[str, str] | None, fenced: bool) -> tuple[str, bytes]:
        """The status code (as text, for metrics labels) and body of one request."""
        session = self._open()
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        try:
            async with session.request(method, self._base_url + path, data=data, params=params,
                                       headers=self._headers(content_type),
                                       trace_request_ctx="fenced" if fenced else None,
                                       ) as response:
                return str(response.status), await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, f"{type(exc).__name__}: {exc}", "Unreachable") from exc

    async def list_stream(self, path: str, params: dict[str, str],
                          on_item: Callable[[dict[str, Any]], None],
                          timeout: float = 300.0) -> dict[str, Any] | None:  # noqa: ASYNC109
        """One list request whose items are handed to ``on_item`` as they arrive (see
        ``liststream``); the list's own fields (metadata) are returned, or None when the path
        is not served (404). ``timeout`` bounds the wait for the next bytes."""
        session = self._open("watches")
        limits = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total,
                                       sock_read=timeout)
        parser = ListParser()
        try:
            async with session.get(self._base_url + path, params=params,
                                   headers=self._headers(), timeout=limits) as response:
                if response.status == 404:
                    return None
                if response.status >= 400:
                    raise api_error(response.status, await response.read())
                async for chunk in response.content.iter_chunked(256 * 1024):
                    for item in parser.feed(chunk):
                        on_item(item)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, f"{type(exc).__name__}: {exc}", "Unreachable") from exc
        parser.close()
        return parser.fields

    async def watch(self, path: str, params: dict[str, str],
                    timeout: float) -> AsyncIterator[dict[str, Any]]:  # noqa: ASYNC109
        """The events of one watch request (``watch=1`` is added), decoded, as they arrive.

        ``timeout`` bounds the wait for the next bytes, not the watch: the server ends it after
        ``timeoutSeconds``. A non-2xx answer raises ApiError (410 Gone: relist).
        """
        session = self._open("watches")
        limits = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total,
                                       sock_read=timeout)
        try:
            async with session.get(self._base_url + path, params={**params, "watch": "1"},
                                   headers=self._headers(), timeout=limits) as response:
                if response.status >= 400:
                    raise api_error(response.status, await response.read())
                buffer = bytearray()
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    if b"\n" not in chunk:
                        continue
                    *lines, rest = buffer.split(b"\n")
                    buffer = bytearray(rest)
                    for line in lines:
                        if line.strip():
                            yield loads(line)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, f"{type(exc).__name__}: {exc}", "Unreachable") from exc

    # ImageBuilds

    async def get_imagebuild(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ImageBuild as stored now, or None when it is gone."""
        return await self._request("GET", _imagebuild_path(namespace, name))

    async def patch_imagebuild_status(self, namespace: str, name: str,
                                      status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch ``status`` through the status subresource (spec is never written).

        None when the ImageBuild was deleted meanwhile: there is nothing left to report to.
        """
        return await self._request(
            "PATCH", _imagebuild_path(namespace, name) + "/status", {"status": status},
            content_type="application/merge-patch+json",
        )

    # Pods

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector (selected by the server)."""
        found = await self._request("GET", f"/api/v1/namespaces/{namespace}/pods",
                                    params={"labelSelector": label_selector})
        return list((found or {}).get("items") or [])

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Pod, or None when it does not exist."""
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    async def create_pod(self, pod: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``pod``; on 409 return the existing one. The flag says whether it was new."""
        namespace = pod["metadata"]["namespace"]
        try:
            created = await self._request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = await self.get_pod(namespace, pod["metadata"]["name"])
            if existing is None:  # deleted between the two calls: let the caller retry
                raise
            return existing, False
        assert created is not None
        return created, True

    async def read_pod_log(self, namespace: str, name: str, container: str,
                           limit_bytes: int, tail_lines: int | None = None) -> str | None:
        """The first ``limit_bytes`` of a container's log (``pods/log``); None when gone.

        The API server stops at ``limitBytes``, and the body is read no further than that
        here either, so a chatty build cannot make the operator buffer its whole log.
        """
        params = {"container": container, "limitBytes": str(limit_bytes)}
        if tail_lines is not None:
            params["tailLines"] = str(tail_lines)
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/log"
        session = self._open("logs")
        body = bytearray()
        try:
            async with session.get(self._base_url + path, params=params,
                                   headers=self._headers()) as response:
                if response.status == 404:
                    return None
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk[: limit_bytes - len(body)]
                    if len(body) >= limit_bytes:
                        break
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, f"{type(exc).__name__}: {exc}", "Unreachable") from exc
        if status >= 400:
            raise api_error(status, bytes(body))
        return bytes(body).decode(errors="replace")

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a Pod (background propagation); False when it was already gone."""
        deleted = await self._request(
            "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
        )
        return deleted is not None

    # Events

    async def create_event(self, event: dict[str, Any]) -> None:
        """Post a core/v1 Event (built by ``resources.events``)."""
        namespace = event["metadata"]["namespace"]
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", event)

    # The leader Lease (never fenced: taking and renewing it is what opens the fence)

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A coordination.k8s.io/v1 Lease, or None when it does not exist."""
        return await self._request("GET", _lease_path(namespace, name))

    async def create_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Create a Lease; ApiError 409 when another replica created it first."""
        namespace = lease["metadata"]["namespace"]
        created = await self._request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", lease,
            fenced=False)
        assert created is not None
        return created

    async def replace_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Replace a Lease (PUT) if its resourceVersion is still the stored one; ApiError 409
        when another replica wrote it since."""
        meta = lease["metadata"]
        replaced = await self._request("PUT", _lease_path(meta["namespace"], meta["name"]),
                                       lease, fenced=False)
        assert replaced is not None
        return replaced

    # Objects an ImageBuild refers to

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret (push or git credentials), or None when it does not exist."""
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap (a build context), or None when it does not exist."""
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")


def _lease_path(namespace: str, name: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"


def _imagebuild_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"

