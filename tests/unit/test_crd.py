"""The CRD is generated from the models; the committed YAML must match, and be valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from stagewright.api.crd import imagebuild_crd, render_crd_yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "imagebuilds.stagewright.dev.yaml"


def schema() -> dict[str, Any]:
    """The openAPIV3Schema as the API server would apply it."""
    result: dict[str, Any] = imagebuild_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def test_committed_crd_matches_the_models() -> None:
    """The chart's copy is checked against this file in test_manifests.py."""
    assert CRD_FILE.exists(), f"{CRD_FILE} is missing: run `make crds`"
    assert CRD_FILE.read_text() == render_crd_yaml(), f"{CRD_FILE} drifted: run `make crds`"


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(imagebuild_crd(), "1.33.0", strict=True)


def _walk(node: Any, path: str = "") -> list[str]:
    """Paths of schema nodes that break Kubernetes' structural-schema rules."""
    problems: list[str] = []
    if isinstance(node, dict):
        if "$ref" in node or ("anyOf" in node and any("type" in v for v in node["anyOf"])):
            problems.append(path)
        if "properties" in node and node.get("type") != "object":
            problems.append(f"{path} (properties without type: object)")
        for key, value in node.items():
            problems += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            problems += _walk(item, f"{path}[{index}]")
    return problems


def test_schema_is_structural() -> None:
    assert _walk(schema()) == []


def test_printer_columns_name_the_status_fields_users_read() -> None:
    columns = imagebuild_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Target", "Platforms", "Size", "Cache",
                                          "Digest", "Age"]
    status = schema()["properties"]["status"]["properties"]
    for column in columns:
        field = column["jsonPath"].split(".")
        if field[1] == "status":
            assert field[2] in status


VALID: dict[str, Any] = {
    "apiVersion": "stagewright.dev/v1alpha1",
    "kind": "ImageBuild",
    "metadata": {"name": "web"},
    "spec": {
        "source": {"git": {"url": "https://github.com/acme/web.git", "revision": "main"}},
        "target": "runtime",
        "output": {"image": "registry.example.com/acme/web", "tags": ["latest", "v1.2.3"]},
    },
}


def test_schema_accepts_the_design_example() -> None:
    jsonschema.validate(VALID, schema())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"source": {}}, "no source"),
        ({"source": {"git": {"url": "https://x/y.git"}, "url": "s3://b/c.tgz"}}, "two sources"),
        ({"output": {"image": "registry.example.com/acme/web:tag"}}, "tag in image"),
        ({"output": {"image": "Registry/UPPER"}}, "uppercase repository"),
        ({"output": {"image": "r.example.com/a", "tags": []}}, "no tags"),
        ({"timeout": "20 minutes"}, "not a Go duration"),
        ({"retries": 9}, "too many retries"),
        ({"dockerfile": "/etc/passwd"}, "absolute Dockerfile path"),
        ({"dockerfile": "../Dockerfile"}, "Dockerfile outside the context"),
        ({"target": "-bad"}, "bad stage name"),
    ],
)
def test_schema_rejects_bad_specs(change: dict[str, Any], why: str) -> None:
    body = {**VALID, "spec": {**VALID["spec"], **change}}
    validator = jsonschema.Draft4Validator(schema())
    errors = list(validator.iter_errors(body))
    assert errors, f"schema accepted {why}"
