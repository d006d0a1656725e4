"""What the cluster tier's build tests share: a ConfigMap context, an ImageBuild, waits."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.stack import IMAGEBUILD_API, Sandbox

#: A build that runs a few seconds (a RUN step sleeping), so something can happen meanwhile.
SLOW_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
ARG STEP=one
RUN echo "step ${STEP}" && sleep 6
"""
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join([DOCKER_MANIFEST, "application/vnd.oci.image.manifest.v1+json"])


def context(namespace: str, dockerfile: str, name: str = "ctx",
            files: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"Dockerfile": dockerfile, **(files or {})}}


def imagebuild(sandbox: Sandbox, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    output = {"image": f"{sandbox.registry.host}/{namespace}/{name}", "insecure": True,
              **spec.pop("output", {})}
    return {
        "apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": {"configMap": {"name": "ctx"}},
                 "buildArgs": {"BASE": sandbox.base_image}, "output": output, **spec},
    }


def manifest(sandbox: Sandbox, repository: str, reference: str) -> tuple[str, dict[str, Any]]:
    """The registry's own answer: (Docker-Content-Digest, manifest JSON)."""
    response = httpx.get(f"{sandbox.registry.url}/v2/{repository}/manifests/{reference}",
                         headers={"Accept": ACCEPT}, timeout=10)
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"], response.json()


def pods(sandbox: Sandbox, namespace: str, build: str) -> list[dict[str, Any]]:
    return sandbox.admin.list("v1", "Pod", namespace,
                              label_selector=f"stagewright.dev/imagebuild={build}")


def wait_phase(sandbox: Sandbox, namespace: str, name: str, phase: str,
               timeout: float = 60, reason: str | None = None) -> dict[str, Any]:
    """Wait for ``phase`` (and ``reason``, if given: a new ImageBuild is Pending from its
    first moment, AwaitingOperator, so Pending alone says nothing about the operator)."""
    def reached(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        return status.get("phase") == phase and reason in (None, status.get("reason"))

    return sandbox.admin.wait_for(IMAGEBUILD_API, "ImageBuild", name, namespace, reached,
                                  timeout, f"{phase} {reason or ''}".strip())


def wait_pod_running(sandbox: Sandbox, namespace: str, name: str) -> dict[str, Any]:
    return sandbox.admin.wait_for(
        "v1", "Pod", name, namespace,
        lambda p: (p.get("status") or {}).get("phase") == "Running", 60, "running")
