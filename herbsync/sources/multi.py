"""A source that tries several sources in priority order."""

from __future__ import annotations

import os

import structlog

from herbsync.errors import (
    DigestMismatch,
    ObjectNotFound,
    SizeMismatch,
    SourceError,
)
from herbsync.sources.base import (
    FetchResult,
    ImageSource,
    ImageStream,
    ProgressCallback,
    Sink,
    TransferOptions,
    UploadResult,
)
from herbsync.sources.local import LocalImageSource


log = structlog.get_logger("herbsync.sources")

# Errors after which the next source is tried: the image may be there instead.
FALL_THROUGH_ERRORS = (SourceError, DigestMismatch, SizeMismatch)


class MultiImageSource(ImageSource):
    """Sources tried in order, local caches first by convention.

    An image found in a remote source is also stored in the first local
    source (the cache), so the next request for it is served locally.
    """

    def __init__(self, sources: list[ImageSource]) -> None:
        self.sources = list(sources)
        self.is_local = all(source.is_local for source in self.sources)
        self.accepts_uploads = any(source.accepts_uploads for source in self.sources)

    def __repr__(self) -> str:
        return f"MultiImageSource({self.sources!r})"

    def describe(self) -> str:
        return " > ".join(source.describe() for source in self.sources)

    def prepare(self, concurrency: int = 1) -> None:
        for source in self.sources:
            source.prepare(concurrency)

    @property
    def cache(self) -> LocalImageSource | None:
        """The first local source, which receives images fetched from remote ones."""
        for source in self.sources:
            if isinstance(source, LocalImageSource):
                return source
        return None

    @property
    def upload_target(self) -> ImageSource | None:
        """The first source that accepts uploads, which receives every upload."""
        for source in self.sources:
            if source.accepts_uploads:
                return source
        return None

    def upload(
        self,
        path: str | os.PathLike[str],
        options: TransferOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload through the first source that accepts uploads (an S3 source with credentials)."""
        target = self.upload_target
        if target is None:
            msg = f"none of {self.describe()} accepts uploads; add an s3 source that is not anonymous"
            raise SourceError(msg)
        return target.upload(path, options, progress)

    def get_image_path(self, sha256_hash: str) -> str | None:
        for source in self.sources:
            path = source.get_image_path(sha256_hash)
            if path:
                return path
        return None

    def exists(self, sha256_hash: str) -> bool:
        return any(source.exists(sha256_hash) for source in self.sources)

    def open_image(self, digest: str, extension: str | None = None) -> ImageStream:
        errors: list[str] = []
        for source in self.sources:
            try:
                return source.open_image(digest, extension)
            except SourceError as error:
                errors.append(str(error))
        raise self._combined_error(digest, errors)

    def copy_to(
        self,
        digest: str,
        sink: Sink,
        extension: str | None = None,
        expected_size: int | None = None,
    ) -> FetchResult:
        """Copy from the first source that delivers verified bytes.

        A source that lacks the image, fails, or delivers wrong bytes is
        logged and the next one is tried. Remote images pass through the
        cache (the first local source) on their way to ``sink``.
        """
        errors: list[str] = []
        only_not_found = True
        for source in self.sources:
            try:
                return self._copy_from(source, digest, sink, extension, expected_size)
            except FALL_THROUGH_ERRORS as error:
                only_not_found = only_not_found and isinstance(error, ObjectNotFound)
                errors.append(str(error))
                if not isinstance(error, ObjectNotFound):
                    log.warning(
                        "source.failed",
                        digest=digest,
                        source=source.describe(),
                        error=str(error),
                        kind=type(error).__name__,
                    )
        raise self._combined_error(digest, errors, only_not_found)

    def _copy_from(
        self,
        source: ImageSource,
        digest: str,
        sink: Sink,
        extension: str | None,
        expected_size: int | None,
    ) -> FetchResult:
        cache = self.cache
        if source.is_local or cache is None or sink == cache.store:
            return source.copy_to(digest, sink, extension, expected_size)

        cached = source.copy_to(digest, cache.store, extension, expected_size)
        log.debug("cache.stored", digest=digest, path=str(cached.stored.path))
        delivered = cache.copy_to(digest, sink, cached.stored.extension, expected_size)
        return FetchResult(delivered.stored, cached.origin, cached.seconds + delivered.seconds)

    def _combined_error(
        self, digest: str, errors: list[str], only_not_found: bool = True
    ) -> SourceError:
        detail = "; ".join(errors) if errors else "no sources configured"
        if only_not_found:
            return ObjectNotFound(f"{digest} not found in any source ({detail})")
        return SourceError(f"{digest} could not be fetched from any source ({detail})")
