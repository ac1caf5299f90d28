"""Durability of mirrored files after they are placed, and the check after a crash.

A mirror pass renames each batch of verified files into place without
waiting for the disk, so a file is readable as soon as it is verified. A
``WriteBack`` thread then syncs the store's filesystem in the background.

Until that sync returns, a power cut could leave a renamed file whose bytes
never reached the disk (empty, or zeros on some filesystems). So each writer
keeps a marker file ``<store>/.unsynced/<id>.<ns>`` while it runs:

* it creates the marker, durably, before it places its first file;
* ``<ns>`` is a time in nanoseconds since the epoch such that every file it
  renamed into place before then is on disk. A rename updates the name after
  each sync, and the filesystem journal keeps a rename atomic;
* it holds an ``flock`` on the marker, so the kernel releases it when the
  process ends in any way;
* it removes the marker after its last sync at a clean exit.

``recover`` runs before a writer places anything. It takes over each marker
whose lock is free, which means its writer died, and hashes every stored file
whose ctime is not older than the marker's time (less ``CLOCK_MARGIN_NS``). It
quarantines each file that does not hash to its name. The next pass fetches
those again.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog

from herbsync.errors import StoreError
from herbsync.store import Store, fsync_directory, fsync_file, sync_filesystem


log = structlog.get_logger("herbsync.durability")

UNSYNCED_FOLDER = ".unsynced"

#: Files scanned between two calls of ``recover``'s progress callback.
PROGRESS_EVERY = 10_000

#: Slack for comparing file ctimes with a marker's time. The kernel stamps
#: ctime from a coarse clock that may lag the current time by some milliseconds.
#: NOTE: a wall clock stepped back by more than this while files were placed
#: can hide those files from ``recover``.
CLOCK_MARGIN_NS = 2_000_000_000


def _marker_name(identity: str, synced_before_ns: int) -> str:
    return f"{identity}.{synced_before_ns}"


def _parse_marker_name(name: str) -> int | None:
    """Return the time in a marker's name, or None when the name is not a marker's."""
    _, _, stamp = name.rpartition(".")
    return int(stamp) if stamp.isdigit() else None


class WriteBack:
    """A writer's marker and the thread that syncs its placed files to disk. Thread-safe.

    Call ``start`` before placing files, ``placed`` after each batch of
    renames, and ``close`` at the end. ``flush`` blocks until everything
    placed so far is on disk.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.folder = store.root / UNSYNCED_FOLDER
        self._identity = uuid.uuid4().hex
        self._marker: Path | None = None
        self._descriptor: int | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Files placed and not yet synced (used only where syncfs is missing),
        # and counts of the batches placed, tried and synced.
        self._pending: list[Path] = []
        self._placed_count = 0
        self._attempted_count = 0
        self._synced_count = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Create the marker durably and start the sync thread."""
        marker = self.folder / _marker_name(self._identity, time.time_ns())
        descriptor: int | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(marker, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            os.fsync(descriptor)
            fsync_directory(self.folder)
        except OSError as error:
            if descriptor is not None:
                os.close(descriptor)
            msg = f"cannot create {marker}: {error.strerror or error}; check that the store folder is writable"
            raise StoreError(msg) from error
        self._marker, self._descriptor = marker, descriptor

        self._thread = threading.Thread(target=self._run, name="write-back", daemon=True)
        self._thread.start()

    def placed(self, paths: Iterable[Path]) -> None:
        """Note files just renamed into place, for the next sync."""
        with self._changed:
            self._pending.extend(paths)
            self._placed_count += 1
            self._changed.notify_all()

    def flush(self) -> bool:
        """Block until every file placed so far is synced; return False if a sync failed."""
        with self._changed:
            target = self._placed_count
            while self._attempted_count < target and self._thread is not None and self._thread.is_alive():
                self._changed.wait(1.0)
            return self._synced_count >= target

    def close(self) -> bool:
        """Sync what is left, stop the thread, and remove the marker once everything is on disk.

        Returns False when the last sync failed. The marker then stays, so
        the next start checks the files placed since its time.
        """
        synced = self.flush()
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._marker is not None and synced:
            self._marker.unlink(missing_ok=True)
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None
            self._marker = None
        return synced

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._placed_count == self._attempted_count and not self._closing:
                    self._changed.wait()
                if self._placed_count == self._attempted_count:
                    return
                target = self._placed_count
                pending, self._pending = self._pending, []

            started_ns = time.time_ns()
            synced = self._sync(pending)
            if synced:
                self._advance_marker(started_ns)
            with self._changed:
                self._attempted_count = target
                if synced:
                    self._synced_count = target
                else:
                    # The marker still covers these files, and the next sync retries them.
                    self._pending = pending + self._pending
                self._changed.notify_all()

    def _sync(self, pending: list[Path]) -> bool:
        """Write the placed files and their folder entries to disk; log and return False on failure."""
        try:
            if not sync_filesystem(self.store.root):
                self._fsync_each(pending)
        except OSError as error:
            log.error(
                "store.sync_failed",
                store=str(self.store.root),
                error=str(error),
                action="check the disk; the files stay readable and are checked again after a restart",
            )
            return False
        return True

    @staticmethod
    def _fsync_each(paths: list[Path]) -> None:
        # A file or folder removed since it was placed (evicted or
        # quarantined, say) needs no sync.
        for path in paths:
            try:
                fsync_file(path)
            except FileNotFoundError:
                continue
        for folder in sorted({path.parent for path in paths}):
            try:
                fsync_directory(folder)
            except FileNotFoundError:
                continue

    def _advance_marker(self, synced_before_ns: int) -> None:
        """Rename the marker to the time before which every placed file is on disk."""
        if self._marker is None:
            return
        renamed = self.folder / _marker_name(self._identity, synced_before_ns)
        try:
            os.replace(self._marker, renamed)
        except OSError as error:
            log.warning("store.marker_failed", marker=str(self._marker), error=str(error))
            return
        self._marker = renamed


def recover(store: Store, progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Check the files that writers which died may have left unsynced; return those quarantined.

    Markers of writers still running are locked and left alone. A store of
    millions of files takes a while to walk, so ``progress`` (if given) is
    called with the files scanned and hashed so far every ``PROGRESS_EVERY`` files.
    """
    folder = store.root / UNSYNCED_FOLDER
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as error:
        msg = f"cannot read {folder}: {error.strerror or error}; check that the store folder is readable"
        raise StoreError(msg) from error

    quarantined: list[Path] = []
    for name in names:
        marker = folder / name
        synced_before_ns = _parse_marker_name(name)
        descriptor = _lock_if_abandoned(marker)
        if descriptor is None:
            continue
        try:
            if synced_before_ns is None:
                log.warning("store.marker_unknown", marker=str(marker), action="remove this file")
                continue
            quarantined += _check_changed_since(store, synced_before_ns - CLOCK_MARGIN_NS, marker, progress)
            sync_filesystem(store.root)
            marker.unlink(missing_ok=True)
        finally:
            os.close(descriptor)
    return quarantined


def _lock_if_abandoned(marker: Path) -> int | None:
    """Return a descriptor that holds the marker's lock, or None while its writer runs."""
    try:
        descriptor = os.open(marker, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _check_changed_since(
    store: Store, since_ns: int, marker: Path, progress: Callable[[int, int], None] | None
) -> list[Path]:
    """Hash every stored file with a ctime of ``since_ns`` or later; quarantine those that differ."""
    checked = 0
    quarantined = []
    for scanned, stored in enumerate(store.iter_files(), start=1):
        if progress is not None and scanned % PROGRESS_EVERY == 0:
            progress(scanned, checked)
        try:
            changed_ns = stored.path.stat().st_ctime_ns
        except FileNotFoundError:
            continue
        if changed_ns < since_ns:
            continue

        checked += 1
        actual = store.check(stored.path)
        if actual is None:
            continue
        moved = store.quarantine(stored.path)
        log.error(
            "store.unsynced_corrupt",
            digest=stored.digest,
            actual=actual,
            path=str(stored.path),
            quarantine=str(moved),
            reason="its bytes did not reach the disk before the previous run stopped",
        )
        quarantined.append(moved)

    log.warning("store.recovered", marker=marker.name, checked=checked, quarantined=len(quarantined))
    return quarantined
