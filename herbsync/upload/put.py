"""``herbsync put FILE...``: upload files from anywhere once, leaving them where they are."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from herbsync.errors import HerbsyncError
from herbsync.sources.base import ImageSource, TransferOptions, UploadResult
from herbsync.upload.failures import failure_kind


# A progress bar is shown (on a terminal) from this many bytes or files on.
PROGRESS_MIN_BYTES = 32 * 1024 * 1024
PROGRESS_MIN_FILES = 10


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _wants_bar(sizes: list[int], progress: bool) -> bool:
    return progress and (sum(sizes) >= PROGRESS_MIN_BYTES or len(sizes) >= PROGRESS_MIN_FILES)


def put_files(
    paths: Iterable[str | os.PathLike[str]],
    target_source: ImageSource,
    progress: bool = True,
    options: TransferOptions | None = None,
    output: TextIO | None = None,
) -> list[tuple[Path, str, str]]:
    """Upload each file once and print ``<sha256>  <key>  <path>`` for it; return (path, sha256, key).

    Files are only read, never moved or deleted. A file that fails is
    reported on stderr and left out of the result, and the others are still
    uploaded, so a caller compares the result's length with the input's.
    The progress bar counts bytes and appears only on a terminal, for many
    or large files.
    """
    files = [Path(path) for path in paths]
    sizes = [_size_or_zero(path) for path in files]
    stream = output or sys.stdout
    results: list[tuple[Path, str, str]] = []

    bar = tqdm(
        total=sum(sizes),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        # None shows the bar only when stderr is a terminal.
        disable=None if _wants_bar(sizes, progress) else True,
    )
    with bar:
        for path, size in zip(files, sizes):
            result = _put_one(path, size, target_source, options, bar)
            if result is None:
                continue
            tqdm.write(f"{result.digest}  {result.key}  {path}", file=stream)
            results.append((path, result.digest, result.key))
    return results


def _put_one(
    path: Path,
    size: int,
    target_source: ImageSource,
    options: TransferOptions | None,
    bar: tqdm,
) -> UploadResult | None:
    """Upload one file, advancing ``bar`` by its size; report a failure on stderr and return None."""
    sent = 0

    def advance(count: int) -> None:
        nonlocal sent
        sent += count
        bar.update(count)

    if not path.is_file():
        tqdm.write(f"herbsync: {path}: not found or not a regular file; nothing uploaded", file=sys.stderr)
        bar.update(size)
        return None

    try:
        return target_source.upload(path, options, progress=advance)
    except (HerbsyncError, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        tqdm.write(f"herbsync: {path}: upload failed ({failure_kind(error)}): {reason}", file=sys.stderr)
        return None
    finally:
        # An object that already existed may be confirmed before its bytes are sent.
        if size > sent:
            bar.update(size - sent)
