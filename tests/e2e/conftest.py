"""Opt-in end-to-end tier: a kind cluster (hack/kind-up.sh) running the operator and real Kaniko.

Enabled with ``--e2e``; pass it with this directory on the command line
(``python -m pytest tests/e2e --e2e``), so pytest loads this conftest before parsing options.
Without ``--e2e``, or without a reachable cluster, every test here is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.tooling import run, tool

HERE = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--e2e", action="store_true", default=False,
        help="run tests/e2e against the current kube context (a kind cluster from "
        "hack/kind-up.sh with the operator installed and the local registry on localhost:5001)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="e2e tests are opt-in: pass --e2e (needs hack/kind-up.sh)")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            if not config.getoption("--e2e"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def kubectl() -> Path:
    """kubectl for the current context, once the cluster answers; else skip with the reason."""
    path = tool("kubectl")
    result = run([path, "cluster-info", "--request-timeout=10s"], check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(
            "no Kubernetes cluster reachable (`kubectl cluster-info` failed; create one with "
            f"hack/kind-up.sh): {last}",
        )
    return path
