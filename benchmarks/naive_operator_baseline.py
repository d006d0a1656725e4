"""BASELINE for benchmarks/burst.py, not Stagewright: the naive kopf operator an afternoon gives.

kopf's defaults throughout (progress and diff-base annotations, sync handlers in kopf's thread
pool, the synchronous ``kubernetes`` client): on.create makes the build pod, and a pod handler
copies the digest from the termination message and the size from the registry into status.
Run: ``kopf run --standalone -n NAMESPACE benchmarks/naive_operator_baseline.py``.
"""

from __future__ import annotations

import os
from typing import Any, cast

import httpx
import kopf
import kubernetes

kubernetes.config.load_kube_config()
core = kubernetes.client.CoreV1Api()
custom = kubernetes.client.CustomObjectsApi()
# The benchmark's registry has a self-signed certificate (the ImageBuilds say insecure: true).
registry = httpx.Client(verify=False, timeout=10)
LABEL = "baseline.stagewright.dev/imagebuild"
ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"


@kopf.on.create("stagewright.dev", "v1alpha1", "imagebuilds")
def create_pod(name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body,
               patch: kopf.Patch, **_: Any) -> None:
    """Make the Kaniko pod for a new ImageBuild."""
    output = spec["output"]
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{name}-build", "labels": {LABEL: name}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "kaniko", "image": os.environ.get("KANIKO_IMAGE", "kaniko:bench"),
            "args": [f"--context={spec['source'].get('url', '')}",
                     f"--destination={output['image']}:latest",
                     "--digest-file=/dev/termination-log"]}]},
    }
    kopf.adopt(pod, owner=body)
    core.create_namespaced_pod(str(namespace), cast(Any, pod))
    patch.status["phase"] = "Building"
    patch.status["podName"] = pod["metadata"]["name"]


@kopf.on.field("", "v1", "pods", field="status.phase", labels={LABEL: kopf.PRESENT})
def pod_phase(new: Any, namespace: str | None, labels: kopf.Labels, status: kopf.Status,
              **_: Any) -> None:
    """Copy the digest and size of a finished build into its ImageBuild's status."""
    if new != "Succeeded":
        return
    name, namespace = labels[LABEL], str(namespace)
    build = cast(dict[str, Any], custom.get_namespaced_custom_object(
        "stagewright.dev", "v1alpha1", namespace, "imagebuilds", name))
    image = build["spec"]["output"]["image"]
    repository, path = image.split("/", 1)
    digest = status["containerStatuses"][0]["state"]["terminated"]["message"].strip()
    manifest = registry.get(f"https://{repository}/v2/{path}/manifests/{digest}",
                            headers={"Accept": ACCEPT}).json()
    size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    custom.patch_namespaced_custom_object_status(
        "stagewright.dev", "v1alpha1", namespace, "imagebuilds", name,
        {"status": {"phase": "Succeeded", "digest": digest, "size": size,
                    "image": f"{image}@{digest}"}})
