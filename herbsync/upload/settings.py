"""The optional ``[upload]`` configuration section, validated once at start.

Every error names the key as ``upload.<key>`` and the bad value. Relative
paths are taken relative to the folder of the configuration file.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herbsync.errors import ConfigError
from herbsync.sources.base import (
    MAX_PART_SIZE,
    MAX_SINGLE_PUT,
    MIB,
    MIN_PART_SIZE,
    ImageSource,
    TransferOptions,
)
from herbsync.sources.factory import build_source
from herbsync.units import parse_size


SECTION = "upload"
DEFAULT_EXTENSIONS = frozenset({"jpg", "jpeg", "tif", "tiff", "png", "jp2", "dng"})
AFTER_CHOICES = ("move", "keep", "delete")
DEFAULT_PART_SIZE = 64 * MIB
KNOWN_KEYS = frozenset(
    {"inbox", "after", "target", "extensions", "settle_seconds", "multipart_threshold", "part_size"}
)

_EXTENSION_TEXT = re.compile(r"[a-z0-9]{1,8}")


@dataclass(frozen=True)
class UploadSettings:
    """The validated ``[upload]`` section, with defaults for every optional setting."""

    #: The ``[upload.target]`` table: an s3 source, or a multi source with one.
    target: dict[str, Any]
    #: Folder watched for new images; None when only ``herbsync put`` uploads.
    inbox: Path | None = None
    #: What happens to a file once uploaded: "move" into the store, "keep", or "delete".
    after: str = "move"
    #: Lowercase extensions, without dots, of the files the inbox uploads.
    extensions: frozenset[str] = field(default=DEFAULT_EXTENSIONS)
    #: Seconds a file's size and mtime must stay unchanged before it is uploaded.
    settle_seconds: float = 2.0
    #: Files larger than this many bytes go up in parts.
    multipart_threshold: int = MAX_SINGLE_PUT
    #: Bytes per part of a multipart upload.
    part_size: int = DEFAULT_PART_SIZE

    @property
    def transfer(self) -> TransferOptions:
        """The multipart settings in the form ``ImageSource.upload`` takes."""
        return TransferOptions(self.multipart_threshold, self.part_size)

    def build_target(self) -> ImageSource:
        """Build the upload target source; it opens no connection."""
        return build_upload_target(self.target)


def _invalid(key: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{SECTION}.{key} = {value!r} is invalid: expected {expected}")


def build_upload_target(table: Mapping[str, Any], where: str = f"{SECTION}.target") -> ImageSource:
    """Build a source from ``table`` and check that it can take uploads; raise ``ConfigError``."""
    source = build_source(table, where)
    if not source.accepts_uploads:
        msg = (
            f"{where} = {dict(table)!r} is invalid: expected an s3 source that is not anonymous, "
            "or a multi source that contains one"
        )
        raise ConfigError(msg)
    return source


def _bounded_size(table: Mapping[str, Any], key: str, default: int, minimum: int, maximum: int) -> int:
    value = table.get(key, default)
    size = parse_size(value, f"{SECTION}.{key}")
    if not minimum <= size <= maximum:
        raise _invalid(key, value, f"a size from {minimum} to {maximum} bytes")
    return size


def _extensions(table: Mapping[str, Any]) -> frozenset[str]:
    value = table.get("extensions")
    if value is None:
        return DEFAULT_EXTENSIONS
    if not isinstance(value, list) or not value:
        raise _invalid("extensions", value, "a non-empty list of extensions such as [\"jpg\", \"tif\"]")

    extensions = set()
    for item in value:
        candidate = item.strip().lstrip(".").lower() if isinstance(item, str) else None
        if candidate is None or _EXTENSION_TEXT.fullmatch(candidate) is None:
            raise _invalid("extensions", value, "extensions of 1 to 8 letters or digits, such as \"jpg\"")
        extensions.add(candidate)
    return frozenset(extensions)


def _inbox(table: Mapping[str, Any], base: Path) -> Path | None:
    value = table.get("inbox")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _invalid("inbox", value, "a folder path as a string")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _settle_seconds(table: Mapping[str, Any]) -> float:
    value = table.get("settle_seconds", 2.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _invalid("settle_seconds", value, "a number of seconds >= 0")
    return float(value)


def _after(table: Mapping[str, Any]) -> str:
    value = table.get("after", "move")
    if value not in AFTER_CHOICES:
        raise _invalid("after", value, f"one of {', '.join(AFTER_CHOICES)}")
    return str(value)


def _target(table: Mapping[str, Any], base: Path) -> dict[str, Any]:
    value = table.get("target")
    if value is None:
        msg = f"{SECTION}.target is missing: add an [{SECTION}.target] table with type = \"s3\" and a bucket"
        raise ConfigError(msg)
    if not isinstance(value, Mapping):
        raise _invalid("target", value, f"a table [{SECTION}.target]")

    target = copy.deepcopy(dict(value))
    build_upload_target(target)
    # Local caches in a multi target are folders, relative to the configuration file.
    for item in target.get("sources", []):
        base_path = item.get("base_path")
        if isinstance(base_path, str) and not Path(base_path).expanduser().is_absolute():
            item["base_path"] = str(base / Path(base_path).expanduser())
    return target


def upload_settings_from_dict(table: Mapping[str, Any], base: Path = Path(".")) -> UploadSettings:
    """Validate the ``[upload]`` table and return its settings; raise ``ConfigError`` naming the key."""
    if not isinstance(table, Mapping):
        msg = f"{SECTION} = {table!r} is invalid: expected a table [{SECTION}]"
        raise ConfigError(msg)
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        key = unknown[0]
        msg = f"unknown key {SECTION}.{key} = {table[key]!r}; known keys: {', '.join(sorted(KNOWN_KEYS))}"
        raise ConfigError(msg)

    return UploadSettings(
        target=_target(table, base),
        inbox=_inbox(table, base),
        after=_after(table),
        extensions=_extensions(table),
        settle_seconds=_settle_seconds(table),
        multipart_threshold=_bounded_size(table, "multipart_threshold", MAX_SINGLE_PUT, 0, MAX_SINGLE_PUT),
        part_size=_bounded_size(table, "part_size", DEFAULT_PART_SIZE, MIN_PART_SIZE, MAX_PART_SIZE),
    )
