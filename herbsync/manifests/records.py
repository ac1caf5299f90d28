"""Building entries from the named fields of a JSONL object or a CSV row."""

from __future__ import annotations

import re

from herbsync.digest import is_digest, shorten
from herbsync.manifests.locations import (
    LocationError,
    check_key,
    check_text,
    split_image_name,
    valid_extension,
)
from herbsync.manifests.model import Entry


# Up to 19 digits: every size below 10**19 bytes, and never an int() of unbounded length.
_SIZE_TEXT = re.compile(r"[0-9]{1,19}")


class FieldError(ValueError):
    """Raised when a field of a record is missing or invalid. The message is the reason."""


def build_entry(
    line: int,
    sha256: str | None,
    key: str | None = None,
    size: int | None = None,
    content_type: str | None = None,
    label: str | None = None,
) -> Entry:
    """Return the Entry for one record, or raise FieldError naming the bad field.

    The extension comes from the key and, when the key has none, from an
    ``image/<type>`` content type. A key whose file name is a different
    digest is rejected, because the download would fail its digest check.
    """
    digest = _digest_of(sha256)
    extension = None

    if key:
        extension = _check_key_field(key, digest)

    if extension is None and content_type:
        extension = _extension_of_media_type(content_type)

    if label:
        _check_label(label)

    return Entry(digest, line, extension, size, key or None, label or None)


def size_from_text(text: str) -> int | None:
    """Return a byte count written as decimal digits, None for empty text, or raise FieldError."""
    text = text.strip()
    if not text:
        return None
    if _SIZE_TEXT.fullmatch(text) is None:
        raise FieldError(f"'bytes' is {shorten(text, 30)!r}, not a whole number of bytes. Give the size or leave it empty")
    return int(text)


def _digest_of(sha256: str | None) -> str:
    if not sha256 or not sha256.strip():
        raise FieldError("has no 'sha256' value. Give the SHA-256 of each image")

    digest = sha256.strip().lower()
    if not is_digest(digest):
        raise FieldError(f"'sha256' is {shorten(sha256, 30)!r}, not 64 hex digits. Give the SHA-256 of the image")
    return digest


def _check_key_field(key: str, digest: str) -> str | None:
    """Raise FieldError for an invalid key or one naming another digest, else return its extension."""
    try:
        check_key(key)
    except LocationError as error:
        raise FieldError(f"the path or key {shorten(key, 40)!r} is invalid: {error}") from None

    # A key whose file name is not a digest, such as "scans/sheet.png", gives only the extension.
    named, extension = split_image_name(key)
    if named is not None and named != digest:
        raise FieldError(f"the path or key names SHA-256 {named}, but 'sha256' is {digest}. Make them agree")
    return extension


def _extension_of_media_type(content_type: str) -> str | None:
    media_type = content_type.partition(";")[0].strip().lower()
    family, _, subtype = media_type.partition("/")
    if family != "image":
        return None
    return valid_extension(subtype.removeprefix("x-"))


def _check_label(label: str) -> None:
    try:
        check_text(label)
    except LocationError as error:
        raise FieldError(f"the label {shorten(label, 40)!r} {error}") from None
