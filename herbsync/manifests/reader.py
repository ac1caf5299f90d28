"""Reading a manifest of any supported format as a stream of entries and problems."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from herbsync.digest import shorten
from herbsync.manifests.delimited import read_delimited
from herbsync.manifests.detect import Detection, Format, detect_format, first_content_line
from herbsync.manifests.jsonl import read_jsonl
from herbsync.manifests.linelist import read_line_list
from herbsync.manifests.model import Entry, Problem
from herbsync.manifests.source import (
    CORRUPT_GZIP_ERRORS,
    HEAD_BYTES,
    binary_reason,
    iter_lines,
    open_manifest,
)
from herbsync.manifests.tomlfile import TomlError, load_document, read_toml


#: Problems listed per manifest. The rest are counted in one closing Problem.
MAX_PROBLEMS = 1000


def read_manifest(path: Path, follow_symlinks: bool = True) -> Iterator[Entry | Problem]:
    """Yield an Entry for each image a manifest requests and a Problem for each bad part.

    The file is read as a stream, gzip is decompressed on the fly, and the
    format (line list, JSONL, CSV/TSV or TOML) is detected from the content.
    Items come in file order, and a digest listed twice is yielded twice.
    Invalid content does not raise: it becomes a Problem, and valid lines are
    still yielded. Only OSError from opening or reading the file propagates,
    when iteration starts or continues: also for a path that is not a
    regular file, or is a symbolic link when ``follow_symlinks`` is false.
    """
    name = shorten(path.name)
    with open_manifest(path, follow_symlinks) as stream:
        yield from _bounded(name, _parse_guarded(name, stream))


def _bounded(name: str, items: Iterable[Entry | Problem]) -> Iterator[Entry | Problem]:
    """Pass items on, listing at most MAX_PROBLEMS problems, and report an empty manifest."""
    listed = 0
    skipped = 0
    count = 0

    for count, item in enumerate(items, start=1):
        if isinstance(item, Problem):
            if listed == MAX_PROBLEMS:
                skipped += 1
                continue
            listed += 1
        yield item

    if skipped:
        reason = f"{skipped} more problems were found but not listed. Fix the ones above and check again"
        yield Problem(None, name, reason)

    if count == 0:
        reason = (
            "manifest lists no images: it is empty or contains only blank lines, comments "
            "or a header. Add the SHA-256 of each image to mirror"
        )
        yield Problem(None, name, reason)


def _parse_guarded(name: str, stream: BinaryIO) -> Iterator[Entry | Problem]:
    """Parse a manifest, turning corrupt gzip data into a final whole-file Problem."""
    try:
        yield from _parse(name, stream)
    except CORRUPT_GZIP_ERRORS as error:
        reason = (
            f"gzip data is corrupt or truncated ({error}), so nothing after the last item was read. "
            "Compress the manifest again"
        )
        yield Problem(None, name, reason)


def _parse(name: str, stream: BinaryIO) -> Iterator[Entry | Problem]:
    head = stream.read(HEAD_BYTES)
    reason = binary_reason(head)
    if reason is not None:
        yield Problem(None, name, reason)
        return

    stream.seek(0)
    first_line = first_content_line(iter_lines(stream))
    detection = detect_format(name, first_line)
    stream.seek(0)

    if detection.format is Format.TOML:
        toml_items = _read_toml_or_none(name, stream, detection)
        if toml_items is not None:
            yield from toml_items
            return
        stream.seek(0)

    yield from _read_lines(stream, detection)


def _read_toml_or_none(name: str, stream: BinaryIO, detection: Detection) -> Iterable[Entry | Problem] | None:
    """Return the items of a TOML manifest, or None when a guessed TOML file is not TOML."""
    try:
        document, text = load_document(stream)
    except TomlError as error:
        if not detection.by_name:
            return None
        return [Problem(error.line, name, str(error))]
    return read_toml(document, text)


def _read_lines(stream: BinaryIO, detection: Detection) -> Iterator[Entry | Problem]:
    lines = iter_lines(stream)

    if detection.format is Format.JSONL:
        return read_jsonl(lines)
    if detection.format is Format.DELIMITED:
        return read_delimited(lines, detection.delimiter)
    return read_line_list(lines)
