"""Hashing a file once before upload, and re-hashing the bytes an upload reads.

``fingerprint_file`` reads a file once and returns its SHA-256, the SHA-256
of each part when it will go up in parts, and the version (size, mtime,
inode) it had. ``HashingReader`` is the request body: it hashes what the
HTTP client reads, so a change of the file during the upload is detected.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from herbsync.digest import CHUNK_SIZE
from herbsync.errors import FileChanged


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What identifies one state of a file: any write or replacement changes it."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileVersion:
        """Return the version described by a ``stat`` result."""
        return cls(info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A file's SHA-256, taken in one read, and the version it had meanwhile."""

    path: Path
    version: FileVersion
    digest: str
    #: Raw 32-byte SHA-256 of the whole file.
    raw_digest: bytes
    #: Bytes per part, or None for a single PUT.
    part_size: int | None = None
    #: Raw 32-byte SHA-256 of each part, in order.
    part_digests: tuple[bytes, ...] = ()

    @property
    def size(self) -> int:
        """The file's size in bytes when it was hashed."""
        return self.version.size


def checksum_text(raw_digest: bytes) -> str:
    """Return a raw SHA-256 digest as S3's ``ChecksumSHA256`` value (base64)."""
    return base64.b64encode(raw_digest).decode("ascii")


class PartHasher:
    """Hashes a stream of chunks in parts of a fixed size."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.digests: list[bytes] = []
        self._hasher = hashlib.sha256()
        self._filled = 0

    def update(self, chunk: bytes) -> None:
        """Add bytes, closing a part each time ``part_size`` bytes have been added."""
        view = memoryview(chunk)
        while view:
            piece = view[: self.part_size - self._filled]
            self._hasher.update(piece)
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._filled == self.part_size:
                self._close_part()

    def finish(self) -> tuple[bytes, ...]:
        """Close the last, shorter part and return the digests of all parts."""
        if self._filled:
            self._close_part()
        return tuple(self.digests)

    def _close_part(self) -> None:
        self.digests.append(self._hasher.digest())
        self._hasher = hashlib.sha256()
        self._filled = 0


def version_of(path: Path) -> FileVersion:
    """Return the current version of the file at ``path`` (of its target, for a symbolic link)."""
    return FileVersion.of(os.stat(path))


def fingerprint_file(path: Path, part_size: int | None = None) -> Fingerprint:
    """Hash a file in one read; with ``part_size``, hash each part in the same read.

    Raises ``FileChanged`` when the file's size, mtime or inode changed while
    it was read, and ``OSError`` when it cannot be read.
    """
    whole = hashlib.sha256()
    parts = PartHasher(part_size) if part_size else None
    read = 0

    with open(path, "rb") as stream:
        before = FileVersion.of(os.fstat(stream.fileno()))
        while chunk := stream.read(CHUNK_SIZE):
            whole.update(chunk)
            if parts is not None:
                parts.update(chunk)
            read += len(chunk)

    after = version_of(path)
    if after != before or read != before.size:
        msg = f"{path} changed while it was hashed; it is uploaded once it stays unchanged"
        raise FileChanged(msg)

    part_digests = parts.finish() if parts is not None else ()
    raw = whole.digest()
    return Fingerprint(path, before, raw.hex(), raw, part_size, part_digests)


def check_unchanged(fingerprint: Fingerprint, when: str) -> None:
    """Raise ``FileChanged`` if the file is no longer the version that was hashed."""
    try:
        current = version_of(fingerprint.path)
    except FileNotFoundError:
        msg = f"{fingerprint.path} was removed {when}"
        raise FileChanged(msg) from None
    if current != fingerprint.version:
        msg = f"{fingerprint.path} changed {when}; it is uploaded again once it stays unchanged"
        raise FileChanged(msg)


def open_unchanged(fingerprint: Fingerprint) -> BinaryIO:
    """Open the hashed file for reading; raise ``FileChanged`` if it is another version now."""
    stream = open(fingerprint.path, "rb")  # noqa: SIM115 - the caller closes it
    if FileVersion.of(os.fstat(stream.fileno())) != fingerprint.version:
        stream.close()
        msg = f"{fingerprint.path} changed after it was hashed; it is uploaded once it stays unchanged"
        raise FileChanged(msg)
    return stream


class HashingReader:
    """A request body over ``length`` bytes of a file from ``start``, hashed as it is read.

    HTTP clients may read a body more than once: botocore reads it to sign
    the payload over plain HTTP, then rewinds with ``seek(0)`` and sends it.
    Every rewind to 0 starts a new pass, and ``completed_digest`` is the raw
    SHA-256 of the last pass read to the end in order (None if none was).
    ``progress`` receives byte counts, once for each byte of the body,
    however many passes read it.
    """

    def __init__(
        self,
        stream: BinaryIO,
        start: int,
        length: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._stream = stream
        self._start = start
        self._length = length
        self._progress = progress
        self._position = 0
        self._reported = 0
        self._start_pass()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move within the body; a move to 0 starts a new pass."""
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._position + offset
        elif whence == os.SEEK_END:
            target = self._length + offset
        else:
            msg = f"invalid whence {whence}"
            raise ValueError(msg)

        self._position = max(0, target)
        if self._position == 0:
            self._start_pass()
        return self._position

    def _start_pass(self) -> None:
        self._hasher = hashlib.sha256()
        self._hashed = 0
        # An empty body is complete before anything is read.
        self.completed_digest: bytes | None = self._hasher.digest() if self._length == 0 else None

    def read(self, size: int | None = -1) -> bytes:
        """Return up to ``size`` bytes; raise ``FileChanged`` if the file got shorter."""
        remaining = self._length - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""

        self._stream.seek(self._start + self._position)
        data = self._stream.read(size)
        if len(data) < size:
            msg = f"{getattr(self._stream, 'name', 'the file')} got shorter while it was uploaded"
            raise FileChanged(msg)

        self._account(data)
        return data

    def _account(self, data: bytes) -> None:
        # Only bytes read in order from the start of a pass count for its hash.
        if self._hashed == self._position:
            self._hasher.update(data)
            self._hashed += len(data)
        self._position += len(data)
        if self._hashed == self._length:
            self.completed_digest = self._hasher.digest()

        if self._progress is not None and self._position > self._reported:
            self._progress(self._position - self._reported)
            self._reported = self._position
