"""Signing's pure parts: keys as cosign writes them, cosign's registry layout, provenance.

The cosign key fixture was written by the real cosign (tests/unit/fixtures/cosign/README.md);
the cluster tier has the real cosign verify what the operator pushes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import nacl.secret
import nacl.utils
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stagewright.api.v1alpha1 import ImageBuild
from stagewright.signing.cosign import (
    DSSE_ENVELOPE,
    IN_TOTO,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    attestation_artifact,
    attestation_tag,
    dsse_envelope,
    pae,
    signature_artifact,
    signature_tag,
    simple_signing_payload,
)
from stagewright.signing.keys import (
    KeyInvalidError,
    KeyUnsupportedError,
    SigningKey,
    load_key,
)
from stagewright.signing.provenance import SLSA_PROVENANCE, BuildFacts, statement

FIXTURES = Path(__file__).parent / "fixtures" / "cosign"
PASSWORD = b"stagewright-test"
DIGEST = "sha256:" + "ab" * 32


def cosign_key() -> SigningKey:
    return load_key((FIXTURES / "cosign.key").read_bytes(), PASSWORD)


def pem(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def test_a_key_cosign_generated_opens_with_its_password_and_has_cosigns_key_id() -> None:
    key = cosign_key()
    public = serialization.load_pem_public_key((FIXTURES / "cosign.pub").read_bytes())
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.key_id == base64.b64encode(hashlib.sha256(der).digest()).decode()
    assert key.public_pem == (FIXTURES / "cosign.pub").read_bytes()


def test_a_wrong_password_says_so_and_shows_nothing_secret() -> None:
    with pytest.raises(KeyInvalidError) as refused:
        load_key((FIXTURES / "cosign.key").read_bytes(), b"guess")
    assert "password does not open" in str(refused.value)
    assert "guess" not in str(refused.value)
    assert refused.value.reason == "SigningKeyInvalid"


def test_older_cosign_scrypt_settings_and_labels_are_read_from_the_key() -> None:
    """cosign before 2 wrote N=32768 under "ENCRYPTED COSIGN PRIVATE KEY": the same
    envelope, its settings read from the file (here sealed with NaCl and scrypt directly)."""
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    salt = nacl.utils.random(32)
    box = nacl.secret.SecretBox(hashlib.scrypt(b"old", salt=salt, n=32768, r=8, p=1,
                                               dklen=32, maxmem=64 * 1024 * 1024))
    sealed = box.encrypt(der)
    envelope = {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1},
                        "salt": base64.b64encode(salt).decode()},
                "cipher": {"name": "nacl/secretbox",
                           "nonce": base64.b64encode(sealed.nonce).decode()},
                "ciphertext": base64.b64encode(sealed.ciphertext).decode()}
    text = ("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n"
            + base64.b64encode(json.dumps(envelope).encode()).decode()
            + "\n-----END ENCRYPTED COSIGN PRIVATE KEY-----\n")
    key = load_key(text.encode(), b"old")
    assert key.private.private_numbers() == private.private_numbers()


def test_a_plain_pkcs8_p256_key_is_accepted_and_other_keys_are_named() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    assert load_key(pem(private), None).private.private_numbers() == private.private_numbers()
    with pytest.raises(KeyUnsupportedError, match="secp384r1; Stagewright signs with ECDSA"):
        load_key(pem(ec.generate_private_key(ec.SECP384R1())), None)
    with pytest.raises(KeyUnsupportedError, match="RSA key"):
        load_key(pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), None)
    with pytest.raises(KeyInvalidError, match="neither"):
        load_key(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", None)


def test_the_signature_image_is_cosigns_and_never_signs_the_same_payload_twice() -> None:
    key = cosign_key()
    first = signature_artifact("registry.example.com/acme/web", DIGEST, key, None)
    assert signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    manifest = json.loads(first.manifest)
    [layer] = manifest["layers"]
    payload = simple_signing_payload("registry.example.com/acme/web", DIGEST)
    assert json.loads(payload)["critical"] == {
        "identity": {"docker-reference": "registry.example.com/acme/web"},
        "image": {"docker-manifest-digest": DIGEST},
        "type": "cosign container image signature"}
    assert (layer["mediaType"], layer["digest"]) == (
        SIMPLE_SIGNING, "sha256:" + hashlib.sha256(payload).hexdigest())
    assert key.verifies(payload, base64.b64decode(layer["annotations"][SIGNATURE_ANNOTATION]))
    config = json.loads(first.config)
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    again = signature_artifact("registry.example.com/acme/web", DIGEST, key, first.manifest)
    assert not again.changed  # the same key's signature of the same payload is there
    rotated = SigningKey(ec.generate_private_key(ec.SECP256R1()))
    both = signature_artifact("registry.example.com/acme/web", DIGEST, rotated, first.manifest)
    assert both.changed
    assert len(json.loads(both.manifest)["layers"]) == 2  # the old key's signature stays


def test_an_attestation_is_a_signed_dsse_envelope_replacing_the_keys_last() -> None:
    key = cosign_key()
    statement_bytes = b'{"_type":"https://in-toto.io/Statement/v1"}'
    envelope = json.loads(dsse_envelope(statement_bytes, key))
    assert envelope["payloadType"] == IN_TOTO
    assert base64.b64decode(envelope["payload"]) == statement_bytes
    assert key.verifies(pae(IN_TOTO, statement_bytes),
                        base64.b64decode(envelope["signatures"][0]["sig"]))
    first = attestation_artifact(dsse_envelope(statement_bytes, key), SLSA_PROVENANCE, key, None)
    [layer] = json.loads(first.manifest)["layers"]
    assert (layer["mediaType"], layer["annotations"]["predicateType"]) == (
        DSSE_ENVELOPE, SLSA_PROVENANCE)
    second = attestation_artifact(dsse_envelope(b"{}", key), SLSA_PROVENANCE, key,
                                  first.manifest)
    assert len(json.loads(second.manifest)["layers"]) == 1  # replaced, not piled up
    other = attestation_artifact(dsse_envelope(b"{}", key), "https://spdx.dev/Document", key,
                                 second.manifest)
    assert len(json.loads(other.manifest)["layers"]) == 2
    assert attestation_tag(DIGEST).endswith(".att")


def test_the_provenance_names_the_request_what_it_resolved_to_and_the_run() -> None:
    build = ImageBuild.model_validate({
        "metadata": {"name": "web", "namespace": "team-a", "uid": "u-1", "generation": 3},
        "spec": {"source": {"git": {"url": "https://git.example.com/acme/web.git",
                                    "revision": "main", "secretRef": {"name": "git-creds"}}},
                 "target": "runtime", "buildArgs": {"V": "1"}, "checks": ["test"],
                 "output": {"image": "registry.example.com/acme/web", "tags": ["v1"]}}})
    facts = BuildFacts(digest=DIGEST, commit="c" * 40, ref="refs/heads/main",
                       base_images=[("python:3.12-slim", "sha256:" + "1" * 64),
                                    ("unknown:1", None)],
                       builder_image="ghcr.io/osscontainertools/kaniko@sha256:" + "2" * 64,
                       pod="web-3-1", started="2026-12-07T12:00:00Z",
                       finished="2026-12-07T12:01:00Z", operator_version="0.1.0")
    document = json.loads(statement(build, facts))
    assert document["_type"] == "https://in-toto.io/Statement/v1"
    assert document["subject"] == [{"name": "registry.example.com/acme/web",
                                    "digest": {"sha256": "ab" * 32}}]
    assert document["predicateType"] == SLSA_PROVENANCE
    definition = document["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["target"] == "runtime"
    assert definition["externalParameters"]["buildArgs"] == {"V": "1"}
    assert definition["externalParameters"]["checks"] == ["test"]
    assert definition["externalParameters"]["source"]["git"]["secretRef"] == {
        "name": "git-creds"}  # the Secret's name, never its content
    assert definition["resolvedDependencies"] == [
        {"uri": "git+https://git.example.com/acme/web.git@refs/heads/main", "name": "source",
         "digest": {"gitCommit": "c" * 40}},
        {"uri": "oci://python:3.12-slim", "name": "base image", "digest": {"sha256": "1" * 64}},
        {"uri": "oci://unknown:1", "name": "base image"},
        {"uri": "oci://ghcr.io/osscontainertools/kaniko", "name": "builder",
         "digest": {"sha256": "2" * 64}}]
    run = document["predicate"]["runDetails"]
    assert run["builder"] == {"id": "https://stagewright.dev/operator",
                              "version": {"stagewright": "0.1.0"}}
    assert run["metadata"] == {"invocationId": "u-1/web-3-1",
                               "startedOn": "2026-12-07T12:00:00Z",
                               "finishedOn": "2026-12-07T12:01:00Z"}
