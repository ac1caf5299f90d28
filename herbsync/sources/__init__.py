"""Image sources: local folders, S3 buckets, and ordered combinations of them."""

from herbsync.sources.base import FetchResult, FileSink, ImageSource, ImageStream, Sink
from herbsync.sources.factory import (
    DEFAULT_MULTI_CONFIG,
    DEFAULT_S3_CONFIG,
    ImageSourceConfig,
    build_source,
)
from herbsync.sources.local import LocalImageSource
from herbsync.sources.multi import MultiImageSource
from herbsync.sources.s3 import S3ImageSource


__all__ = [
    "DEFAULT_MULTI_CONFIG",
    "DEFAULT_S3_CONFIG",
    "FetchResult",
    "FileSink",
    "ImageSource",
    "ImageSourceConfig",
    "ImageStream",
    "LocalImageSource",
    "MultiImageSource",
    "S3ImageSource",
    "Sink",
    "build_source",
]
