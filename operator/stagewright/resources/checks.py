"""Check stages (``spec.checks``) as init containers of the build pod. Pure.

Why init containers: the kubelet runs them one by one, in order, before the build container,
and a failing one ends the pod before the target is built, so nothing is pushed; they share
the pod's ``activeDeadlineSeconds`` (one deadline for the whole build), its volumes (the
context is fetched or mounted once per pod) and its registry credentials. Each is the build
container with ``--target=<stage> --no-push``: same context, build args and cache repo, so
layers a check built are pushed to the cache and the target's build reuses them.
"""

from __future__ import annotations

import copy
from typing import Any

from stagewright.api.v1alpha1 import ImageBuildSpec, check_container_name

#: Flags of the build container that a check does not take: it builds another stage and
#: pushes nothing (the cache flags stay, so the cache is shared).
_TARGET_FLAGS = ("--target=", "--destination=", "--digest-file=", "--push-retry=")


def check_containers(build_container: dict[str, Any],
                     spec: ImageBuildSpec) -> list[dict[str, Any]]:
    """One init container per check stage, in order, derived from the build container."""
    containers = []
    for index, stage in enumerate(spec.checks):
        container = copy.deepcopy(build_container)
        args = [arg for arg in container["args"] if not arg.startswith(_TARGET_FLAGS)]
        container["name"] = check_container_name(index)
        container["args"] = [*args, f"--target={stage}", "--no-push"]
        container.pop("terminationMessagePath", None)  # the log tail on failure is enough
        containers.append(container)
    return containers
