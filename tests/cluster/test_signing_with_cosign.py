"""Signed images and signed provenance, checked by the real cosign, on the real node.

Keys are made the way the docs tell users to: ``cosign generate-key-pair k8s://NS/NAME``
(cosign 3.1.1, Debian unstable's build, installed by hack/install-cosign.sh) writes the Secret
the ImageBuild names. Builds run real Kaniko; the operator signs once the registry confirmed
the digest; ``cosign verify`` and ``cosign verify-attestation`` then judge what it pushed, and
refuse what was forged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from tests.cluster.builds import context, imagebuild
from tests.tooling import tool

from sandbox.stack import Sandbox

pytestmark = pytest.mark.cluster

PASSWORD = "correct horse battery staple"
DOCKERFILE = "ARG BASE\nFROM ${BASE}\nARG FLAVOUR=plain\nRUN echo ${FLAVOUR} > /flavour\n"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def cosign(sandbox: Sandbox, *args: str, password: str = PASSWORD,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real cosign as a user runs it: against the sandbox (KUBECONFIG), offline (no
    transparency log), and the sandbox registry speaks plain HTTP."""
    env = {**os.environ, "KUBECONFIG": str(sandbox.control_plane.admin.kubeconfig),
           "COSIGN_PASSWORD": password, "HOME": str(sandbox.work_dir)}
    return subprocess.run([str(tool("cosign")), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def json_lines(output: str) -> list[Any]:
    """The JSON documents cosign prints, one per line (it prints a blank line first)."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def verify(sandbox: Sandbox, key: str, image: str) -> subprocess.CompletedProcess[str]:
    return cosign(sandbox, "verify", "--key", key, "--insecure-ignore-tlog=true",
                  "--allow-http-registry", image)


def verify_attestation(sandbox: Sandbox, key: str, image: str,
                       kind: str = "slsaprovenance1") -> subprocess.CompletedProcess[str]:
    return cosign(sandbox, "verify-attestation", "--key", key, "--type", kind,
                  "--insecure-ignore-tlog=true", "--allow-http-registry", image)


def key_pair(sandbox: Sandbox, namespace: str, name: str) -> str:
    """``cosign generate-key-pair k8s://namespace/name``: the Secret users make (cosign also
    writes cosign.pub into its working directory: the sandbox's, not the repository)."""
    made = cosign(sandbox, "generate-key-pair", f"k8s://{namespace}/{name}",
                  cwd=sandbox.work_dir)
    assert made.returncode == 0, made.stderr
    return f"k8s://{namespace}/{name}"


def key_id_of(sandbox: Sandbox, namespace: str, name: str) -> str:
    """What cosign calls the key (a bundle's publicKey.hint), from the Secret's cosign.pub."""
    secret = sandbox.admin.get("v1", "Secret", name, namespace)
    assert secret is not None
    public = serialization.load_pem_public_key(base64.b64decode(secret["data"]["cosign.pub"]))
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def signed_build(sandbox: Sandbox, namespace: str, name: str, secret: str,
                 **signing: Any) -> dict[str, Any]:
    build = imagebuild(sandbox, namespace, name)
    build["spec"]["signing"] = {"secretRef": {"name": secret}, **signing}
    return build


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def registry_manifest(sandbox: Sandbox, repository: str, reference: str) -> bytes:
    answer = httpx.get(f"{sandbox.registry.url}/v2/{repository}/manifests/{reference}",
                       headers={"Accept": OCI_MANIFEST}, timeout=10)
    answer.raise_for_status()
    return answer.content


def put_manifest(sandbox: Sandbox, repository: str, tag: str, body: bytes) -> None:
    httpx.put(f"{sandbox.registry.url}/v2/{repository}/manifests/{tag}", content=body,
              headers={"Content-Type": OCI_MANIFEST}, timeout=10).raise_for_status()


def put_blob(sandbox: Sandbox, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = httpx.post(f"{sandbox.registry.url}/v2/{repository}/blobs/uploads/", timeout=10)
    start.raise_for_status()
    location = httpx.URL(sandbox.registry.url).join(start.headers["location"])
    httpx.put(location.copy_merge_params({"digest": digest}), content=data,
              timeout=10).raise_for_status()
    return digest


def test_a_signed_build_verifies_with_cosign_and_attests_its_provenance(
        sandbox: Sandbox, namespace: str) -> None:
    key = key_pair(sandbox, namespace, "signing")
    sandbox.admin.apply([context(namespace, DOCKERFILE),
                         signed_build(sandbox, namespace, "web", "signing")])
    status = sandbox.wait_settled("web", namespace, timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    key_id = key_id_of(sandbox, namespace, "signing")
    repository = f"{sandbox.registry.host}/{namespace}/web"
    digest = status["digest"]
    assert status["signing"] == {
        "keyId": key_id, "digest": digest, "signedAt": status["signing"]["signedAt"],
        "signature": f"{repository}:{digest.replace(':', '-')}.sig",
        "attestation": f"{repository}:{digest.replace(':', '-')}.att"}
    assert conditions(status)["Signed"]["status"] == "True"
    assert conditions(status)["Attested"]["status"] == "True"
    assert status["history"][0]["signedBy"] == key_id

    image = f"{repository}@{digest}"
    verified = verify(sandbox, key, image)
    assert verified.returncode == 0, verified.stderr
    claims = json_lines(verified.stdout)[0]
    assert claims[0]["critical"]["image"]["docker-manifest-digest"] == digest

    attested = verify_attestation(sandbox, key, image)
    assert attested.returncode == 0, attested.stderr
    envelope = json_lines(attested.stdout)[0]
    document = json.loads(base64.b64decode(envelope["payload"]))
    assert document["predicateType"] == "https://slsa.dev/provenance/v1"
    assert document["subject"][0]["digest"] == {"sha256": digest.split(":")[1]}
    definition = document["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["source"] == {"configMap": {"name": "ctx"}}
    dependencies = {d["name"]: d for d in definition["resolvedDependencies"]}
    base_digest = httpx.head(
        f"{sandbox.registry.url}/v2/stagewright-sandbox/busybox/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           f"{OCI_MANIFEST}"}, timeout=10).headers["Docker-Content-Digest"]
    assert dependencies["base image"] == {"uri": f"oci://{sandbox.base_image}",
                                          "name": "base image",
                                          "digest": {"sha256": base_digest.split(":")[1]}}
    assert dependencies["builder"]["uri"].endswith("/stagewright-sandbox/kaniko")
    assert set(dependencies["builder"]["digest"]) == {"sha256"}
    build = sandbox.imagebuild("web", namespace)
    assert build is not None
    metadata = document["predicate"]["runDetails"]["metadata"]
    assert metadata["invocationId"] == f"{build['metadata']['uid']}/{status['podName']}"
    # The key itself is nowhere but its Secret: not in status, not in the operator's log.
    assert PASSWORD not in json.dumps(status)
    assert PASSWORD not in sandbox.operator.log()


def test_cosign_refuses_what_was_forged(sandbox: Sandbox, namespace: str,
                                        tmp_path: Path) -> None:
    key = key_pair(sandbox, namespace, "signing")
    sandbox.admin.apply([context(namespace, DOCKERFILE),
                         signed_build(sandbox, namespace, "signed", "signing"),
                         imagebuild(sandbox, namespace, "unsigned",
                                    buildArgs={"BASE": sandbox.base_image,
                                               "FLAVOUR": "other"})])
    signed = sandbox.wait_settled("signed", namespace, timeout=240)["status"]
    other = sandbox.wait_settled("unsigned", namespace, timeout=240)["status"]
    assert (signed["phase"], other["phase"]) == ("Succeeded", "Succeeded")
    repository = f"{namespace}/signed"
    image = f"{sandbox.registry.host}/{repository}@{signed['digest']}"
    assert verify(sandbox, key, image).returncode == 0

    # Another key: not ours.
    made = cosign(sandbox, "generate-key-pair", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert verify(sandbox, str(tmp_path / "cosign.pub"), image).returncode != 0

    # A signature of another digest, copied onto this image's signature tag.
    unsigned_repo = f"{namespace}/unsigned"
    sig = registry_manifest(sandbox, repository, signed["digest"].replace(":", "-") + ".sig")
    for layer in [json.loads(sig)["config"], *json.loads(sig)["layers"]]:
        blob = httpx.get(f"{sandbox.registry.url}/v2/{repository}/blobs/{layer['digest']}",
                         timeout=10).content
        put_blob(sandbox, unsigned_repo, blob)
    put_manifest(sandbox, unsigned_repo, other["digest"].replace(":", "-") + ".sig", sig)
    copied = verify(sandbox, key, f"{sandbox.registry.host}/{unsigned_repo}@{other['digest']}")
    assert copied.returncode != 0, copied.stdout

    # The provenance is not of another predicate type.
    assert verify_attestation(sandbox, key, image, "spdxjson").returncode != 0

    # A tampered statement under the original signature.
    att_tag = signed["digest"].replace(":", "-") + ".att"
    att = json.loads(registry_manifest(sandbox, repository, att_tag))
    layer = att["layers"][0]
    envelope = json.loads(httpx.get(
        f"{sandbox.registry.url}/v2/{repository}/blobs/{layer['digest']}", timeout=10).content)
    document = json.loads(base64.b64decode(envelope["payload"]))
    document["predicate"]["buildDefinition"]["externalParameters"]["buildArgs"] = {
        "FLAVOUR": "forged"}
    envelope["payload"] = base64.b64encode(json.dumps(document).encode()).decode()
    forged = json.dumps(envelope).encode()
    layer.update(digest=put_blob(sandbox, repository, forged), size=len(forged))
    put_manifest(sandbox, repository, att_tag, json.dumps(att).encode())
    tampered = verify_attestation(sandbox, key, image)
    assert tampered.returncode != 0, tampered.stdout


def test_signing_failures_are_a_condition_or_a_failure_as_asked(
        sandbox: Sandbox, namespace: str, tmp_path: Path) -> None:
    made = cosign(sandbox, "generate-key-pair", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    sandbox.admin.apply([
        context(namespace, DOCKERFILE),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong-password",
                                                            "namespace": namespace},
         "stringData": {"cosign.key": (tmp_path / "cosign.key").read_text(),
                        "cosign.password": "not the password"}},
        signed_build(sandbox, namespace, "no-secret", "absent"),
        signed_build(sandbox, namespace, "must-sign", "wrong-password", required=True)])
    lenient = sandbox.wait_settled("no-secret", namespace, timeout=240)["status"]
    assert lenient["phase"] == "Succeeded"
    signed = conditions(lenient)["Signed"]
    assert (signed["status"], signed["reason"]) == ("False", "SigningKeyNotFound")
    assert "Secret absent" in signed["message"]
    assert "signing" not in lenient
    strict = sandbox.wait_settled("must-sign", namespace, timeout=240)["status"]
    assert (strict["phase"], strict["reason"]) == ("Failed", "SigningKeyInvalid")
    assert "password does not open" in strict["message"]
    assert strict["digest"]  # pushed and confirmed: only the signature is missing
    warnings = {e["reason"] for e in sandbox.admin.list("v1", "Event", namespace)
                if e["type"] == "Warning"}
    assert {"SigningKeyNotFound", "SigningKeyInvalid"} <= warnings


def test_a_rotated_key_signs_the_next_build_and_history_says_which(
        sandbox: Sandbox, namespace: str) -> None:
    key_pair(sandbox, namespace, "signing")
    first_id = key_id_of(sandbox, namespace, "signing")
    sandbox.admin.apply([context(namespace, DOCKERFILE),
                         signed_build(sandbox, namespace, "web", "signing")])
    first = sandbox.wait_settled("web", namespace, timeout=240)["status"]
    assert first["signing"]["keyId"] == first_id
    sandbox.admin.delete("v1", "Secret", "signing", namespace)
    rotated = key_pair(sandbox, namespace, "signing")
    second_id = key_id_of(sandbox, namespace, "signing")
    assert second_id != first_id
    status = sandbox.rebuild("web", namespace, request="rotated", timeout=240)["status"]
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["signing"]["keyId"] == second_id
    assert [entry.get("signedBy") for entry in status["history"][:2]] == [second_id, first_id]
    image = f"{sandbox.registry.host}/{namespace}/web@{status['digest']}"
    assert verify(sandbox, rotated, image).returncode == 0


def test_signing_a_digest_again_adds_no_signature(sandbox: Sandbox, namespace: str) -> None:
    """A reproducible build (Kaniko's --reproducible: no build times in the image) yields the
    same digest each time; its signature image keeps one signature per key."""
    key = key_pair(sandbox, namespace, "signing")
    build = signed_build(sandbox, namespace, "same", "signing", provenance=False)
    build["spec"]["output"]["reproducible"] = True
    sandbox.admin.apply([context(namespace, DOCKERFILE), build])
    first = sandbox.wait_settled("same", namespace, timeout=240)["status"]
    again = sandbox.rebuild("same", namespace, request="again", timeout=240)["status"]
    assert again["digest"] == first["digest"], "the premise: this build is reproducible"
    sig = json.loads(registry_manifest(sandbox, f"{namespace}/same",
                                       first["digest"].replace(":", "-") + ".sig"))
    assert len(sig["layers"]) == 1
    assert "Attested" not in conditions(again)
    image = f"{sandbox.registry.host}/{namespace}/same@{again['digest']}"
    assert verify(sandbox, key, image).returncode == 0
