"""Buildah's least privilege, shown on the real node: each capability it gets is needed.

Each pod is the operator's own Buildah pod (``resources.build_pod``) for a build with a RUN
step, with one capability taken away; it must fail, with buildah's own words where they are
stable, and the unchanged pod must succeed. docs/install.md explains what each one is for.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.cluster.builds import context, imagebuild

from sandbox.stack import Sandbox
from stagewright.api.v1alpha1 import ImageBuild
from stagewright.resources.build_pod import build_pod
from stagewright.resources.pod_common import LABEL_MANAGED_BY, context_files
from stagewright.settings import Settings

pytestmark = pytest.mark.cluster

#: A capability taken away, and the words buildah then fails with ("": any failure; None:
#: nothing taken away, the build succeeds). Every RUN step asks for buildah's default set, so
#: most of them fail when the step starts.
CASES = [
    (None, None),
    ("SYS_ADMIN", "unshare(CLONE_NEWUSER): Operation not permitted"),
    ("SYS_CHROOT", "after fallback to chroot: operation not permitted"),
    ("SETFCAP", "error setting capabilities for process"),
    ("CHOWN", "error setting capabilities for process"),
    ("FOWNER", "error setting capabilities for process"),
    ("FSETID", "error setting capabilities for process"),
    ("KILL", "error setting capabilities for process"),
    ("SETUID", "error setting capabilities for process"),
    ("SETGID", "error setting supplemental groups list"),
    ("DAC_OVERRIDE", ""),
]


def _pod_without(sandbox: Sandbox, namespace: str, capability: str | None) -> dict[str, Any]:
    build = ImageBuild.model_validate(imagebuild(sandbox, namespace, "probe", builder="buildah",
                                                 cache={"enabled": False}))
    assert build.spec.source.config_map is not None
    pod = build_pod(build, Settings(buildah_image=sandbox.images.buildah), key="1", attempt=1,
                    files=context_files(build.spec.source.config_map, ["Dockerfile"]))
    pod["metadata"]["name"] = f"without-{(capability or 'nothing').lower().replace('_', '-')}"
    del pod["metadata"]["labels"][LABEL_MANAGED_BY]  # not the operator's to follow
    added = pod["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    if capability is not None:
        added.remove(capability)
    return pod


@pytest.mark.parametrize(("capability", "words"), CASES, ids=lambda case: case or "none")
def test_each_capability_is_needed(sandbox: Sandbox, namespace: str,
                                                  capability: str | None,
                                                  words: str | None) -> None:
    admin = sandbox.admin
    admin.apply([context(namespace, "ARG BASE\nFROM ${BASE}\nRUN echo built > /built\n")])
    pod = _pod_without(sandbox, namespace, capability)
    name = pod["metadata"]["name"]
    admin.apply([pod])
    done = admin.wait_for("v1", "Pod", name, namespace,
                          lambda p: (p.get("status") or {}).get("phase") in ("Succeeded",
                                                                              "Failed"),
                          120, "finished")
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    if words is None:
        assert done["status"]["phase"] == "Succeeded", terminated.get("message")
        assert terminated["message"].startswith("sha256:")
    else:
        assert done["status"]["phase"] == "Failed"
        assert words in terminated["message"], terminated["message"][-1500:]
