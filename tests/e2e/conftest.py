"""Opt-in end-to-end tier: a kind cluster (hack/kind-up.sh) running the operator and real Kaniko.

Enabled with ``--e2e``; pass it with this directory on the command line
(``python -m pytest tests/e2e --e2e``, or ``make test-e2e``), so pytest loads this conftest
before parsing options. Without ``--e2e`` every test here is skipped as opt-in. With it, a
missing kubectl or an unreachable cluster is an error, never a skip: a tier someone asked for
must not pass green without running.

kubectl is the user's (``$STAGEWRIGHT_E2E_KUBECTL`` or the first on PATH), for the current
kube context; its version skew against the server is checked and reported.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from tests.tooling import Kubectl, user_kubectl

HERE = Path(__file__).resolve().parent
#: kubectl's supported skew: one minor version older or newer than the apiserver.
SUPPORTED_SKEW = 1


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


def _minor(version: dict[str, str]) -> int:
    # gitVersion is authoritative; "minor" carries a "+" on some providers ("33+").
    return int(version["gitVersion"].lstrip("v").split(".")[1])


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    """The user's kubectl, once the current context's cluster answers; else fail saying why."""
    kube = Kubectl(user_kubectl())
    context = kube.run("config", "current-context", timeout=30).stdout.strip() or "(none)"
    result = kube.run("version", "--output=json", "--request-timeout=10s", timeout=30)
    try:
        versions = json.loads(result.stdout)
    except json.JSONDecodeError:
        versions = {}
    if result.returncode != 0 or "serverVersion" not in versions:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(
            f"--e2e was given, but no Kubernetes cluster answered {kube.path} in context "
            f"{context!r}: {last}\nCreate one with `make kind-up` (hack/kind-up.sh), or select "
            "its context with `kubectl config use-context`.",
            pytrace=False,
        )
    client, server = versions["clientVersion"], versions["serverVersion"]
    skew = _minor(client) - _minor(server)
    if abs(skew) > SUPPORTED_SKEW:
        # A warning, not a failure: the commands used here are old and stable, but an error
        # from kubectl should be read knowing it is outside its supported skew.
        warnings.warn(
            f"{kube.path} is kubectl {client['gitVersion']}, the server in context {context!r} "
            f"is {server['gitVersion']}: {abs(skew)} minor versions apart (kubectl supports "
            f"{SUPPORTED_SKEW}). Use a matching kubectl (STAGEWRIGHT_E2E_KUBECTL) or create "
            "the cluster with KIND_NODE_IMAGE=kindest/node:<your kubectl's version>.",
            stacklevel=1,
        )
    return kube
