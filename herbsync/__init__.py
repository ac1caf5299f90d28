"""herbsync: mirror SHA-256-keyed herbarium images from S3 into a verified local store.

The library API keeps the names and call shapes of the original image-source
module, so a script changes only its import line.
"""

from herbsync.digest import calculate_sha256, extract_sha256_from_url
from herbsync.errors import (
    AccessDenied,
    ConfigError,
    DigestMismatch,
    HerbsyncError,
    InvalidDigest,
    ObjectNotFound,
    SizeMismatch,
    SourceError,
    SourceUnavailable,
    StoreError,
    StoreFull,
)
from herbsync.sources import (
    DEFAULT_MULTI_CONFIG,
    DEFAULT_S3_CONFIG,
    FetchResult,
    ImageSource,
    ImageSourceConfig,
    LocalImageSource,
    MultiImageSource,
    S3ImageSource,
)


__all__ = [
    "DEFAULT_MULTI_CONFIG",
    "DEFAULT_S3_CONFIG",
    "AccessDenied",
    "ConfigError",
    "DigestMismatch",
    "FetchResult",
    "HerbsyncError",
    "ImageSource",
    "ImageSourceConfig",
    "InvalidDigest",
    "LocalImageSource",
    "MultiImageSource",
    "ObjectNotFound",
    "S3ImageSource",
    "SizeMismatch",
    "SourceError",
    "SourceUnavailable",
    "StoreError",
    "StoreFull",
    "calculate_sha256",
    "extract_sha256_from_url",
]
