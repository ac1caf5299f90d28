"""The ``ImageSource`` interface that every kind of source implements."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from herbsync.digest import normalize_digest
from herbsync.errors import HerbsyncError, SourceError
from herbsync.store import StoredFile, VerifiedWriter, open_verified, write_chunks


log = structlog.get_logger("herbsync.sources")


class Sink(Protocol):
    """A destination for verified bytes: a ``Store`` or a single file (``FileSink``)."""

    def place(
        self,
        digest: str,
        extension: str,
        chunks: Iterable[bytes],
        origin: str,
        expected_size: int | None = None,
    ) -> StoredFile:
        """Write the bytes if they hash to ``digest``, else raise ``DigestMismatch``."""
        ...

    def open_writer(
        self, digest: str, extension: str, origin: str, expected_size: int | None = None
    ) -> VerifiedWriter[StoredFile]:
        """Open a writer that bytes are pushed into. Its ``finish`` does what ``place`` does."""
        ...


class FileSink:
    """A sink that writes one image to a fixed path, atomically and verified."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def place(
        self,
        digest: str,
        extension: str,
        chunks: Iterable[bytes],
        origin: str,
        expected_size: int | None = None,
    ) -> StoredFile:
        return write_chunks(self.open_writer(digest, extension, origin, expected_size), chunks)

    def open_writer(
        self, digest: str, extension: str, origin: str, expected_size: int | None = None
    ) -> VerifiedWriter[StoredFile]:
        return open_verified(self.path, digest, origin, None, expected_size, extension=extension)


@dataclass
class ImageStream:
    """An open image: its bytes as chunks, with the extension and size the source reports."""

    extension: str
    origin: str
    chunks: Iterator[bytes]
    size: int | None = None

    def close(self) -> None:
        """Release the connection or file handle behind the chunks."""
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ImageStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one successful fetch."""

    stored: StoredFile
    origin: str
    seconds: float


MIB = 1024 * 1024
GIB = 1024 * MIB

# S3 limits: one PUT carries at most 5 GiB, and every part of a multipart
# upload but the last carries 5 MiB to 5 GiB.
MAX_SINGLE_PUT = 5 * GIB
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """Multipart settings of an upload: one PUT up to the threshold, parts above it."""

    #: Files larger than this many bytes go up in a multipart upload.
    multipart_threshold: int = MAX_SINGLE_PUT
    #: Bytes per part of a multipart upload (raised when a file needs more than 10,000 parts).
    part_size: int = 64 * MIB


#: Called with the number of bytes read for the upload since the last call.
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class UploadResult:
    """The outcome of one successful upload."""

    digest: str
    key: str
    size: int
    content_type: str
    #: False when the object already existed and nothing was written.
    created: bool
    seconds: float
    #: Whether the upload went up in parts.
    multipart: bool = False


class ImageSource(ABC):
    """A place images can be read from by SHA-256 digest.

    The core that subclasses implement is ``open_image`` (raising typed
    ``SourceError`` subclasses). The boolean methods ``exists`` and
    ``download_image`` keep the call shapes of the original image-source
    module: they never raise for a missing or unreachable image, and log why
    they return False. New code should call ``fetch`` or ``copy_to``, which
    raise.
    """

    #: Whether this source is a folder on this host (tried before remote ones).
    is_local = False

    #: Whether ``upload`` can write images to this source.
    accepts_uploads = False

    def prepare(self, concurrency: int = 1) -> None:
        """Get ready for ``concurrency`` parallel transfers before the first one starts.

        Sources that open connections build their clients here, so the first
        fetch does not pay for it while other workers wait.
        """

    @abstractmethod
    def describe(self) -> str:
        """Return a short description for logs, such as ``s3://bucket/images``."""

    @abstractmethod
    def open_image(self, digest: str, extension: str | None = None) -> ImageStream:
        """Open an image for reading; raise ``ObjectNotFound`` if it is absent."""

    @abstractmethod
    def get_image_path(self, sha256_hash: str) -> str | None:
        """Return the path or URL of an image, or None if there is none."""

    @abstractmethod
    def exists(self, sha256_hash: str) -> bool:
        """Return whether the source contains the image (False on any error, which is logged)."""

    def copy_to(
        self,
        digest: str,
        sink: Sink,
        extension: str | None = None,
        expected_size: int | None = None,
    ) -> FetchResult:
        """Copy an image into ``sink``, verified while it streams."""
        started = time.monotonic()
        with self.open_image(digest, extension) as image:
            stored = sink.place(
                digest, image.extension, image.chunks, image.origin, expected_size
            )
        return FetchResult(stored, image.origin, time.monotonic() - started)

    def fetch(self, sha256_hash: str, local_path: str | Path) -> FetchResult:
        """Download an image to ``local_path``, verified; raise on any failure."""
        digest = normalize_digest(sha256_hash)
        return self.copy_to(digest, FileSink(Path(local_path)))

    def download_image(self, sha256_hash: str, local_path: str | Path) -> bool:
        """Download an image to ``local_path``; return False, logging why, on failure.

        Nothing is written at ``local_path`` unless the bytes hash to
        ``sha256_hash``.
        """
        try:
            self.fetch(sha256_hash, local_path)
        except HerbsyncError as error:
            log.warning(
                "download.failed",
                digest=sha256_hash,
                path=str(local_path),
                source=self.describe(),
                error=str(error),
                kind=type(error).__name__,
            )
            return False
        return True

    def upload(
        self,
        path: str | os.PathLike[str],
        options: TransferOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload a file under its SHA-256; sources that accept uploads override this."""
        msg = f"{self.describe()} does not accept uploads; use an s3 source as the upload target"
        raise SourceError(msg)

    def upload_image(self, path: str | os.PathLike[str]) -> str:
        """Upload a file under its SHA-256 and return the digest; see ``upload``."""
        return self.upload(path).digest
