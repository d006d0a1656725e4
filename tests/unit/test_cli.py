"""The `stagewright` command's offline verbs: render and crd."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stagewright.api.crd import render_crd_yaml
from stagewright.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"


def test_render_prints_the_pod_the_operator_would_create(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEWRIGHT_KANIKO_IMAGE", "ghcr.io/osscontainertools/kaniko:v1.28.3")
    assert main(["render", "-f", str(FIXTURES / "git-runtime.yaml")]) == 0
    rendered = yaml.safe_load(capsys.readouterr().out)
    assert rendered == yaml.safe_load((GOLDEN / "git-runtime.pod.yaml").read_text())


def test_render_names_the_offending_field(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    bad = yaml.safe_load((FIXTURES / "git-runtime.yaml").read_text())
    bad["spec"]["output"]["tags"] = ["ok", "not ok!"]
    bad["spec"]["timeout"] = "soon"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["render", "-f", str(path)]) == 1
    error = capsys.readouterr().err
    assert "ImageBuild web is invalid" in error
    assert "spec.output.tags.1" in error
    assert "spec.timeout" in error


def test_render_refuses_a_file_without_an_imagebuild(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert main(["render", "-f", str(path)]) == 2
    assert "holds no ImageBuild" in capsys.readouterr().err


def test_crd_prints_the_generated_definition(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == render_crd_yaml()


def test_inspect_rejects_a_malformed_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "Not A Reference"]) == 2
    assert "error:" in capsys.readouterr().err
