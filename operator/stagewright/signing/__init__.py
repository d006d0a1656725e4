"""Signing: cosign-compatible signatures and signed SLSA provenance for pushed images.

Pure: key formats (``keys``), what is signed and how it is stored in a registry the way
cosign stores it (``cosign``), and the provenance itself (``provenance``). The runtime that
reads the key's Secret and pushes signatures is ``handlers/signer.py``, called by the
completion path once the registry has confirmed the digest; the key never leaves the
operator's process.
"""
