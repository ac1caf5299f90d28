"""Build image sources from configuration tables (dicts or TOML)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from herbsync.errors import ConfigError
from herbsync.sources.base import ImageSource
from herbsync.sources.local import LocalImageSource
from herbsync.sources.multi import MultiImageSource
from herbsync.sources.s3 import S3ImageSource


DEFAULT_S3_CONFIG: dict[str, Any] = {
    "type": "s3",
    "bucket": "devvyn.aafc-srdc.herbarium",
    "region": "ca-central-1",
    "prefix": "images",
}

DEFAULT_MULTI_CONFIG: dict[str, Any] = {
    "type": "multi",
    "sources": [{"type": "local", "base_path": "./images"}, DEFAULT_S3_CONFIG],
}

_KEYS = {
    "local": {"type", "base_path"},
    "s3": {
        "type",
        "bucket",
        "region",
        "prefix",
        "endpoint_url",
        "anonymous",
        "max_pool_connections",
        "connect_timeout",
        "read_timeout",
    },
    "multi": {"type", "sources"},
}


def _require_text(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        msg = f"{where}.{key} is missing; add it to the source table"
        raise ConfigError(msg)
    if not isinstance(value, str) or not value.strip():
        msg = f"{where}.{key} = {value!r} is invalid: expected a non-empty string"
        raise ConfigError(msg)
    return value


def _check_keys(table: Mapping[str, Any], kind: str, where: str) -> None:
    unknown = sorted(set(table) - _KEYS[kind])
    if unknown:
        allowed = ", ".join(sorted(_KEYS[kind]))
        msg = f"{where}: unknown key {unknown[0]!r} for type {kind!r}; allowed keys: {allowed}"
        raise ConfigError(msg)


def _seconds(table: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        msg = f"{where}.{key} = {value!r} is invalid: expected a number of seconds > 0"
        raise ConfigError(msg)
    return float(value)


def _build_s3(table: Mapping[str, Any], where: str) -> S3ImageSource:
    anonymous = table.get("anonymous", False)
    if not isinstance(anonymous, bool):
        msg = f"{where}.anonymous = {anonymous!r} is invalid: expected true or false"
        raise ConfigError(msg)

    endpoint_url = table.get("endpoint_url")
    if endpoint_url is not None:
        endpoint_url = _require_text(table, "endpoint_url", where)
        if not endpoint_url.startswith(("http://", "https://")):
            msg = f"{where}.endpoint_url = {endpoint_url!r} is invalid: expected an http:// or https:// URL"
            raise ConfigError(msg)

    pool = table.get("max_pool_connections", 16)
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
        msg = f"{where}.max_pool_connections = {pool!r} is invalid: expected a positive integer"
        raise ConfigError(msg)

    return S3ImageSource(
        bucket=_require_text(table, "bucket", where),
        region=_require_text(table, "region", where, "ca-central-1"),
        prefix=str(table.get("prefix", "images")),
        endpoint_url=endpoint_url,
        anonymous=anonymous,
        max_pool_connections=pool,
        connect_timeout=_seconds(table, "connect_timeout", where, 10.0),
        read_timeout=_seconds(table, "read_timeout", where, 30.0),
    )


def _build_multi(table: Mapping[str, Any], where: str) -> MultiImageSource:
    tables = table.get("sources")
    if not isinstance(tables, list) or not tables:
        msg = f"{where}.sources is missing or empty: list the sources to try, in order"
        raise ConfigError(msg)
    sources = [build_source(item, f"{where}.sources[{index}]") for index, item in enumerate(tables)]
    return MultiImageSource(sources)


def build_source(table: Mapping[str, Any], where: str = "source") -> ImageSource:
    """Build a source from a table, raising ``ConfigError`` that names the key."""
    if not isinstance(table, Mapping):
        msg = f"{where} = {table!r} is invalid: expected a table with a 'type' key"
        raise ConfigError(msg)

    kind = table.get("type", "s3")
    if kind not in _KEYS:
        msg = f"{where}.type = {kind!r} is invalid: expected 'local', 's3' or 'multi'"
        raise ConfigError(msg)
    _check_keys(table, kind, where)

    if kind == "local":
        return LocalImageSource(Path(_require_text(table, "base_path", where)))
    if kind == "s3":
        return _build_s3(table, where)
    return _build_multi(table, where)


class ImageSourceConfig:
    """Factory of image sources from configuration dicts."""

    @staticmethod
    def from_config(config_dict: Mapping[str, Any]) -> ImageSource:
        """Build a source from a dict with ``type`` ``local``, ``s3`` or ``multi``.

        Creates no folders and opens no connections. Raises ``ConfigError``
        (a ``ValueError``) naming the key when the dict is invalid.
        """
        return build_source(config_dict)
