"""Eviction: keep the store within ``[store] max_size`` by removing images no manifest wants.

Unwanted images go least recently used first. A file's last use is the later
of its access time and its modification time. Under the default ``relatime``
mount option, Linux updates the access time on a read only when it is older
than the modification time or more than a day old (mount(8)), and under
``noatime`` never. The modification time, when the file was stored, is the
fallback. Wanted images are never removed: when they alone exceed
``max_size``, eviction reports it and removes only unwanted ones.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import structlog

from herbsync.digest import is_digest, split_name
from herbsync.state import State
from herbsync.store import Store
from herbsync.units import parse_size


log = structlog.get_logger("herbsync.evict")

# Store files looked up in the wants table per query.
LOOKUP_BATCH = 500


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """A file at a layout path, with its size and last use."""

    path: Path
    digest: str
    size: int
    #: Seconds since the epoch: the later of the access and modification times.
    last_used: float


@dataclass(frozen=True)
class EvictionPlan:
    """The files that eviction would remove, least recently used first, with the store's sizes."""

    max_size: int
    #: Bytes of every file at a layout path, wanted or not.
    total_bytes: int
    #: Bytes of the files that some manifest wants.
    wanted_bytes: int
    removals: tuple[StoreEntry, ...]
    bytes_freed: int
    #: True when wanted images alone take more than ``max_size``.
    over_capacity: bool

    @property
    def total_after(self) -> int:
        """Return the store's size in bytes once every planned removal is done."""
        return self.total_bytes - self.bytes_freed


@dataclass
class EvictionResult:
    """The outcome of one eviction: the files removed and whether the store fits ``max_size``."""

    max_size: int
    total_bytes: int
    wanted_bytes: int
    over_capacity: bool
    removed: int = 0
    bytes_freed: int = 0
    #: Planned files that a manifest wanted by the time of removal, or that were already gone.
    spared: int = 0
    failed: int = 0
    stopped: bool = False
    #: True when another eviction was still in progress, so this one did nothing.
    skipped: bool = False
    #: The database or file system error that ended the run early, if any.
    error: str | None = None


# Configuration ------------------------------------------------------------


def max_size_from_table(table: Mapping[str, Any], where: str = "store") -> int | None:
    """Return ``max_size`` of a configuration table in bytes, or None when it is not set."""
    value = table.get("max_size")
    if value is None:
        return None
    return parse_size(value, f"{where}.max_size")


# Planning -----------------------------------------------------------------


def scan_store(store: Store) -> Iterator[StoreEntry]:
    """Yield every file at a layout path ``ab/cd/<digest>.<ext>``, in no particular order.

    Only folders with two-character names are entered, so ``.tmp``,
    ``.quarantine`` and the lock file in the store's root are skipped.
    """
    for first in _layout_folders(store.root):
        for second in _layout_folders(first):
            yield from _layout_entries(second)


def _layout_folders(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if len(entry.name) == 2 and not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)


def _layout_entries(folder: Path) -> Iterator[StoreEntry]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        stem, extension = split_name(entry.name)
        if not extension or not is_digest(stem):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        last_used = max(info.st_atime, info.st_mtime)
        yield StoreEntry(Path(entry.path), stem, info.st_size, last_used)


def plan_eviction(store: Store, state: State, max_size: int) -> EvictionPlan:
    """Choose the unwanted files to remove, least recently used first, until the store fits."""
    total = 0
    wanted = 0
    unwanted: list[StoreEntry] = []
    for batch in _batches(scan_store(store), LOOKUP_BATCH):
        wanted_digests = state.wanted_among(entry.digest for entry in batch)
        for entry in batch:
            total += entry.size
            if entry.digest in wanted_digests:
                wanted += entry.size
            else:
                unwanted.append(entry)

    unwanted.sort(key=lambda entry: (entry.last_used, str(entry.path)))
    removals: list[StoreEntry] = []
    freed = 0
    for entry in unwanted:
        if total - freed <= max_size:
            break
        removals.append(entry)
        freed += entry.size
    return EvictionPlan(max_size, total, wanted, tuple(removals), freed, wanted > max_size)


# Removal ------------------------------------------------------------------


def evict(
    plan: EvictionPlan, store: Store, state: State, stop: threading.Event | None = None
) -> EvictionResult:
    """Remove the planned files and their state records; return what was removed.

    Each batch is checked against the wants again just before removal, so an
    image that a manifest added since the plan was made stays.
    """
    result = EvictionResult(plan.max_size, plan.total_bytes, plan.wanted_bytes, plan.over_capacity)
    for batch in _batches(plan.removals, LOOKUP_BATCH):
        if stop is not None and stop.is_set():
            result.stopped = True
            break
        _remove_batch(batch, state, result)

    result.total_bytes = plan.total_bytes - result.bytes_freed
    _log_result(result, store)
    return result


def _remove_batch(batch: list[StoreEntry], state: State, result: EvictionResult) -> None:
    wanted_now = state.wanted_among(entry.digest for entry in batch)
    removed: list[str] = []
    for entry in batch:
        if entry.digest in wanted_now:
            result.spared += 1
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            result.spared += 1
            continue
        except OSError as error:
            log.error("store.evict_failed", digest=entry.digest, path=str(entry.path), error=str(error))
            result.failed += 1
            continue

        removed.append(entry.digest)
        result.removed += 1
        result.bytes_freed += entry.size
        log.info("image.evicted", digest=entry.digest, path=str(entry.path), bytes=entry.size)
    state.forget_present(removed)


def _log_result(result: EvictionResult, store: Store) -> None:
    if result.over_capacity:
        log.warning(
            "store.over_capacity",
            store=str(store.root),
            wanted_bytes=result.wanted_bytes,
            max_size=result.max_size,
            total_bytes=result.total_bytes,
            advice="wanted images are never evicted; raise [store] max_size or withdraw manifests",
        )
    if result.removed or result.failed:
        log.info(
            "store.evicted",
            store=str(store.root),
            files=result.removed,
            bytes=result.bytes_freed,
            total_bytes=result.total_bytes,
            max_size=result.max_size,
            spared=result.spared,
            failed=result.failed,
        )


class Evictor:
    """Runs eviction on a scheduler thread, with its own state database connection.

    Runs never overlap: a run started while another is in progress returns
    at once with ``skipped`` set.
    """

    def __init__(self, store: Store, state_folder: str | Path, max_size: int) -> None:
        self.store = store
        self.state_folder = Path(state_folder)
        self.max_size = max_size
        self._running = threading.Lock()

    def run_once(self, stop: threading.Event | None = None) -> EvictionResult:
        """Remove unwanted images until the store fits ``max_size``; return what was done."""
        if not self._running.acquire(blocking=False):
            log.info("store.eviction_skipped", reason="the previous eviction is still in progress")
            return EvictionResult(self.max_size, 0, 0, False, skipped=True)

        try:
            state = State(self.state_folder)
            try:
                plan = plan_eviction(self.store, state, self.max_size)
                return evict(plan, self.store, state, stop)
            finally:
                state.close()
        except (sqlite3.Error, OSError) as error:
            log.error("store.eviction_failed", error=str(error), store=str(self.store.root))
            return EvictionResult(self.max_size, 0, 0, False, error=str(error))
        finally:
            self._running.release()


Item = TypeVar("Item")


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
