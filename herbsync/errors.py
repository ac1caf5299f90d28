"""Exceptions raised by herbsync.

Every error derives from ``HerbsyncError``, so one ``except`` catches all::

    HerbsyncError
    ├── ConfigError                 invalid configuration (also a ValueError)
    ├── InvalidDigest               text that is not a SHA-256 (also a ValueError)
    ├── SourceError                 a source could not deliver an image
    │   ├── ObjectNotFound          the source does not have the image
    │   ├── SourceUnavailable       transient: network, 5xx, throttling
    │   ├── AccessDenied            permanent: credentials or permissions
    │   └── FileChanged             transient: a file changed while it was uploaded
    ├── StoreError                  the local store could not take an image
    │   ├── DigestMismatch          bytes do not hash to their name
    │   ├── SizeMismatch            bytes are not the size a manifest promised
    │   └── StoreFull               no space left on the store's filesystem
    └── TransferAborted             a transfer was cut short by shutdown
"""

from __future__ import annotations


class HerbsyncError(Exception):
    """Base class of every herbsync error."""


class ConfigError(HerbsyncError, ValueError):
    """Raised when a configuration value is missing or invalid."""


class InvalidDigest(HerbsyncError, ValueError):
    """Raised when text is not a valid SHA-256 hex digest."""


class SourceError(HerbsyncError):
    """Raised when a source fails to deliver or accept an image."""

    #: Whether trying again later may succeed.
    transient = False


class ObjectNotFound(SourceError):
    """Raised when a source does not hold the requested image."""


class SourceUnavailable(SourceError):
    """Raised on a transient failure: network errors, 5xx, throttling."""

    transient = True


class AccessDenied(SourceError):
    """Raised when credentials are missing, wrong or lack permission."""


class FileChanged(SourceError):
    """Raised when a file changed between hashing and upload; retry once it is stable."""

    transient = True


class StoreError(HerbsyncError):
    """Raised when the local store cannot take an image."""


class DigestMismatch(StoreError):
    """Raised when bytes do not hash to the digest they were stored under."""

    def __init__(self, expected: str, actual: str, origin: str) -> None:
        self.expected = expected
        self.actual = actual
        self.origin = origin
        msg = f"expected sha256 {expected}, got {actual} from {origin}"
        super().__init__(msg)


class SizeMismatch(StoreError):
    """Raised when a download's size differs from the size a manifest gave."""

    def __init__(self, digest: str, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        msg = f"{digest}: expected {expected} bytes, got {actual}"
        super().__init__(msg)


class StoreFull(StoreError):
    """Raised when the store's filesystem has no space left."""


class TransferAborted(HerbsyncError):
    """Raised inside a transfer that shutdown cut short; nothing is stored."""
