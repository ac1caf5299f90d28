"""The daemon's TOML configuration, validated once at start.

Every error names the TOML key and the bad value. Relative paths are taken
relative to the folder of the configuration file.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herbsync.errors import ConfigError
from herbsync.evict import max_size_from_table
from herbsync.scrub import SCRUB_KEYS, ScrubSettings, scrub_settings_from_table
from herbsync.sources.factory import DEFAULT_S3_CONFIG, build_source
from herbsync.upload.settings import UploadSettings, upload_settings_from_dict


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


DEFAULT_CONFIG_PATH = Path("/etc/herbsync/herbsync.toml")

_SECTIONS: dict[str, set[str]] = {
    "store": {"path", "max_size", "evict_interval"},
    "manifests": {"path", "rescan_interval"},
    "state": {"path"},
    "transfers": {"workers", "attempts", "backoff", "first_retry", "max_retry", "shutdown_grace"},
    "logging": {"format", "level"},
    "metrics": {"address"},
    "scrub": set(SCRUB_KEYS),
    # upload_settings_from_dict checks the keys of [upload] itself.
    "upload": set(),
    "source": set(),
}


@dataclass(frozen=True)
class Settings:
    """The validated daemon configuration, with defaults for every setting."""

    store_path: Path = Path("/opt/herbarium/images")
    manifests_path: Path = Path("/var/lib/herbsync/manifests")
    state_path: Path = Path("/var/lib/herbsync")
    #: Parallel transfers. 16 measured faster than 8 for 2 MB and 50 MB
    #: images on a 2-core host against a local server (see BENCHMARKS.md).
    workers: int = 16
    #: Tries of one image within a pass, for transient errors.
    attempts: int = 3
    #: Seconds before the second try within a pass.
    backoff: float = 0.5
    #: Seconds before a failed image is retried in a later pass.
    first_retry: float = 60.0
    #: Maximum wait, in seconds, between retries of a failed image.
    max_retry: float = 86_400.0
    #: Seconds that running transfers may take to finish after SIGTERM.
    shutdown_grace: float = 30.0
    #: ``host:port`` serving Prometheus metrics, or None (off).
    metrics_address: str | None = None
    #: Seconds between full reads of the manifest folder.
    rescan_interval: float = 300.0
    #: "auto" (JSON unless stdout is a terminal), "json" or "console".
    log_format: str = "auto"
    log_level: str = "info"
    source: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_S3_CONFIG))
    config_path: Path | None = None
    #: Largest size of the store in bytes; unwanted images are evicted beyond it. None: no cap.
    max_size: int | None = None
    #: Seconds between eviction runs, when ``max_size`` is set.
    evict_interval: float = 600.0
    scrub: ScrubSettings = field(default_factory=ScrubSettings)
    #: The optional [upload] section, or None when nothing is uploaded.
    upload: UploadSettings | None = None


def _path(table: Mapping[str, Any], key: str, where: str, base: Path, default: Path) -> Path:
    value = table.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        msg = f"{where}.{key} = {value!r} is invalid: expected a path as a string"
        raise ConfigError(msg)
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _number(
    table: Mapping[str, Any], key: str, where: str, default: float, minimum: float, integer: bool = False
) -> Any:
    value = table.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        expected = "an integer" if integer else "a number"
        msg = f"{where}.{key} = {value!r} is invalid: expected {expected} >= {minimum}"
        raise ConfigError(msg)
    return value


def _choice(table: Mapping[str, Any], key: str, where: str, default: str, choices: tuple[str, ...]) -> str:
    value = table.get(key, default)
    if value not in choices:
        msg = f"{where}.{key} = {value!r} is invalid: expected one of {', '.join(choices)}"
        raise ConfigError(msg)
    return str(value)


def _metrics_address(table: Mapping[str, Any]) -> str | None:
    value = table.get("address")
    if value is None or value == "":
        return None
    host, _, port = str(value).rpartition(":")
    if not isinstance(value, str) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"metrics.address = {value!r} is invalid: expected host:port, such as \"127.0.0.1:9108\""
        raise ConfigError(msg)
    return value


def _check_tables(document: Mapping[str, Any]) -> None:
    for section, value in document.items():
        if section not in _SECTIONS:
            msg = f"unknown section [{section}]; known sections: {', '.join(sorted(_SECTIONS))}"
            raise ConfigError(msg)
        if not isinstance(value, Mapping):
            msg = f"{section} = {value!r} is invalid: expected a table [{section}]"
            raise ConfigError(msg)
        allowed = _SECTIONS[section]
        unknown = sorted(set(value) - allowed) if allowed else []
        if unknown:
            msg = f"unknown key {section}.{unknown[0]}; known keys: {', '.join(sorted(allowed))}"
            raise ConfigError(msg)


def settings_from_dict(document: Mapping[str, Any], base: Path = Path("."), config_path: Path | None = None) -> Settings:
    """Validate a parsed configuration document and return its settings."""
    _check_tables(document)
    defaults = Settings()
    store = document.get("store", {})
    manifests = document.get("manifests", {})
    state = document.get("state", {})
    transfers = document.get("transfers", {})
    logging = document.get("logging", {})
    metrics = document.get("metrics", {})
    upload = document.get("upload")
    source = copy.deepcopy(dict(document.get("source", defaults.source)))

    # Building the source checks every key of [source]; it opens nothing.
    build_source(source, "source")
    if source.get("type") == "local" or "base_path" in source:
        source["base_path"] = str(_path(source, "base_path", "source", base, Path(".")))
    for index, table in enumerate(source.get("sources", [])):
        if "base_path" in table:
            table["base_path"] = str(_path(table, "base_path", f"source.sources[{index}]", base, Path(".")))

    first_retry = float(_number(transfers, "first_retry", "transfers", defaults.first_retry, 0))
    max_retry = float(_number(transfers, "max_retry", "transfers", defaults.max_retry, 0))
    if max_retry < first_retry:
        msg = (
            f"transfers.max_retry = {max_retry:g} is invalid: it is less than "
            f"transfers.first_retry = {first_retry:g}; raise max_retry or lower first_retry"
        )
        raise ConfigError(msg)

    return Settings(
        store_path=_path(store, "path", "store", base, defaults.store_path),
        manifests_path=_path(manifests, "path", "manifests", base, defaults.manifests_path),
        state_path=_path(state, "path", "state", base, defaults.state_path),
        workers=_number(transfers, "workers", "transfers", defaults.workers, 1, integer=True),
        attempts=_number(transfers, "attempts", "transfers", defaults.attempts, 1, integer=True),
        backoff=float(_number(transfers, "backoff", "transfers", defaults.backoff, 0)),
        first_retry=first_retry,
        max_retry=max_retry,
        shutdown_grace=float(_number(transfers, "shutdown_grace", "transfers", defaults.shutdown_grace, 0)),
        metrics_address=_metrics_address(metrics),
        rescan_interval=float(_number(manifests, "rescan_interval", "manifests", defaults.rescan_interval, 1)),
        log_format=_choice(logging, "format", "logging", "auto", ("auto", "json", "console")),
        log_level=_choice(logging, "level", "logging", "info", ("debug", "info", "warning", "error")),
        source=source,
        config_path=config_path,
        upload=None if upload is None else upload_settings_from_dict(upload, base),
        max_size=max_size_from_table(store),
        evict_interval=float(_number(store, "evict_interval", "store", defaults.evict_interval, 1)),
        scrub=scrub_settings_from_table(document.get("scrub", {})),
    )


def load_settings(path: str | Path = DEFAULT_CONFIG_PATH) -> Settings:
    """Read and validate a configuration file; raise ``ConfigError`` naming the problem."""
    config_path = Path(path)
    try:
        with open(config_path, "rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        msg = f"configuration file {config_path} not found; pass --config FILE"
        raise ConfigError(msg) from None
    except OSError as error:
        msg = f"cannot read configuration file {config_path}: {error.strerror}"
        raise ConfigError(msg) from error
    except tomllib.TOMLDecodeError as error:
        msg = f"configuration file {config_path} is not valid TOML: {error}"
        raise ConfigError(msg) from error

    try:
        return settings_from_dict(document, config_path.resolve().parent, config_path)
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from None
