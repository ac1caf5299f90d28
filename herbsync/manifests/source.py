"""Opening a manifest: gzip detection, binary detection and capped line reading."""

from __future__ import annotations

import codecs
import errno
import gzip
import os
import stat
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, cast

from herbsync.digest import shorten
from herbsync.manifests.model import Problem


GZIP_MAGIC = b"\x1f\x8b"

#: Bytes inspected, after decompression, to tell a text manifest from a binary file.
HEAD_BYTES = 8 * 1024

#: Longest accepted line, including its line ending. Longer lines are reported and skipped in chunks.
MAX_LINE_BYTES = 64 * 1024

#: Share of undecodable characters in the head above which a file counts as binary (a heuristic).
#: Text in an 8-bit encoding such as Latin-1 has one undecodable byte per accented letter, far below it.
MAX_INVALID_SHARE = 0.3

#: Reason for a line with a carriage return inside. Lines are split only at LF, so a CR-only file is one line.
CARRIAGE_RETURN_HINT = (
    "line contains carriage returns, so the file probably uses old Mac (CR) line endings. "
    "Save it with LF or CRLF line endings"
)

#: Errors that gzip raises while decompressing corrupt or truncated data.
CORRUPT_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def open_regular_file(path: Path, follow_symlinks: bool = True) -> BinaryIO:
    """Open a regular file for binary reading; raise OSError for anything else.

    The file is opened without blocking and checked once open, so a FIFO
    or device raises at once instead of blocking or reading forever, even
    when it replaced a regular file after the caller checked the path.
    Without ``follow_symlinks``, a symbolic link raises too.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_symlinks:
            raise OSError(errno.ELOOP, "is a symbolic link, not a regular file", str(path)) from None
        raise

    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or folder)", str(path))
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


@contextmanager
def open_manifest(path: Path, follow_symlinks: bool = True) -> Iterator[BinaryIO]:
    """Open a manifest for binary reading, decompressing it when it starts with the gzip magic.

    The returned stream is seekable. OSError from opening the file propagates,
    also when it is not a regular file; see ``open_regular_file``.
    """
    with open_regular_file(path, follow_symlinks) as file:
        magic = file.read(len(GZIP_MAGIC))
        file.seek(0)
        if magic != GZIP_MAGIC:
            yield file
            return

        with gzip.GzipFile(fileobj=file, mode="rb") as decompressed:
            yield cast(BinaryIO, decompressed)


def binary_reason(head: bytes) -> str | None:
    """Return why the first bytes of a manifest show a binary file, or None for text."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "binary file, not a manifest: it is UTF-16 text. Save it as UTF-8"

    # NUL bytes count as invalid characters, not as proof of a binary file:
    # a text manifest with a few stray NULs (as a crash can leave) keeps its
    # valid lines, and iter_lines reports the lines that contain them.
    text = head.decode("utf-8", "replace")
    invalid = text.count("\ufffd") + text.count("\x00")
    if text and invalid / len(text) > MAX_INVALID_SHARE:
        percent = round(100 * invalid / len(text))
        return (
            f"binary file, not a manifest: {percent}% of its first {len(head)} bytes "
            "are NUL bytes or not UTF-8 text. A manifest lists SHA-256 digests as text"
        )
    return None


def iter_lines(stream: BinaryIO) -> Iterator[tuple[int, str] | Problem]:
    """Yield ``(line number, text)`` for each line, or a Problem for an unreadable line.

    Text keeps its line ending, and a UTF-8 byte order mark on line 1 is removed.
    A line that does not fit in ``MAX_LINE_BYTES`` with its line ending is
    reported and skipped in chunks, so memory stays bounded even for a file
    without newlines. A line that contains NUL bytes or is not valid UTF-8 is
    reported and skipped.
    """
    readline = stream.readline
    number = 0

    while raw := readline(MAX_LINE_BYTES):
        number += 1

        if len(raw) == MAX_LINE_BYTES and raw[-1] != 0x0A:
            _skip_rest_of_line(stream)
            yield _long_line_problem(number, raw)
            continue

        if b"\x00" in raw:
            yield _nul_line_problem(number, raw)
            continue

        try:
            text = raw.decode()
        except UnicodeDecodeError as error:
            yield _undecodable_line_problem(number, raw, error)
            continue

        if number == 1:
            text = text.removeprefix("\ufeff")
        yield number, text


def _skip_rest_of_line(stream: BinaryIO) -> None:
    while chunk := stream.readline(MAX_LINE_BYTES):
        if chunk[-1] == 0x0A:
            return


def _long_line_problem(number: int, raw: bytes) -> Problem:
    start = raw[:100].decode("utf-8", "replace")
    if b"\r" in raw.rstrip(b"\r\n"):
        return Problem(number, shorten(start), CARRIAGE_RETURN_HINT)

    reason = (
        f"line is longer than {MAX_LINE_BYTES // 1024} KiB, far too long for a digest, "
        "sha256sum line or URL. Put one entry on each line"
    )
    return Problem(number, shorten(start), reason)


def _nul_line_problem(number: int, raw: bytes) -> Problem:
    text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
    reason = "line contains NUL bytes, which text never has. Remove them or write the manifest again"
    return Problem(number, shorten(text), reason)


def _undecodable_line_problem(number: int, raw: bytes, error: UnicodeDecodeError) -> Problem:
    text = raw.decode("utf-8", "replace").strip()
    reason = f"line is not valid UTF-8 (invalid byte at column {error.start + 1}). Save the manifest as UTF-8"
    return Problem(number, shorten(text), reason)
