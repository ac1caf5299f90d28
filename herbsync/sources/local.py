"""A source backed by a local folder in the store layout."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from herbsync.digest import normalize_digest, split_name
from herbsync.errors import InvalidDigest, ObjectNotFound, StoreError
from herbsync.sources.base import FetchResult, ImageSource, ImageStream, Sink
from herbsync.store import Store, StoredFile, VerifiedWriter, copy_chunks


log = structlog.get_logger("herbsync.sources")


class LocalImageSource(ImageSource):
    """Images in a local folder laid out as ``<base_path>/ab/cd/<digest>.<ext>``.

    It is also a sink: a multi source stores images fetched from S3 here, so
    the next request is served locally. Folders are created on first write.
    """

    is_local = True

    def __init__(self, base_path: str | os.PathLike[str]) -> None:
        self.base_path = Path(base_path)
        self.store = Store(self.base_path)

    def __repr__(self) -> str:
        return f"LocalImageSource({str(self.base_path)!r})"

    def describe(self) -> str:
        return str(self.base_path)

    def _find(self, sha256_hash: str, extension: str | None = None) -> Path | None:
        try:
            digest = normalize_digest(sha256_hash)
        except InvalidDigest as error:
            log.warning("digest.invalid", error=str(error))
            return None
        return self.store.find(digest, extension)

    def get_image_path(self, sha256_hash: str) -> str | None:
        """Return the local path of the image, or None if it is not here."""
        path = self._find(sha256_hash)
        return str(path) if path else None

    def exists(self, sha256_hash: str) -> bool:
        return self._find(sha256_hash) is not None

    def open_image(self, digest: str, extension: str | None = None) -> ImageStream:
        path = self.store.find(digest, extension)
        if path is None:
            msg = f"{digest} not found under {self.base_path}"
            raise ObjectNotFound(msg)

        _, found_extension = split_name(path.name)
        try:
            size = path.stat().st_size
        except OSError as error:
            msg = f"cannot read {path}: {error.strerror}"
            raise StoreError(msg) from error
        return ImageStream(found_extension or "jpg", str(path), copy_chunks(path), size)

    def copy_to(
        self,
        digest: str,
        sink: Sink,
        extension: str | None = None,
        expected_size: int | None = None,
    ) -> FetchResult:
        if sink == self.store:
            return self._already_here(digest, extension)
        return super().copy_to(digest, sink, extension, expected_size)

    def _already_here(self, digest: str, extension: str | None) -> FetchResult:
        path = self.store.find(digest, extension)
        if path is None:
            msg = f"{digest} not found under {self.base_path}"
            raise ObjectNotFound(msg)
        _, found_extension = split_name(path.name)
        stored = StoredFile(path, digest, found_extension or "jpg", path.stat().st_size)
        return FetchResult(stored, str(path), 0.0)

    def place(
        self,
        digest: str,
        extension: str,
        chunks: Iterable[bytes],
        origin: str,
        expected_size: int | None = None,
    ) -> StoredFile:
        """Store verified bytes here, as a sink for read-through caching."""
        return self.store.place(digest, extension, chunks, origin, expected_size)

    def open_writer(
        self, digest: str, extension: str, origin: str, expected_size: int | None = None
    ) -> VerifiedWriter[StoredFile]:
        """Open a writer into this cache's store, as ``Store.open_writer`` does."""
        return self.store.open_writer(digest, extension, origin, expected_size)
