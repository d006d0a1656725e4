"""The operator image builds from operator/Dockerfile, is kept, and is pushed, without Docker.

hack/build-operator-image.sh makes a Debian bookworm base with debootstrap (no image can be
pulled here), serves it from a throwaway local registry, builds the real Dockerfile on it with
buildah, runs `stagewright --help` and run-time checks in the result as uid 65532, keeps it as
an OCI archive named by the sources' content key, and pushes it to the sandbox registry. About
three minutes cold (debootstrap and PyPI), seconds when the sources are unchanged; needs root.
The image's real test is test_install.py: the chart and the kustomize base run it in-cluster.
"""

from __future__ import annotations

import httpx
import pytest
from tests.cluster.installs import OperatorImage

from sandbox.stack import Sandbox

pytestmark = pytest.mark.cluster

#: What a registry stores for the image (config + compressed layers). The python slim base is
#: ~45 MB of it; the budget catches a build toolchain or a cache leaking into the runtime stage.
COMPRESSED_BUDGET = 120 * 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def test_operator_image_is_kept_pushed_and_small(sandbox: Sandbox,
                                                 operator_image: OperatorImage) -> None:
    assert 0 < operator_image.compressed < COMPRESSED_BUDGET, (
        f"{operator_image.compressed / 2**20:.1f} MiB")
    assert operator_image.uncompressed > operator_image.compressed
    # Kept, not deleted: the archive later runs reuse, named by the content key.
    assert operator_image.archive.is_file(), operator_image.log[-2000:]
    # Pushed: the registry serves that very digest (the reference a chart pins).
    repository = operator_image.repository.split("/", 1)[1]
    response = httpx.head(
        f"{sandbox.registry.url}/v2/{repository}/manifests/{operator_image.digest}",
        headers={"Accept": OCI_MANIFEST}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == operator_image.digest
    # Built here or reused from the cache: both are said, and a build ran the image itself.
    if "cached:" not in operator_image.log:
        assert "usage: stagewright" in operator_image.log, operator_image.log[-2000:]
