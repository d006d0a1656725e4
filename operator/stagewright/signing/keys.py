"""Signing keys as users keep them: cosign's encrypted key, or a plain PKCS#8 PEM. Pure.

cosign's own format (``cosign generate-key-pair``, also into a Kubernetes Secret with
``k8s://namespace/name``) is a PEM block ``ENCRYPTED SIGSTORE PRIVATE KEY`` (``ENCRYPTED COSIGN
PRIVATE KEY`` before cosign 2) holding JSON: an scrypt key derivation with its parameters and
salt, and a NaCl secretbox (XSalsa20-Poly1305) of the DER PKCS#8 private key. The scrypt
parameters are read from the file, never assumed: cosign raised N from 32768 to 65536, and
signers that hard-coded the old value rejected new keys (tektoncd/chains #918, #975).

The key ID is cosign's: the SHA-256 of the public key's DER (SubjectPublicKeyInfo), base64 as
cosign writes it in a bundle's ``publicKey.hint``, so a user matches it with their cosign.pub.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

ENCRYPTED_LABELS = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
#: scrypt's memory is 128 * r * N bytes (64 MiB at cosign's N=65536, r=8); refuse keys that
#: would ask for much more than cosign itself ever wrote.
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024


class SigningKeyError(Exception):
    """The key cannot be used; ``reason`` is the status reason. Messages never include key
    material or the password."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyInvalidError(SigningKeyError):
    """Unreadable, or the password does not open it."""

    def __init__(self, message: str) -> None:
        super().__init__("SigningKeyInvalid", message)


class KeyUnsupportedError(SigningKeyError):
    """Readable, but not a key type this operator signs with."""

    def __init__(self, message: str) -> None:
        super().__init__("SigningKeyUnsupported", message)


@dataclass(frozen=True)
class SigningKey:
    """An ECDSA P-256 private key and what identifies it."""

    private: ec.EllipticCurvePrivateKey

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def key_id(self) -> str:
        """cosign's hint: base64 of the SHA-256 of the public key's DER."""
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(der).digest()).decode()

    def sign(self, data: bytes) -> bytes:
        """An ASN.1 DER ECDSA signature over SHA-256 of ``data`` (what cosign verifies)."""
        return self.private.sign(data, ec.ECDSA(hashes.SHA256()))

    def verifies(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` over ``data`` is this key's."""
        try:
            self.private.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True


def load_key(pem: bytes, password: bytes | None) -> SigningKey:
    """Read a cosign encrypted key (with ``password``) or a PKCS#8/SEC1 PEM private key."""
    text = pem.decode("ascii", errors="replace")
    label = next((label for label in ENCRYPTED_LABELS if f"BEGIN {label}" in text), None)
    der = _decrypt(text, label, password or b"") if label else None
    try:
        private = (serialization.load_der_private_key(der, password=None) if der is not None
                   else serialization.load_pem_private_key(pem, password=password or None))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyInvalidError(f"the key is neither cosign's encrypted key nor a PEM private "
                              f"key this operator can read ({type(exc).__name__})") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
            private.curve, ec.SECP256R1):
        what = private.curve.name if isinstance(private, ec.EllipticCurvePrivateKey) else (
            type(private).__name__.removeprefix("_").replace("PrivateKey", " key"))
        raise KeyUnsupportedError(f"the key is {what}; Stagewright signs with ECDSA P-256 "
                                  "keys (cosign generate-key-pair makes one)")
    return SigningKey(private)


def _decrypt(text: str, label: str, password: bytes) -> bytes:
    """The DER private key inside cosign's scrypt + secretbox envelope."""
    body = text.split(f"-----BEGIN {label}-----", 1)[1].split(f"-----END {label}-----", 1)[0]
    try:
        envelope = json.loads(base64.b64decode("".join(body.split())))
        kdf, cipher = envelope["kdf"], envelope["cipher"]
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(envelope["ciphertext"])
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise KeyInvalidError(f"the cosign key is malformed ({type(exc).__name__})") from None
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise KeyUnsupportedError(f"the cosign key uses {kdf.get('name')} and "
                                  f"{cipher.get('name')}; expected scrypt and nacl/secretbox")
    if 128 * r * n > MAX_SCRYPT_MEMORY or n < 2 or n & (n - 1):
        raise KeyInvalidError(f"the cosign key's scrypt parameters (N={n}, r={r}) are out of "
                              "range")
    key = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32,
                         maxmem=MAX_SCRYPT_MEMORY + 1024 * 1024)
    try:
        return bytes(nacl.secret.SecretBox(key).decrypt(ciphertext, nonce))
    except nacl.exceptions.CryptoError:
        raise KeyInvalidError("the password does not open the cosign key (check the "
                              "Secret's cosign.password)") from None

