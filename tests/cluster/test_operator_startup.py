"""The operator may start before its CRD exists, as when both come from one `kubectl apply -k`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sandbox.cluster import Cluster, OperatorProcess, install_crd, install_stagewright
from sandbox.controlplane import ControlPlane
from sandbox.stack import IMAGEBUILD_API

pytestmark = pytest.mark.cluster

LATE = {
    "apiVersion": IMAGEBUILD_API, "kind": "ImageBuild",
    "metadata": {"name": "late", "namespace": "default"},
    "spec": {"source": {"configMap": {"name": "ctx"}},
             "output": {"image": "registry.example.com/late"}},
}


def test_imagebuilds_are_served_once_the_crd_appears(tmp_path: Path) -> None:
    """kopf watches CRDs with the RBAC we ship, and picks ImageBuilds up without a restart."""
    (tmp_path / "cp").mkdir()
    with ControlPlane(tmp_path / "cp") as control_plane:
        admin = Cluster(control_plane.admin.kubeconfig)
        install_stagewright(admin, crd=False)  # RBAC first: the operator starts authorised
        with OperatorProcess(control_plane, tmp_path / "operator.log") as operator:
            time.sleep(3)  # the operator is up and has found no ImageBuild resource yet
            install_crd(admin)
            admin.apply([LATE])
            try:  # its ConfigMap does not exist: the operator says so, which is enough here
                admin.wait_for(
                    IMAGEBUILD_API, "ImageBuild", "late", "default",
                    lambda o: (o.get("status") or {}).get("reason") == "ReferenceNotFound", 60,
                    "reconciled")
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n--- operator log\n{operator.log()[-3000:]}") \
                    from None
            assert "forbidden" not in operator.log().lower()
