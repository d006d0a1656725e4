"""The `stagewright` command without a cluster: render, crd, and the cluster verbs' set-up
(kubeconfig, context, namespace, exit codes for what fails before any request)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from stagewright.api.crd import render_crd_yaml
from stagewright.cli import main
from stagewright.cli.entry import explain_error
from stagewright.cli.kube import ApiException, Kube, KubeTarget
from stagewright.cli.outcome import EXIT_CLUSTER, EXIT_USAGE

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"


def test_render_prints_the_pod_the_operator_would_create(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEWRIGHT_KANIKO_IMAGE", "ghcr.io/osscontainertools/kaniko:v1.28.3")
    assert main(["render", "-f", str(FIXTURES / "git-runtime.yaml")]) == 0
    rendered = yaml.safe_load(capsys.readouterr().out)
    assert rendered == yaml.safe_load((GOLDEN / "git-runtime.pod.yaml").read_text())


def test_render_prints_each_platforms_pod(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(FIXTURES / "platforms" / "cross-configmap.yaml")]) == 0
    captured = capsys.readouterr()
    pods = list(yaml.safe_load_all(captured.out))
    assert [p["metadata"]["name"] for p in pods] == ["app-2-linux-amd64-1", "app-2-linux-arm64-1"]
    assert "--custom-platform=linux/arm64" in pods[1]["spec"]["containers"][0]["args"]
    assert "pins its FROM --platform=$BUILDPLATFORM images when it starts" in captured.err


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


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: t}
contexts:
- name: plain
  context: {cluster: c, user: u}
- name: team-b
  context: {cluster: c, user: u, namespace: team-b}
current-context: %s
"""


def kubeconfig(tmp_path: Path, current: str) -> Path:
    path = tmp_path / f"config-{current}"
    path.write_text(KUBECONFIG % current)
    return path


def test_the_namespace_comes_from_the_flag_else_the_context(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    path = kubeconfig(tmp_path, "team-b")
    monkeypatch.setenv("KUBECONFIG", str(path))
    assert Kube(KubeTarget()).namespace == "team-b"
    assert Kube(KubeTarget(namespace="other")).namespace == "other"
    assert Kube(KubeTarget(context="plain")).namespace == "default"
    assert Kube(KubeTarget(kubeconfig=str(kubeconfig(tmp_path, "plain")))).namespace == "default"


def test_kubeconfig_lists_are_merged_as_kubectl_does(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.write_text("apiVersion: v1\nkind: Config\n")
    monkeypatch.setenv("KUBECONFIG", f"{empty}:{kubeconfig(tmp_path, 'team-b')}")
    kube = Kube(KubeTarget())
    assert kube.namespace == "team-b"
    assert kube.api_client.configuration.host == "https://127.0.0.1:1"


def test_cluster_verbs_explain_a_missing_kubeconfig(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["get"]) == EXIT_CLUSTER
    assert capsys.readouterr().err.startswith("error: no usable kubeconfig")


def test_an_unreachable_api_server_is_exit_code_4(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, "plain")))
    assert main(["describe", "web", "--context", "team-b"]) == EXIT_CLUSTER
    assert "error: the API server cannot be reached" in capsys.readouterr().err


def test_a_bad_build_file_fails_before_connecting(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    bad = yaml.safe_load((FIXTURES / "git-runtime.yaml").read_text())
    bad["spec"]["timeout"] = "soon"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["build", "-f", str(path), "--follow"]) == EXIT_USAGE
    assert "spec.timeout" in capsys.readouterr().err
    assert main(["build", "-f", str(tmp_path / "missing.yaml")]) == EXIT_USAGE


def test_a_bad_timeout_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "-f", "x.yaml", "--timeout", "soon"])
    assert exit_info.value.code == EXIT_USAGE
    assert "Go-style units" in capsys.readouterr().err


def test_the_kubectl_plugin_names_itself_as_kubectl_does(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/kubectl-stagewright", "--help"])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().out.startswith("usage: kubectl stagewright")


@pytest.mark.parametrize(("status", "code"), [(422, EXIT_USAGE), (400, EXIT_USAGE),
                                              (403, EXIT_CLUSTER), (500, EXIT_CLUSTER)])
def test_api_refusals_map_to_usage_or_cluster_exit_codes(status: int, code: int) -> None:
    refusal = ApiException(status=status, reason="Refused")
    refusal.body = '{"message": "spec.output.image: Invalid value"}'
    message, exit_code = explain_error(refusal)
    assert exit_code == code
    assert message == f"the API server refused: {status} Refused: spec.output.image: Invalid value"
