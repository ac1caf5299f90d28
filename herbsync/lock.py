"""A single-instance lock on a store, so two daemons never write the same files."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from herbsync.errors import HerbsyncError


LOCK_NAME = ".herbsync.lock"


class AlreadyRunning(HerbsyncError):
    """Raised when another daemon holds the store's lock."""


class StoreLock:
    """An exclusive ``flock`` on ``<store>/.herbsync.lock`` holding the owner's PID.

    The kernel releases the lock when the process exits, ``kill -9`` included,
    so a crash never leaves a stale lock behind.
    """

    def __init__(self, store_root: Path) -> None:
        self.path = Path(store_root) / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``AlreadyRunning`` naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            msg = f"another herbsync daemon (PID {holder}) is already running on the store {self.path.parent}"
            raise AlreadyRunning(msg) from None

        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        """Give the lock up; the file stays, empty of meaning until the next holder writes."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
