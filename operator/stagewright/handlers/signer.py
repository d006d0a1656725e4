"""Sign a confirmed image and attest its provenance, in the operator's process only.

Called by the completion path once the registry has confirmed the digest the builder
reported (never for a digest the operator has not confirmed). The key comes from the Secret
``spec.signing.secretRef`` names; it is decrypted here (scrypt, in a worker thread, one at a
time: 64 MiB each at cosign's settings) and kept per Secret and resourceVersion, so a rotated
key is picked up at the next build and an unchanged one is not decrypted again. No key
material, password or signature is ever logged, posted as an Event or written to status:
status gets the key's cosign ID and where the signature and attestation are.

The signature and attestation are pushed as cosign's tag-based images (``signing.cosign``)
with the push Secret's credentials. OCI 1.1 referrers (cosign's newer bundle format) are not
written: the two layouts must not be mixed on one image, and the tag-based one is what every
cosign release and admission controller reads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass, field
from typing import Any

from stagewright.api.reasons import Reason
from stagewright.api.v1alpha1 import ImageBuild
from stagewright.handlers.kube_api import ApiError, KubeApi
from stagewright.handlers.push_secret import docker_config
from stagewright.registry import ImageReference, RegistryClient, RegistryError
from stagewright.signing.cosign import (
    OCI_MANIFEST,
    Artifact,
    attestation_artifact,
    attestation_tag,
    dsse_envelope,
    signature_artifact,
    signature_tag,
)
from stagewright.signing.keys import SigningKey, SigningKeyError, load_key
from stagewright.signing.provenance import SLSA_PROVENANCE, BuildFacts, statement
from stagewright.status import ConditionUpdate, now_iso

_log = logging.getLogger("stagewright")
KEY_FILE, PASSWORD_FILE = "cosign.key", "cosign.password"


@dataclass(frozen=True)
class Signed:
    """What signing a build amounted to: status.signing, the conditions, and the failure
    (reason, message) if something could not be signed."""

    status: dict[str, Any] | None
    conditions: list[ConditionUpdate] = field(default_factory=list)
    failure: tuple[Reason, str] | None = None


class Signer:
    """Signs confirmed images with each ImageBuild's key."""

    def __init__(self, api: KubeApi, registry: RegistryClient) -> None:
        self.api = api
        self.registry = registry
        self._keys: dict[tuple[str, str], tuple[str, SigningKey]] = {}
        self._decrypting = asyncio.Lock()

    async def sign(self, build: ImageBuild, facts: BuildFacts) -> Signed:
        """Sign ``facts.digest`` and, unless turned off, attest its provenance."""
        signing = build.spec.signing
        assert signing is not None
        try:
            key = await self._key(build)
        except SigningKeyError as exc:
            return _failed(Reason(exc.reason), str(exc), attest=signing.provenance)
        output = build.spec.output
        try:
            config = await docker_config(self.api, build)
        except RegistryError as exc:
            return _failed(Reason.SIGNATURE_PUSH_FAILED, str(exc), attest=signing.provenance)
        repository = ImageReference.parse(output.image)
        where = _Registry(self.registry, repository, output.insecure, config)
        status: dict[str, Any] = {"keyId": key.key_id, "digest": facts.digest,
                                  "signedAt": now_iso()}
        conditions: list[ConditionUpdate] = []
        try:
            current = await where.manifest(signature_tag(facts.digest))
            artifact = signature_artifact(repository.name, facts.digest, key, current)
            await where.push(signature_tag(facts.digest), artifact)
        except RegistryError as exc:
            return _failed(Reason.SIGNATURE_PUSH_FAILED, f"The signature of {facts.digest} "
                           f"could not be pushed: {exc}", attest=signing.provenance)
        status["signature"] = f"{output.image}:{signature_tag(facts.digest)}"
        conditions.append(ConditionUpdate("Signed", "True", Reason.SIGNED.value,
                                          f"Signed {facts.digest} with key {key.key_id}."))
        if not signing.provenance:
            return Signed(status, conditions)
        try:
            envelope = dsse_envelope(statement(build, facts), key)
            tag = attestation_tag(facts.digest)
            await where.push(tag, attestation_artifact(envelope, SLSA_PROVENANCE, key,
                                                       await where.manifest(tag)))
        except RegistryError as exc:
            message = f"The provenance of {facts.digest} could not be pushed: {exc}"
            conditions.append(ConditionUpdate("Attested", "False",
                                              Reason.SIGNATURE_PUSH_FAILED.value, message))
            return Signed(status, conditions, (Reason.SIGNATURE_PUSH_FAILED, message))
        status["attestation"] = f"{output.image}:{tag}"
        conditions.append(ConditionUpdate("Attested", "True", Reason.ATTESTED.value,
                                          f"SLSA v1 provenance of {facts.digest}, signed with "
                                          f"key {key.key_id}."))
        return Signed(status, conditions)

    async def _key(self, build: ImageBuild) -> SigningKey:
        """The key from the Secret, decrypted once per resourceVersion."""
        signing = build.spec.signing
        assert signing is not None
        name = signing.secret_ref.name
        try:
            secret = await self.api.get_secret(build.namespace, name)
        except ApiError as exc:
            raise SigningKeyError(Reason.SIGNING_KEY_NOT_FOUND.value,
                                  f"Secret {name} could not be read: {exc}") from None
        if secret is None:
            raise SigningKeyError(Reason.SIGNING_KEY_NOT_FOUND.value,
                                  f"Secret {name} (spec.signing.secretRef) does not exist in "
                                  f"namespace {build.namespace}")
        version = str(secret["metadata"].get("resourceVersion") or "")
        cached = self._keys.get((build.namespace, name))
        if cached is not None and cached[0] == version:
            return cached[1]
        data = secret.get("data") or {}
        if KEY_FILE not in data:
            raise SigningKeyError(Reason.SIGNING_KEY_NOT_FOUND.value,
                                  f"Secret {name} has no key {KEY_FILE}")
        try:
            pem = base64.b64decode(data[KEY_FILE], validate=True)
            password = base64.b64decode(data.get(PASSWORD_FILE) or "", validate=True)
        except (binascii.Error, ValueError):
            raise SigningKeyError(Reason.SIGNING_KEY_INVALID.value,
                                  f"Secret {name}: {KEY_FILE} or {PASSWORD_FILE} is not "
                                  "base64") from None
        async with self._decrypting:
            key = await asyncio.to_thread(load_key, pem, password)
        self._keys[(build.namespace, name)] = (version, key)
        _log.info(f"Loaded signing key {key.key_id} from Secret {build.namespace}/{name}.")
        return key


@dataclass(frozen=True)
class _Registry:
    """One repository as the push Secret reaches it."""

    client: RegistryClient
    repository: ImageReference
    insecure: bool
    docker_config: dict[str, Any] | None

    async def manifest(self, tag: str) -> bytes | None:
        found = await self.client.manifest(
            ImageReference.parse(f"{self.repository.name}:{tag}"), insecure=self.insecure,
            docker_config=self.docker_config)
        return found.body if found is not None else None

    async def push(self, tag: str, artifact: Artifact) -> None:
        """Blobs first, then the manifest that names them; nothing when unchanged."""
        if not artifact.changed:
            return
        for blob in (artifact.config, *(layer.data for layer in artifact.layers)):
            await self.client.push_blob(self.repository, blob, insecure=self.insecure,
                                        docker_config=self.docker_config)
        await self.client.push_manifest(self.repository, tag, artifact.manifest, OCI_MANIFEST,
                                        insecure=self.insecure,
                                        docker_config=self.docker_config)


def _failed(reason: Reason, message: str, *, attest: bool) -> Signed:
    """Nothing signed: both conditions False with the reason."""
    conditions = [ConditionUpdate("Signed", "False", reason.value, message)]
    if attest:
        conditions.append(ConditionUpdate("Attested", "False", reason.value, message))
    return Signed(None, conditions, (reason, message))
