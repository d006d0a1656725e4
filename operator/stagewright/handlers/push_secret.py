"""The push Secret as the registry client takes it: a parsed ``.dockerconfigjson``.

The Secret that lets the builder push also grants the operator read access (and push access,
to tag an image a size budget staged), so every registry call the operator makes for an
ImageBuild's output uses it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from stagewright.api.v1alpha1 import ImageBuild
from stagewright.handlers.kube_api import KubeApi
from stagewright.registry import RegistryError


async def docker_config(api: KubeApi, build: ImageBuild) -> dict[str, Any] | None:
    """The push Secret's dockerconfigjson, which also grants the operator read access."""
    ref = build.spec.output.push_secret_ref
    return None if ref is None else await secret_docker_config(api, build.namespace, ref.name)


async def secret_docker_config(api: KubeApi, namespace: str, name: str) -> dict[str, Any]:
    """A ``kubernetes.io/dockerconfigjson`` Secret's parsed config; RegistryError if it is
    missing or unreadable."""
    secret = await api.get_secret(namespace, name)
    if secret is None:
        raise RegistryError(f"Secret {name} was deleted after the push; the operator "
                            "cannot check the pushed image")
    encoded = (secret.get("data") or {}).get(".dockerconfigjson")
    if not encoded:
        raise RegistryError(f"Secret {name} has no .dockerconfigjson key; the "
                            "operator cannot check the pushed image")
    try:
        config = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise RegistryError(f"Secret {name} holds no valid .dockerconfigjson "
                            f"({exc})") from exc
    if not isinstance(config, dict):
        raise RegistryError(f"Secret {name}: .dockerconfigjson is not a JSON object")
    return config
