"""A small async Kubernetes REST client for the handful of calls the operator makes.

Why not the ``kubernetes`` client's API classes: they are synchronous and (since v30)
convert every body through generated pydantic models, while the operator builds plain dicts
and runs in kopf's event loop. Configuration (kubeconfig, in-cluster token rotation, exec
plugins) still comes from the ``kubernetes`` package, so credentials behave as users expect.
"""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Any, Self

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from stagewright.api.v1alpha1 import GROUP, PLURAL, VERSION

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


def load_configuration() -> k8s_client.Configuration:
    """In-cluster config inside a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    configuration = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


class KubeApi:
    """Async calls on Pods, Secrets and ImageBuilds, dicts in and dicts out."""

    def __init__(self, configuration: k8s_client.Configuration, timeout: float = 30.0) -> None:
        self._configuration = configuration
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._http = httpx.AsyncClient(
            base_url=configuration.host.rstrip("/"), verify=context, timeout=timeout,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # Asked each time, so in-cluster token rotation and exec plugins can refresh it.
        bearer = self._configuration.auth_settings().get("BearerToken")
        if bearer and bearer.get("value"):
            headers["Authorization"] = str(bearer["value"])
        return headers

    async def _request(self, method: str, path: str, body: Any = None,
                       content_type: str = "application/json",
                       params: dict[str, str] | None = None) -> dict[str, Any] | None:
        """One API call; None for a 404 (the object is gone), ApiError for other failures."""
        try:
            response = await self._http.request(
                method, path, json=body, headers=self._headers(content_type), params=params,
            )
        except httpx.HTTPError as exc:
            raise ApiError(503, f"{type(exc).__name__}: {exc}", "Unreachable") from exc
        if response.status_code == 404 and method in ("GET", "DELETE", "PATCH"):
            return None
        if response.is_error:
            try:
                status = response.json()
            except ValueError:
                status = {}
            raise ApiError(response.status_code, str(status.get("message") or response.text[:500]),
                           str(status.get("reason") or ""))
        result: dict[str, Any] = response.json()
        return result

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
                           limit_bytes: int) -> str | None:
        """The first ``limit_bytes`` of a container's log (``pods/log``); None when gone.

        The API server stops at ``limitBytes``, and the body is read no further than that
        here either, so a chatty build cannot make the operator buffer its whole log.
        """
        params = {"container": container, "limitBytes": str(limit_bytes)}
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/log"
        try:
            async with self._http.stream("GET", path, params=params,
                                         headers=self._headers()) as response:
                if response.status_code == 404:
                    return None
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk[: limit_bytes - len(body)]
                    if len(body) >= limit_bytes:
                        break
        except httpx.HTTPError as exc:
            raise ApiError(503, f"{type(exc).__name__}: {exc}", "Unreachable") from exc
        if response.is_error:
            raise ApiError(response.status_code, bytes(body[:500]).decode(errors="replace"))
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

    # Objects an ImageBuild refers to

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret (push or git credentials), or None when it does not exist."""
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap (a build context), or None when it does not exist."""
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")


def _imagebuild_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"

