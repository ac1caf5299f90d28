"""TOML manifests: image URLs in string arrays at any depth, such as lists of test images."""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from collections.abc import Iterator
from typing import BinaryIO

from herbsync.digest import shorten
from herbsync.manifests.linelist import parse_line
from herbsync.manifests.model import Entry, Problem

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


#: Largest TOML manifest read, in bytes after decompression, because the whole file is parsed in memory.
MAX_TOML_BYTES = 64 * 1024 * 1024

_ERROR_LINE = re.compile(r"at line (\d+)")


class TomlError(ValueError):
    """Raised when a file is not a readable TOML document, with the error's ``line`` if known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.line = line


def load_document(stream: BinaryIO) -> tuple[dict[str, object], str]:
    """Read and parse a whole TOML manifest, returning the document and its text.

    Raises TomlError when the file is larger than ``MAX_TOML_BYTES``, is not
    UTF-8 or is not valid TOML.
    """
    data = stream.read(MAX_TOML_BYTES + 1)
    if len(data) > MAX_TOML_BYTES:
        limit = MAX_TOML_BYTES // (1024 * 1024)
        raise TomlError(f"TOML manifest is larger than {limit} MiB. Split it or list the URLs one per line")

    try:
        text = data.decode().removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise TomlError(f"TOML manifest is not valid UTF-8 (invalid byte at offset {error.start}). Save it as UTF-8") from None

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TomlError(f"invalid TOML: {error}. Fix the syntax", _line_of_error(error)) from None
    except RecursionError:
        raise TomlError("invalid TOML: arrays or tables nest too deeply. Flatten the file") from None

    return document, text


def read_toml(document: dict[str, object], text: str) -> Iterator[Entry | Problem]:
    """Yield an Entry or Problem for each string inside an array, at any depth.

    Strings outside arrays, such as descriptions, are ignored. Each string is
    read like a line of a line list, so it may be an image URL, a bare digest or
    a sha256sum line. Its line number is where its text first appears at or after
    the previous match, or 0 when the text is not found, for example because the
    TOML wrote it with escapes.
    """
    finder = _LineFinder(text)

    for value in _strings_in_arrays(document, in_array=False):
        line = finder.line_of(value)
        result = parse_line(line, value.strip())
        if result is None:
            result = Problem(line, shorten(value), "string contains no image URL or SHA-256. Remove it from the array")
        yield result


def _strings_in_arrays(value: object, in_array: bool) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings_in_arrays(item, in_array=False)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in_arrays(item, in_array=True)
    elif in_array and isinstance(value, str):
        yield value


def _line_of_error(error: ValueError) -> int | None:
    match = _ERROR_LINE.search(str(error))
    return int(match[1]) if match else None


class _LineFinder:
    """Line lookup for string values, searching the document text in order."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._line_starts = [0] + [match.end() for match in re.finditer("\n", text)]
        self._cursor = 0

    def line_of(self, value: str) -> int:
        if not value:
            return 0

        position = self._text.find(value, self._cursor)
        if position == -1:
            position = self._text.find(value)
        if position == -1:
            return 0

        self._cursor = position + len(value)
        return bisect_right(self._line_starts, position)
