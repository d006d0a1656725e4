"""The Buildah pod: its arguments, its script (run for real by sh), and what it rejects.

The script tests run ``BUILD_SCRIPT`` with the system's sh and a stand-in ``buildah`` on PATH
that records its argv, so they show what the real shell hands to buildah: every user value
arrives as one argument, unchanged, and nothing in it runs.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from stagewright.api.v1alpha1 import ImageBuild
from stagewright.resources.build_pod import build_pod
from stagewright.resources.buildah_pod import (
    AUTH_DIR,
    BUILD_SCRIPT,
    DIGEST_FILE,
    INSECURE_DROP_IN,
    buildah_args,
    buildah_context,
)
from stagewright.resources.pod_common import TERMINATION_LOG, build_key, context_files
from stagewright.settings import Settings

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "buildah-configmap.yaml"
SETTINGS = Settings(buildah_image="quay.io/buildah/stable:v1.43.0")
DIGEST = "sha256:" + "c0" * 32


def load(path: Path = FIXTURE) -> ImageBuild:
    return ImageBuild.model_validate(yaml.safe_load(path.read_text()))


def build(spec: dict[str, Any]) -> ImageBuild:
    return ImageBuild.model_validate({
        "metadata": {"name": "x"},
        "spec": {"builder": "buildah", "output": {"image": "r.example.com/x"}, **spec},
    })


def pod_for(imagebuild: ImageBuild) -> dict[str, Any]:
    source = imagebuild.spec.source.config_map
    files = context_files(source, []) if source is not None else []
    return build_pod(imagebuild, SETTINGS, key=build_key(imagebuild.generation, None),
                     attempt=1, files=files)


def test_one_container_named_buildah_running_the_constant_script() -> None:
    pod = pod_for(load())
    assert pod["metadata"]["labels"]["stagewright.dev/builder"] == "buildah"
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "buildah"
    assert container["image"] == "quay.io/buildah/stable:v1.43.0"
    assert container["command"] == ["sh", "-c", BUILD_SCRIPT, "sh"]
    assert container["args"] == buildah_args(load().spec)
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"]["privileged"] is False
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_each_pod_gets_its_own_capability_list() -> None:
    """Editing one built pod (as a test or an admission webhook might) changes no other."""
    first, second = pod_for(load()), pod_for(load())
    first["spec"]["containers"][0]["securityContext"]["capabilities"]["add"].clear()
    assert second["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
    assert pod_for(load())["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]


def test_privileges_are_the_measured_minimum() -> None:
    """Not privileged; ALL dropped, then only what a build measured to need (docs/install.md)."""
    pod = pod_for(load())
    security = pod["spec"]["containers"][0]["securityContext"]
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": [
        "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETFCAP", "SETGID", "SETUID",
        "SYS_CHROOT", "SYS_ADMIN"]}
    # RUN steps never ask for a capability the pod lacks (buildah's default RUN set has these).
    assert {"--cap-drop=NET_BIND_SERVICE", "--cap-drop=SETPCAP"} <= set(buildah_args(load().spec))
    annotations = pod["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/buildah"] == "unconfined"


def test_args_carry_the_same_contract_as_kaniko() -> None:
    args = buildah_args(load().spec)
    assert args == [
        "--isolation=chroot",
        "--format=docker",
        "--cap-drop=NET_BIND_SERVICE",
        "--cap-drop=SETPCAP",
        "--file=/workspace/app/Dockerfile",
        "--target=runtime",
        "--build-arg=BASE=registry.local:5000/base:latest",
        "--build-arg=GREETING=hello",
        "--label=org.opencontainers.image.title=greeter",
        "--layers",
        "--cache-from=registry.local:5000/team-b/greeter/cache",
        "--cache-to=registry.local:5000/team-b/greeter/cache",
        "--cache-ttl=24h",
        "--tag=registry.local:5000/team-b/greeter:latest",
        "--tag=registry.local:5000/team-b/greeter:1.0",
        "/workspace/app",
    ]
    assert not any(a.startswith("--tls-verify") for a in args)
    no_cache = build({"source": {"configMap": {"name": "c"}}, "cache": {"enabled": False}})
    assert "--layers=false" in buildah_args(no_cache.spec)
    assert not any(a.startswith("--cache") for a in buildah_args(no_cache.spec))


def test_configmap_context_mounts_like_kaniko_and_storage_is_an_emptydir() -> None:
    pod = pod_for(load())
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/workspace"]["name"] == "context"
    assert mounts["/workspace/app/Dockerfile"]["subPath"] == "Dockerfile"
    assert mounts["/workspace/app/files/greeting.txt"]["subPath"] == "greeting.txt"
    assert mounts["/var/lib/containers"]["name"] == "containers-storage"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["containers-storage"] == {"name": "containers-storage", "emptyDir": {}}


def test_push_secret_is_the_auth_file_of_every_registry_access() -> None:
    container = pod_for(load())["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "docker-config")
    assert mount == {"name": "docker-config", "mountPath": AUTH_DIR, "readOnly": True}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["REGISTRY_AUTH_FILE"] == f"{AUTH_DIR}/config.json"
    assert env["STORAGE_DRIVER"] == "vfs"
    assert env["STAGEWRIGHT_INSECURE_REGISTRY"] == "registry.local:5000"


def test_no_secret_and_a_secure_registry_set_no_auth_or_insecure_env() -> None:
    container = pod_for(build({"source": {"configMap": {"name": "c"}}}))["spec"]["containers"][0]
    assert [e["name"] for e in container["env"]] == ["STORAGE_DRIVER"]


def test_ca_bundle_is_added_to_buildahs_trust() -> None:
    """SSL_CERT_DIR keeps Go's own directories and adds the bundle's (its default bundle
    file is read whatever SSL_CERT_DIR says), so private-CA registries are trusted too."""
    settings = SETTINGS.model_copy(update={"ca_bundle_configmap": "corp-ca"})
    imagebuild = load()
    pod = build_pod(imagebuild, settings, key="1", attempt=1)
    container = pod["spec"]["containers"][0]
    assert {"name": "SSL_CERT_DIR", "value": "/etc/ssl/certs:/etc/pki/tls/certs:"
            "/var/run/stagewright/extra-certs"} in container["env"]
    assert {"name": "ca-bundle", "mountPath": "/var/run/stagewright/extra-certs",
            "readOnly": True} in container["volumeMounts"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "ca-bundle")
    assert volume["configMap"]["name"] == "corp-ca"
    kubernetes_validate.validate(pod, "1.33.0", strict=True)


@pytest.mark.parametrize(
    ("source", "context"),
    [
        ({"git": {"url": "https://h/r.git"}}, "https://h/r.git"),
        ({"git": {"url": "https://h/r.git", "revision": "v1.0"}}, "https://h/r.git#v1.0"),
        ({"git": {"url": "https://h/r.git", "revision": "a" * 40}, "contextDir": "app"},
         "https://h/r.git#" + "a" * 40 + ":app"),
        ({"git": {"url": "https://h/r.git"}, "contextDir": "app/web"}, "https://h/r.git#:app/web"),
        ({"url": "https://h/context.tar.gz"}, "https://h/context.tar.gz"),
        ({"configMap": {"name": "c"}}, "/workspace"),
    ],
)
def test_sources_map_to_buildah_contexts(source: dict[str, Any], context: str) -> None:
    spec = build({"source": source}).spec
    assert buildah_context(spec) == context
    assert buildah_args(spec)[-1] == context
    if "configMap" not in source:
        assert "--file=Dockerfile" in buildah_args(spec)  # buildah reads it in the context


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ({"url": "s3://bucket/ctx.tar.gz"}, "only https:// archive URLs"),
        ({"url": "https://h/ctx.tar.gz", "contextDir": "app"}, "sub-directory of an archive"),
        ({"git": {"url": "https://h/repo"}}, "ending in .git"),
        ({"git": {"url": "https://h/r.git", "revision": "refs/pull/7/head"}}, "refs/"),
        ({"git": {"url": "https://h/r.git", "secretRef": {"name": "git-creds"}}},
         "git credentials"),
    ],
)
def test_what_buildah_cannot_build_is_an_invalid_spec(source: dict[str, Any],
                                                      words: str) -> None:
    """Rejected by the model, which the reconciler reports as InvalidSpec."""
    with pytest.raises(ValidationError, match="builder buildah cannot build") as error:
        build({"source": source})
    assert words in str(error.value)
    kaniko = {"metadata": {"name": "x"},
              "spec": {"source": source, "output": {"image": "r.example.com/x"}}}
    ImageBuild.model_validate(kaniko)  # Kaniko builds every one of them


# The script, run by a real sh


def _run_script(tmp_path: Path, args: list[str], env: dict[str, str] | None = None,
                push_fails: bool = False) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run BUILD_SCRIPT with its three fixed paths moved into ``tmp_path``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    fake = bin_dir / "buildah"
    # Records each call's argv, NUL-separated, one call a line; a push writes a digest file.
    fake.write_text(f"""#!/bin/sh
printf '%s\\0' "$@" >> {calls}
printf '\\n' >> {calls}
if [ "$1" = push ]; then
  [ -z "${{FAIL_PUSH:-}}" ] || exit 1
  printf '%s' "{DIGEST}" > "${{2#--digestfile=}}"
fi
""")
    fake.chmod(0o755)
    termination = tmp_path / "termination-log"
    script = (BUILD_SCRIPT.replace(TERMINATION_LOG, str(termination))
              .replace(INSECURE_DROP_IN, str(tmp_path / "drop-in" / "insecure.conf"))
              .replace(DIGEST_FILE, str(tmp_path / "digest")))
    run_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})}
    if push_fails:
        run_env["FAIL_PUSH"] = "1"
    done = subprocess.run(["sh", "-c", script, "sh", *args], env=run_env, cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    return done, termination


def _calls(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "calls").read_text().split("\0\n")
    return [line.split("\0") for line in lines if line]


NASTY = "a b; touch pwned && echo \"$(touch pwned)\" `touch pwned` $HOME * | > x"


def test_shell_metacharacters_stay_single_arguments(tmp_path: Path) -> None:
    spec = build({
        "source": {"configMap": {"name": "c"}},
        "buildArgs": {"EVIL": NASTY},
        "output": {"image": "r.example.com/x", "tags": ["v1", "latest"],
                   "labels": {"note": NASTY, "x.y/z": "'single' \"double\"\n"}},
    }).spec
    args = buildah_args(spec)
    done, termination = _run_script(tmp_path, args)
    assert done.returncode == 0, done.stderr
    calls = _calls(tmp_path)
    assert calls[0] == ["build", *args]
    assert f"--build-arg=EVIL={NASTY}" in calls[0]
    assert f"--label=note={NASTY}" in calls[0]
    assert "--label=x.y/z='single' \"double\"\n" in calls[0]
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "x").exists()
    assert calls[1:] == [
        ["push", f"--digestfile={tmp_path / 'digest'}", "r.example.com/x:v1",
         "docker://r.example.com/x:v1"],
        ["push", f"--digestfile={tmp_path / 'digest'}", "r.example.com/x:latest",
         "docker://r.example.com/x:latest"],
    ]
    assert termination.read_text() == DIGEST


def test_a_value_that_looks_like_a_tag_flag_is_not_pushed(tmp_path: Path) -> None:
    """User values always travel as --flag=value, so only our --tag= arguments are pushed."""
    spec = build({"source": {"configMap": {"name": "c"}},
                  "buildArgs": {"T": "--tag=evil.example.com/x:1"}}).spec
    done, _ = _run_script(tmp_path, buildah_args(spec))
    assert done.returncode == 0, done.stderr
    pushed = [call[2] for call in _calls(tmp_path)[1:]]
    assert pushed == ["r.example.com/x:latest"]


def test_no_digest_unless_every_push_succeeded(tmp_path: Path) -> None:
    spec = build({"source": {"configMap": {"name": "c"}}}).spec
    done, termination = _run_script(tmp_path, buildah_args(spec), push_fails=True)
    assert done.returncode == 1
    assert "error pushing image r.example.com/x:latest" in done.stderr
    assert not termination.exists()


def test_insecure_registry_becomes_a_registries_conf_drop_in(tmp_path: Path) -> None:
    spec = build({"source": {"configMap": {"name": "c"}}}).spec
    done, _ = _run_script(tmp_path, buildah_args(spec),
                          env={"STAGEWRIGHT_INSECURE_REGISTRY": "registry.local:5000"})
    assert done.returncode == 0, done.stderr
    conf = tomllib.loads((tmp_path / "drop-in" / "insecure.conf").read_text())
    assert conf == {"registry": [{"location": "registry.local:5000", "insecure": True}]}
