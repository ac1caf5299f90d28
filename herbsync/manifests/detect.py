"""Format detection for a manifest from its file name and first content line."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from herbsync.manifests.delimited import header_delimiter
from herbsync.manifests.model import Problem


class Format(enum.Enum):
    """Manifest formats. A line list may mix digests, sha256sum lines and URLs."""

    LINES = "lines"
    JSONL = "jsonl"
    DELIMITED = "delimited"
    TOML = "toml"


@dataclass(frozen=True, slots=True)
class Detection:
    """Detected format of one manifest."""

    format: Format
    #: Field delimiter of a DELIMITED manifest.
    delimiter: str = ","
    #: Whether the file name (``.toml``) fixed the format. Otherwise TOML is a guess that may fail.
    by_name: bool = False


_TOML_SUFFIXES = (".toml", ".toml.gz")

# A TOML table header "[name]" or "[[name]]", or "key = ..." with a bare, quoted or dotted key.
_TOML_KEY = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_TOML_START = re.compile(rf"\[\[?[^\]]+\]\]?\s*(?:#.*)?|{_TOML_KEY}(?:\s*\.\s*{_TOML_KEY})*\s*=.*")


def detect_format(name: str, first_line: str | None) -> Detection:
    """Return the format of a manifest from its file name and first content line.

    A ``.toml`` name means TOML. Otherwise the first line that is neither blank
    nor a ``#`` comment decides: ``{`` starts JSONL, a header naming a ``sha256``
    column starts CSV or TSV, and a table header or ``key = value`` may start
    TOML. Anything else is a line list.
    """
    if name.lower().endswith(_TOML_SUFFIXES):
        return Detection(Format.TOML, by_name=True)

    if first_line is None:
        return Detection(Format.LINES)

    if first_line.startswith("{"):
        return Detection(Format.JSONL)

    delimiter = header_delimiter(first_line)
    if delimiter is not None:
        return Detection(Format.DELIMITED, delimiter=delimiter)

    if _TOML_START.fullmatch(first_line):
        return Detection(Format.TOML)

    return Detection(Format.LINES)


def first_content_line(lines: Iterable[tuple[int, str] | Problem]) -> str | None:
    """Return the first line that is neither blank nor a ``#`` comment, stripped, or None.

    Unreadable lines are passed over here, and the parser reports them later.
    """
    for item in lines:
        if isinstance(item, Problem):
            continue

        text = item[1].strip()
        if text and not text.startswith("#"):
            return text
    return None
