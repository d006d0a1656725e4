"""The API client candidates under the operator's burst pattern: N call sequences at once.

Under a burst, every ImageBuild event starts a handler at once, so the client sees hundreds of
requests in flight. Each candidate makes the same N sequences of three real calls against the
same kube-apiserver (create a pod, read it, delete it), all started together; the harness
records wall time, per-sequence latency and the CPU the client used. Candidates: the operator's
former httpx client, httpx behind a semaphore, kubernetes_asyncio (aiohttp under generated
models), and the operator's KubeApi on aiohttp.
"""

from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from sandbox.controlplane import ControlPlane
from stagewright.handlers.kube_api import KubeApi

#: A candidate still busy after this long is stopped and reported as not finished.
CAP_SECONDS = 120.0
#: One call sequence: (namespace, pod name) -> None.
Sequence = Callable[[str, str], Awaitable[None]]


def _pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "bench:none"}]}}


def _configuration(control_plane: ControlPlane) -> k8s_client.Configuration:
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(control_plane.admin.kubeconfig),
                                client_configuration=configuration)
    return configuration


async def _measure(name: str, sequence: Sequence, namespace: str, count: int) -> dict[str, Any]:
    latencies: list[float] = []

    async def one(index: int) -> None:
        started = time.monotonic()
        await sequence(namespace, f"p{index:05d}")
        latencies.append(time.monotonic() - started)

    cpu, wall = time.process_time(), time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    _, unfinished = await asyncio.wait(tasks, timeout=CAP_SECONDS)
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    result: dict[str, Any] = {
        "client": name, "sequences": count, "completed": len(latencies),
        "wall_seconds": round(wall, 2), "client_cpu_seconds": round(cpu, 2)}
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        result["sequence_p50_p99_seconds"] = [round(cuts[49], 3), round(cuts[98], 3)]
    if unfinished:
        result["gave_up_after_seconds"] = CAP_SECONDS
    return result


def _httpx_sequence(client: httpx.AsyncClient, token: str,
                    slots: asyncio.Semaphore | None) -> Sequence:
    headers = {"Authorization": f"Bearer {token}"}

    async def call(method: str, path: str, body: Any = None) -> None:
        if slots is None:
            response = await client.request(method, path, json=body, headers=headers)
        else:
            async with slots:
                response = await client.request(method, path, json=body, headers=headers)
        response.raise_for_status()

    async def sequence(namespace: str, name: str) -> None:
        base = f"/api/v1/namespaces/{namespace}/pods"
        await call("POST", base, _pod(name))
        await call("GET", f"{base}/{name}")
        await call("DELETE", f"{base}/{name}")

    return sequence


def _kubeapi_sequence(api: KubeApi) -> Sequence:
    async def sequence(namespace: str, name: str) -> None:
        pod = _pod(name)
        pod["metadata"]["namespace"] = namespace
        await api.create_pod(pod)
        await api.get_pod(namespace, name)
        await api.delete_pod(namespace, name)

    return sequence


async def compare(control_plane: ControlPlane, count: int,
                  create_namespace: Callable[[str], Awaitable[None]]) -> list[dict[str, Any]]:
    """Run every candidate once, each in its own namespace, and return their figures."""
    configuration = _configuration(control_plane)
    token = control_plane.admin.token
    trust = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    results = []
    for candidate in ("httpx", "httpx+semaphore(32)", "kubernetes_asyncio", "aiohttp (KubeApi)"):
        namespace = "clients-" + "".join(c for c in candidate.lower() if c.isalnum())[:40]
        await create_namespace(namespace)
        if candidate.startswith("httpx"):
            slots = asyncio.Semaphore(32) if "semaphore" in candidate else None
            async with httpx.AsyncClient(base_url=control_plane.url, verify=trust,
                                         timeout=300) as client:
                results.append(await _measure(candidate, _httpx_sequence(client, token, slots),
                                              namespace, count))
        elif candidate == "kubernetes_asyncio":
            results.append(await _kubernetes_asyncio(control_plane, namespace, count))
        else:
            async with KubeApi(configuration, timeout=300) as api:
                results.append(await _measure(candidate, _kubeapi_sequence(api), namespace,
                                              count))
    return results


async def _kubernetes_asyncio(control_plane: ControlPlane, namespace: str,
                              count: int) -> dict[str, Any]:
    try:
        from kubernetes_asyncio import client, config  # noqa: PLC0415 - optional candidate
    except ImportError:
        return {"client": "kubernetes_asyncio", "skipped": "pip install kubernetes-asyncio"}
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(control_plane.admin.kubeconfig),
                                  client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        core = client.CoreV1Api(api_client)

        async def sequence(ns: str, name: str) -> None:
            await core.create_namespaced_pod(ns, cast(Any, _pod(name)))
            await core.read_namespaced_pod(name, ns)
            await core.delete_namespaced_pod(name, ns)

        return await _measure("kubernetes_asyncio", sequence, namespace, count)
