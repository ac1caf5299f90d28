"""CSV and TSV manifests: a header row naming a ``sha256`` column, then one image per row."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from herbsync.digest import shorten
from herbsync.manifests.model import Entry, Problem
from herbsync.manifests.records import FieldError, build_entry, size_from_text


DELIMITERS = (",", "\t", ";")

#: Label columns in order of preference. A row takes the first of them that is not empty.
LABEL_COLUMNS = ("catalognumber", "occurrenceid", "logical_id")


@dataclass(frozen=True, slots=True)
class Columns:
    """Positions of the known columns in a header row, each None when absent."""

    sha256: int
    key: int | None
    size: int | None
    content_type: int | None
    labels: tuple[int, ...]


def header_delimiter(line: str) -> str | None:
    """Return the delimiter of a header line that names a ``sha256`` column, or None.

    Each of comma, tab and semicolon is tried, most frequent in the line first,
    and the first that splits off a ``sha256`` column wins.
    """
    for delimiter in sorted(DELIMITERS, key=line.count, reverse=True):
        if columns_of(_split(line, delimiter)) is not None:
            return delimiter
    return None


def columns_of(header: list[str]) -> Columns | None:
    """Return the known column positions, matched case-insensitively, or None without ``sha256``."""
    names = [name.strip().lower() for name in header]

    def find(*candidates: str) -> int | None:
        for candidate in candidates:
            if candidate in names:
                return names.index(candidate)
        return None

    sha256 = find("sha256")
    if sha256 is None:
        return None

    labels = tuple(names.index(name) for name in LABEL_COLUMNS if name in names)
    return Columns(sha256, find("path", "key"), find("bytes"), find("content_type"), labels)


def read_delimited(lines: Iterable[tuple[int, str] | Problem], delimiter: str) -> Iterator[Entry | Problem]:
    """Yield an Entry per valid row and a Problem per bad row or line.

    Blank lines and ``#`` comment lines before the header are skipped, and so
    are rows with only empty fields. Quoted fields may span lines.
    """
    pending: list[Problem] = []
    texts = _texts(lines, pending)

    header_line = 0
    for header_line, text in enumerate(texts, start=1):
        if text.strip() and not text.lstrip().startswith("#"):
            break
    else:
        yield from pending
        return

    yield from pending
    pending.clear()

    columns = columns_of(_split(text, delimiter))
    if columns is None:
        reason = "header row has no 'sha256' column. Name the column of digests 'sha256'"
        yield Problem(header_line, shorten(text.strip()), reason)
        return

    yield from _read_rows(texts, pending, header_line, columns, delimiter)


def _read_rows(
    texts: Iterator[str],
    pending: list[Problem],
    header_line: int,
    columns: Columns,
    delimiter: str,
) -> Iterator[Entry | Problem]:
    reader = csv.reader(texts, delimiter=delimiter)

    while True:
        start = header_line + reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            yield from pending
            pending.clear()
            yield Problem(start, "", f"row is not valid CSV ({error}). Check its quotes")
            continue

        yield from pending
        pending.clear()

        if any(field.strip() for field in row):
            yield _entry_or_problem(start, row, columns, delimiter)

    yield from pending


def _entry_or_problem(line: int, row: list[str], columns: Columns, delimiter: str) -> Entry | Problem:
    def value(index: int | None) -> str:
        if index is None or index >= len(row):
            return ""
        return row[index].strip()

    label = next((value(index) for index in columns.labels if value(index)), None)

    try:
        return build_entry(
            line,
            sha256=value(columns.sha256),
            key=value(columns.key),
            size=size_from_text(value(columns.size)),
            content_type=value(columns.content_type),
            label=label,
        )
    except FieldError as error:
        return Problem(line, shorten(delimiter.join(row)), str(error))


def _texts(lines: Iterable[tuple[int, str] | Problem], pending: list[Problem]) -> Iterator[str]:
    """Yield the text of each line, and an empty line in place of each unreadable one.

    The empty line keeps the csv reader's line count in step with the file,
    and the Problem goes to ``pending`` for the caller to yield.
    """
    for item in lines:
        if isinstance(item, Problem):
            pending.append(item)
            yield "\n"
        else:
            yield item[1]


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return []
