"""Generate the ImageBuild CustomResourceDefinition from the pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no ``$ref``, no
``anyOf`` of types. Pydantic's JSON Schema is close; this module inlines references, folds
``Optional[X]`` into ``X`` and drops what the API server rejects, so the API server and the
operator validate with the same rules.
"""

from __future__ import annotations

from typing import Any

import yaml

from stagewright.api.v1alpha1 import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    UNOBSERVED_STATUS,
    VERSION,
    ImageBuildSpec,
    ImageBuildStatus,
)

#: JSON Schema keywords with no place in a Kubernetes structural schema.
_DROPPED = {"title", "$defs", "additionalProperties", "examples", "const"}

PRINTER_COLUMNS: list[dict[str, str]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Target", "type": "string", "jsonPath": ".spec.target"},
    # Platforms built of those asked ("2/2"), for spec.platforms.
    {"name": "Platforms", "type": "string", "jsonPath": ".status.platformSummary"},
    {"name": "Size", "type": "string", "jsonPath": ".status.sizeHuman"},
    # Cache hits of cacheable steps ("5/7"), read from Kaniko's log.
    {"name": "Cache", "type": "string", "jsonPath": ".status.cache.summary"},
    {"name": "Digest", "type": "string", "jsonPath": ".status.shortDigest"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one JSON Schema node into its structural OpenAPI equivalent."""
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return _structural({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    if "anyOf" in node:
        return _structural(_fold_any_of(node), defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _structural(value, defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and extra:
        out["additionalProperties"] = _structural(extra, defs)
    return _fix_types(out)


def _fix_types(out: dict[str, Any]) -> dict[str, Any]:
    """int-or-string nodes carry no type; enums of strings must say so."""
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    elif "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _fold_any_of(node: dict[str, Any]) -> dict[str, Any]:
    """``Optional[X]`` becomes X (absent, never null); ``str | int`` becomes int-or-string."""
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    typed = [v for v in node["anyOf"] if v != {"type": "null"}]
    if len(typed) == 1:
        folded = {**typed[0], **rest}
    elif {v.get("type") for v in typed} == {"string", "integer"}:
        folded = {"x-kubernetes-int-or-string": True, **rest}
    else:
        raise ValueError(f"cannot express {node['anyOf']} in a structural schema")
    if folded.get("default", ...) is None:
        folded.pop("default")
    return folded


def model_schema(model: type[Any]) -> dict[str, Any]:
    """The structural OpenAPI schema of a pydantic model, as the CRD embeds it."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    result: dict[str, Any] = _structural(schema, schema.get("$defs", {}))
    return result


def _without_defaults(node: Any) -> Any:
    """Status is written only by the operator: server-side defaults there would only mislead."""
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    return node


def imagebuild_crd() -> dict[str, Any]:
    """The complete CRD object for ImageBuild (apiextensions.k8s.io/v1)."""
    spec_schema = model_schema(ImageBuildSpec)
    status_schema = _without_defaults(model_schema(ImageBuildStatus))
    spec_schema["description"] = "What to build and where to push it."
    status_schema["description"] = "What the operator observed; written only by the operator."
    # The one default in status: "not observed yet", so a new ImageBuild reads as in progress.
    status_schema["default"] = UNOBSERVED_STATUS
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "stagewright",
                       "app.kubernetes.io/part-of": "stagewright"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["stagewright"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "ImageBuild builds one stage (target) of a multi-stage "
                            "Dockerfile with Kaniko and a registry layer cache, and reports the "
                            "pushed image's digest and size.",
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        },
                    },
                },
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as the committed ``crds/`` file: YAML with a do-not-edit header."""
    header = "# Generated by `stagewright crd` from operator/stagewright/api; do not edit.\n"
    return header + yaml.safe_dump(imagebuild_crd(), sort_keys=False, allow_unicode=True, width=100)
