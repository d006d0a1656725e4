"""OCI distribution client: resolve a pushed image to the registry's digest, size and layers.

The operator trusts Kaniko's digest only after the registry confirms it; the size in an
ImageBuild's status comes from here too.
"""

from stagewright.registry.client import RegistryClient
from stagewright.registry.credentials import Credentials, find_credentials
from stagewright.registry.errors import (
    ImageNotFound,
    InvalidManifest,
    RegistryAuthError,
    RegistryError,
    RegistryNotAllowed,
    RegistryRateLimited,
    RegistryTLSError,
    RegistryUnavailable,
)
from stagewright.registry.index import IndexChild, image_index
from stagewright.registry.layers import base_bytes, clean_instruction, largest_layers
from stagewright.registry.models import ImageInfo, Layer, PlatformImage
from stagewright.registry.reference import ImageReference

__all__ = [
    "Credentials",
    "ImageInfo",
    "ImageNotFound",
    "ImageReference",
    "IndexChild",
    "InvalidManifest",
    "Layer",
    "PlatformImage",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryError",
    "RegistryNotAllowed",
    "RegistryRateLimited",
    "RegistryTLSError",
    "RegistryUnavailable",
    "base_bytes",
    "clean_instruction",
    "find_credentials",
    "image_index",
    "largest_layers",
]
