"""The ImageBuild API's signing: cosign signatures and SLSA provenance (spec.signing), and
which key signed what (status.signing). Part of v1alpha1; kept apart as ``triggers`` is."""

from __future__ import annotations

from pydantic import Field

from stagewright.api.types import ApiModel, LocalObjectReference


class Signing(ApiModel):
    """Sign the pushed image, and attest how it was built, with a key kept in a Secret."""

    secret_ref: LocalObjectReference = Field(
        description="A Secret in the ImageBuild's namespace with `cosign.key` (cosign's "
        "encrypted key, as `cosign generate-key-pair k8s://NAMESPACE/NAME` writes it, or a "
        "PKCS#8 PEM ECDSA P-256 private key) and `cosign.password` (empty or absent for an "
        "unencrypted PEM). The key is read by the operator only; no build pod sees it.",
    )
    required: bool = Field(
        default=False,
        description="Fail the build when it cannot be signed (the image stays pushed and "
        "tagged; status says why). False: the build succeeds and the Signed condition is "
        "False with the reason.",
    )
    provenance: bool = Field(
        default=True,
        description="Also push a signed SLSA v1 provenance attestation of the image "
        "(cosign verify-attestation --type slsaprovenance1).",
    )


class SigningStatus(ApiModel):
    """Which key signed the last build's image, and where the signature and attestation are."""

    key_id: str = Field(description="The key, as cosign identifies it: base64 of the SHA-256 "
                        "of its public key (DER), as in a bundle's publicKey.hint.")
    digest: str = Field(description="The image digest signed.")
    signature: str | None = Field(default=None, description="The signature image "
                                  "(repo:sha256-<hex>.sig).")
    attestation: str | None = Field(default=None, description="The attestation image "
                                    "(repo:sha256-<hex>.att).")
    signed_at: str | None = Field(default=None, description="When.")
