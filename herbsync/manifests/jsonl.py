"""JSONL manifests: one JSON object per line with ``sha256`` and optional details."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from herbsync.digest import shorten
from herbsync.manifests.model import Entry, Problem
from herbsync.manifests.records import FieldError, build_entry


def read_jsonl(lines: Iterable[tuple[int, str] | Problem]) -> Iterator[Entry | Problem]:
    """Yield an Entry per valid object and a Problem per bad line.

    Fields: ``sha256`` (required), ``path`` (object key, also gives the
    extension), ``bytes`` (int >= 0), ``content_type`` and ``logical_id``
    (the label). Blank lines and lines starting with ``#`` are skipped.
    """
    for item in lines:
        if isinstance(item, Problem):
            yield item
            continue

        number, text = item
        text = text.strip()
        if not text or text.startswith("#"):
            continue

        try:
            yield _entry_of(number, text)
        except FieldError as error:
            yield Problem(number, shorten(text), str(error))


def _entry_of(number: int, text: str) -> Entry:
    try:
        record = json.loads(text)
    except ValueError as error:
        raise FieldError(f"line is not valid JSON ({error}). Write one JSON object per line") from None
    except RecursionError:
        raise FieldError("line nests JSON too deeply. Write one flat JSON object per line") from None

    if not isinstance(record, dict):
        raise FieldError("line is not a JSON object. Write one object with a 'sha256' field per line")

    return build_entry(
        number,
        sha256=_text_field(record, "sha256"),
        key=_text_field(record, "path"),
        size=_size_field(record),
        content_type=_text_field(record, "content_type"),
        label=_label_field(record),
    )


def _text_field(record: dict[str, object], name: str) -> str | None:
    value = record.get(name)
    if value is None or isinstance(value, str):
        return value
    raise FieldError(f"'{name}' is {type(value).__name__}, not a string. Write it in quotes")


def _size_field(record: dict[str, object]) -> int | None:
    value = record.get("bytes")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise FieldError(f"'bytes' is {shorten(repr(value), 30)}, not a whole number >= 0. Give the size in bytes")


def _label_field(record: dict[str, object]) -> str | None:
    value = record.get("logical_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    label = _text_field(record, "logical_id")
    return label.strip() if label else None
