"""Shared helpers for the packaging tests: find helm and kubectl, render, validate.

helm and kubectl come from ``hack/install-tools.sh`` (``make deps``), which puts pinned
binaries in ``$STAGEWRIGHT_CACHE/bin`` (default ``~/.cache/stagewright/bin``). A missing tool
fails the test with the command that installs it: a silent skip would let CI pass without
ever rendering the chart.

The e2e tier is different: it talks to the user's own cluster, so it uses the user's kubectl
(:func:`user_kubectl`), built for their OS and architecture and close to their server's
version, not the pinned linux/amd64 one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "stagewright"
MANIFESTS = ROOT / "manifests"
SAMPLES = MANIFESTS / "samples"
CRD_NAME = "imagebuilds.stagewright.dev.yaml"
#: The generated CRD (the lead's generator writes it) and the copies that must equal it.
CRD_SOURCE = ROOT / "crds" / CRD_NAME
CRD_COPIES = (CHART / "files" / "crds" / CRD_NAME,)
#: The Kubernetes version whose official schemas every rendered object must pass.
KUBERNETES_VERSION = "1.33.0"

Obj = dict[str, Any]


def cache_dir() -> Path:
    """The project's tool cache, as hack/install-tools.sh computes it."""
    if "STAGEWRIGHT_CACHE" in os.environ:
        return Path(os.environ["STAGEWRIGHT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "stagewright"


def tool(name: str) -> Path:
    """The path of ``helm`` or ``kubectl`` installed by hack/install-tools.sh, or fail."""
    path = cache_dir() / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{name} is not installed at {path}: run `make deps` "
            "(or hack/install-tools.sh) to install helm and kubectl",
            pytrace=False,
        )
    return path


def user_kubectl() -> Path:
    """The kubectl of ``$STAGEWRIGHT_E2E_KUBECTL``, else the first on PATH; or fail saying so."""
    wanted = os.environ.get("STAGEWRIGHT_E2E_KUBECTL") or "kubectl"
    found = shutil.which(wanted)
    if found is None:
        pytest.fail(
            f"kubectl not found ({wanted!r} is not an executable on PATH): install the kubectl "
            "that matches your cluster, or point STAGEWRIGHT_E2E_KUBECTL at one",
            pytrace=False,
        )
    return Path(found)


@dataclass(frozen=True)
class Kubectl:
    """A kubectl binary, run without a shell against the current context."""

    path: Path

    def run(self, *args: str, stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run kubectl; the result whatever the exit code (a hung call fails the test)."""
        try:
            return subprocess.run(
                [str(self.path), *args], input=stdin, capture_output=True, text=True,
                timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"kubectl {' '.join(args)} did not finish in {timeout:.0f}s",
                        pytrace=False)

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        """Run kubectl and return its stdout; fail the test with its stderr on an error."""
        result = self.run(*args, stdin=stdin, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}",
                pytrace=False,
            )
        return result.stdout


def run(argv: Sequence[str | Path], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command without a shell; on failure with ``check``, fail showing its stderr."""
    result = subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, timeout=120, check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stderr}",
            pytrace=False,
        )
    return result


def load_documents(text: str) -> list[Obj]:
    """Every non-empty YAML document in ``text``."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def helm_template(
    *values: str, release: str = "stagewright", namespace: str = "stagewright-system",
    kube_version: str | None = None,
) -> list[Obj]:
    """``helm template`` the chart with ``--set`` style ``values``; the rendered objects."""
    argv: list[str | Path] = [tool("helm"), "template", release, CHART, "--namespace", namespace]
    if kube_version:
        argv += ["--kube-version", kube_version]
    for value in values:
        argv += ["--set", value]
    return load_documents(run(argv).stdout)


def kustomize(path: Path = MANIFESTS) -> list[Obj]:
    """``kubectl kustomize`` with the default (root-only) load restrictor; the objects."""
    return load_documents(run([tool("kubectl"), "kustomize", path]).stdout)


def validate(obj: Mapping[str, Any]) -> None:
    """Check ``obj`` against the official schemas of KUBERNETES_VERSION, unknown fields too."""
    kubernetes_validate.validate(dict(obj), KUBERNETES_VERSION, strict=True)


def schema_errors(objs: Iterable[Obj]) -> list[str]:
    """One line per object that fails the official schemas, so a test reports all at once."""
    errors = []
    for obj in objs:
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    return errors


def by_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    """The objects of one kind."""
    return [obj for obj in objs if obj.get("kind") == kind]


def one(objs: Iterable[Obj], kind: str) -> Obj:
    """The single object of ``kind``; fails when there are none or several."""
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def normalized_rules(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules as a set of (apiGroup, resource, verb): compares grants, not layout."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def crd() -> Obj:
    """The generated CRD, or fail saying who makes it."""
    if not CRD_SOURCE.exists():
        pytest.fail(f"{CRD_SOURCE} is missing: generate it with `stagewright crd`", pytrace=False)
    loaded: Obj = yaml.safe_load(CRD_SOURCE.read_text())
    return loaded


def imagebuild_schema() -> Obj:
    """The ImageBuild openAPIV3Schema of the served (storage) version."""
    version = next(v for v in crd()["spec"]["versions"] if v.get("storage"))
    schema: Obj = version["schema"]["openAPIV3Schema"]
    return schema
