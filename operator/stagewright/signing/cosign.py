"""Signatures and attestations as cosign writes them into a registry. Pure.

The tag-based layout, which every cosign version and admission controller reads: the
signatures of ``repo@sha256:<hex>`` are the layers of the image tagged ``sha256-<hex>.sig`` in
the same repository, each a "simple signing" payload naming the digest, with the base64 ECDSA
signature in the layer's ``dev.cosignproject.cosign/signature`` annotation; attestations are
the layers of ``sha256-<hex>.att``, each a DSSE envelope of an in-toto statement, annotated
with its ``predicateType``. A new signature is appended to the layers already there (another
key's stay); one this key already made of the same payload is not added twice, so a rebuild
that yields the same digest piles nothing up. An attestation of this key and predicate type
replaces the key's previous one: the latest build of a digest is what its provenance says.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from stagewright.signing.keys import SigningKey

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
#: Which key made an attestation (cosign reads only predicateType): its cosign key ID, so the
#: key's next attestation of the digest replaces it without reading the old envelope.
KEY_ANNOTATION = "dev.stagewright.key-id"
IN_TOTO = "application/vnd.in-toto+json"
#: A created time of zero, as go-containerregistry's empty image has (reproducible bytes).
_EPOCH = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class Layer:
    """One signature or attestation: the blob and its descriptor."""

    data: bytes
    media_type: str
    annotations: dict[str, str]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "size": len(self.data), "digest": self.digest,
                "annotations": self.annotations}


@dataclass(frozen=True)
class Artifact:
    """The ``.sig`` or ``.att`` image to push: its config blob, its layers' blobs, and the
    manifest; ``changed`` is False when the registry already holds exactly this."""

    config: bytes
    layers: list[Layer]
    manifest: bytes
    changed: bool


def signature_tag(digest: str) -> str:
    """``sha256-<hex>.sig``: where cosign looks for the signatures of ``digest``."""
    return digest.replace(":", "-") + ".sig"


def attestation_tag(digest: str) -> str:
    """``sha256-<hex>.att``: where cosign looks for the attestations of ``digest``."""
    return digest.replace(":", "-") + ".att"


def simple_signing_payload(repository: str, digest: str) -> bytes:
    """What a cosign signature signs: the image's repository and manifest digest."""
    return json.dumps({
        "critical": {"identity": {"docker-reference": repository},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }, separators=(",", ":")).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what an envelope's signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def dsse_envelope(statement: bytes, key: SigningKey) -> bytes:
    """A signed DSSE envelope of an in-toto statement, as ``cosign attest`` makes one."""
    signature = key.sign(pae(IN_TOTO, statement))
    return json.dumps({
        "payloadType": IN_TOTO,
        "payload": base64.b64encode(statement).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}],
    }, separators=(",", ":")).encode()


def existing_layers(manifest: bytes | None) -> list[dict[str, Any]]:
    """The layer descriptors of a ``.sig``/``.att`` manifest already in the registry."""
    if not manifest:
        return []
    layers = json.loads(manifest).get("layers") or []
    return [layer for layer in layers if isinstance(layer, dict)]


def signed_already(layers: list[dict[str, Any]], payload: bytes, key: SigningKey) -> bool:
    """Whether one of ``layers`` is ``key``'s signature of ``payload``."""
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    for layer in layers:
        annotation = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if layer.get("digest") != digest or not annotation:
            continue
        try:
            if key.verifies(payload, base64.b64decode(annotation)):
                return True
        except ValueError:
            continue
    return False


def signature_artifact(repository: str, digest: str, key: SigningKey,
                       current: bytes | None) -> Artifact:
    """The ``.sig`` image with ``key``'s signature of ``digest`` among the others.

    ``current``: the ``.sig`` manifest the registry holds (None if none); its layers are kept
    by descriptor (their blobs are in the registry already).
    """
    payload = simple_signing_payload(repository, digest)
    layers = existing_layers(current)
    if signed_already(layers, payload, key):
        return _artifact(layers, [], changed=False)
    ours = Layer(payload, SIMPLE_SIGNING,
                 {SIGNATURE_ANNOTATION: base64.b64encode(key.sign(payload)).decode()})
    return _artifact(layers, [ours], changed=True)


def attestation_artifact(envelope: bytes, predicate_type: str, key: SigningKey,
                         current: bytes | None) -> Artifact:
    """The ``.att`` image with ``envelope``, replacing ``key``'s earlier attestation of the
    same predicate type (other keys' and other types' stay)."""
    ours = {PREDICATE_ANNOTATION: predicate_type, KEY_ANNOTATION: key.key_id}
    kept = [layer for layer in existing_layers(current)
            if {k: (layer.get("annotations") or {}).get(k) for k in ours} != ours]
    # cosign reads every layer of a signature image the same way and wants the signature
    # annotation on each; an attestation's signature is inside its envelope, so it is empty.
    annotations = {SIGNATURE_ANNOTATION: "", **ours}
    return _artifact(kept, [Layer(envelope, DSSE_ENVELOPE, annotations)], changed=True)


def _artifact(kept: list[dict[str, Any]], new: list[Layer], *, changed: bool) -> Artifact:
    descriptors = [*kept, *(layer.descriptor() for layer in new)]
    config = json.dumps({
        "architecture": "", "created": _EPOCH, "os": "", "config": {},
        "history": [{"created": _EPOCH} for _ in descriptors],
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
    }, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        "layers": descriptors,
    }, separators=(",", ":")).encode()
    return Artifact(config, new, manifest, changed)
