"""What a build pod would mount or read, looked up before it is created.

A pod whose ConfigMap or Secret is missing only waits on its volume without saying why; the
reconciler says it in status instead, and launches once the object exists. The ConfigMap
context is read here anyway (to report it missing), so its keys, which the pod mounts one by
one, and its Dockerfile (for cross-platform checks and the trigger watch) come from the same
read.
"""

from __future__ import annotations

from typing import NamedTuple

from stagewright.api.v1alpha1 import ContextFile, ImageBuild
from stagewright.handlers.kube_api import KubeApi
from stagewright.resources.pod_common import context_files, dockerfile_key, missing_context_keys
from stagewright.settings import Settings


class References(NamedTuple):
    """What a build pod would mount or read that does not exist, the ConfigMap context's
    files, and its Dockerfile (None for other sources)."""

    missing: list[str]
    files: list[ContextFile]
    dockerfile: str | None


async def build_references(api: KubeApi, settings: Settings, build: ImageBuild) -> References:
    """Look up the build's ConfigMaps and Secrets: one read of each."""
    spec, namespace = build.spec, build.namespace
    missing: list[str] = []
    files: list[ContextFile] = []
    dockerfile: str | None = None
    source = spec.source.config_map
    if source is not None:
        config_map = await api.get_configmap(namespace, source.name)
        if config_map is None:
            missing.append(f"ConfigMap {source.name}")
        else:
            keys = [*(config_map.get("data") or {}), *(config_map.get("binaryData") or {})]
            missing += [f"key {key} of ConfigMap {source.name}"
                        for key in missing_context_keys(source, keys)]
            files = context_files(source, keys)
            text = (config_map.get("data") or {}).get(dockerfile_key(spec) or "")
            dockerfile = text if isinstance(text, str) else None
    bundle = settings.ca_bundle_configmap
    if bundle and await api.get_configmap(namespace, bundle) is None:
        missing.append(f"ConfigMap {bundle} (the operator's CA bundle)")
    git_secret = spec.source.git.secret_ref if spec.source.git else None
    for ref in (spec.output.push_secret_ref, git_secret):
        if ref is not None and await api.get_secret(namespace, ref.name) is None:
            missing.append(f"Secret {ref.name}")
    return References(missing, files, dockerfile)
