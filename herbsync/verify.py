"""Checking stored files against their names, for ``herbsync verify`` and the scrub.

``check_file`` hashes one file. ``check_many`` hashes many on a small thread
pool; hashlib releases the GIL while it hashes a large buffer, so the threads
use several cores. ``verify_files`` checks a list of stored files now, moves
the corrupt ones to the quarantine folder and records the outcome in the state
database.
"""

from __future__ import annotations

import enum
import hashlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from tqdm import tqdm

from herbsync.digest import split_name
from herbsync.state import PresentRecord, State
from herbsync.store import Store, StoredFile


log = structlog.get_logger("herbsync.verify")

# 1 MiB reads keep hashlib at its full rate; each worker thread owns one buffer.
READ_SIZE = 1024 * 1024

# Two hashing threads use both cores of a small host. More threads only help
# when the disk, not the CPU, is the limit.
DEFAULT_WORKERS = 2

# State updates are written in batches of this many files.
RECORD_BATCH = 500

# Linux only: reading without updating the access time keeps eviction's
# least recently used order about real use, not about verification.
_NOATIME = getattr(os, "O_NOATIME", 0)


class Status(enum.Enum):
    """The outcome of hashing one stored file."""

    GOOD = "good"
    CORRUPT = "corrupt"
    MISSING = "missing"
    UNREADABLE = "unreadable"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Check:
    """One stored file after hashing, with the size and mtime it had."""

    target: StoredFile
    status: Status
    actual: str | None = None
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Corruption:
    """A stored file whose bytes did not hash to its name."""

    digest: str
    actual: str
    path: Path
    quarantine: Path | None


@dataclass
class VerifyReport:
    """Counts and findings of one ``verify_files`` call."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    good: int = 0
    corrupt: list[Corruption] = field(default_factory=list)
    #: Digests that were named but are not in the store, or whose file vanished.
    missing: list[str] = field(default_factory=list)
    #: Digests whose state record was dropped because the store has no file for it.
    forgotten: list[str] = field(default_factory=list)
    #: ``(path, error)`` of files that could not be read.
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """Whether every named or listed file was found and hashed to its name."""
        return not self.corrupt and not self.unreadable and not self.missing


# One file ---------------------------------------------------------------


def _open_for_hashing(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | _NOATIME)
    except PermissionError:
        if not _NOATIME:
            raise
    # O_NOATIME is allowed only to the file's owner; others read normally.
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def check_file(target: StoredFile, stop: threading.Event | None = None) -> Check:
    """Hash ``target.path`` and compare it with ``target.digest``; never raises for I/O errors.

    Returns ``STOPPED`` without a verdict once ``stop`` is set, checking
    between reads, so a large file does not hold up a shutdown.
    """
    try:
        descriptor = _open_for_hashing(target.path)
    except FileNotFoundError:
        return Check(target, Status.MISSING)
    except OSError as error:
        return Check(target, Status.UNREADABLE, error=error.strerror or str(error))

    try:
        with open(descriptor, "rb", buffering=0) as stream:
            info = os.fstat(descriptor)
            hashed = _hash_stream(stream, stop)
    except OSError as error:
        return Check(target, Status.UNREADABLE, error=error.strerror or str(error))
    if hashed is None:
        return Check(target, Status.STOPPED)

    actual, size = hashed
    status = Status.GOOD if actual == target.digest else Status.CORRUPT
    return Check(target, status, actual, size, info.st_mtime_ns)


def _hash_stream(stream: io.FileIO, stop: threading.Event | None) -> tuple[str, int] | None:
    """Return the SHA-256 and length of a raw binary stream, or None if ``stop`` was set."""
    hasher = hashlib.sha256()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    size = 0
    while True:
        if stop is not None and stop.is_set():
            return None
        count = stream.readinto(buffer)
        if not count:
            return hasher.hexdigest(), size
        hasher.update(view[:count])
        size += count


def check_many(
    targets: Iterable[StoredFile], workers: int, stop: threading.Event
) -> Iterator[Check]:
    """Hash ``targets`` on ``workers`` threads; yield each check as it completes.

    ``targets`` is consumed lazily in the caller's thread, at most two files
    per worker ahead of the hashing, so a generator may pace or budget them.
    Nothing new is started once ``stop`` is set.
    """
    in_flight: set[Future[Check]] = set()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash")
    try:
        for target in targets:
            if stop.is_set():
                break
            if len(in_flight) >= workers * 2:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            in_flight.add(pool.submit(check_file, target, stop))

        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# Outcomes ---------------------------------------------------------------


def quarantine_corrupt(store: Store, state: State | None, check: Check) -> Corruption:
    """Move a corrupt file to the quarantine folder, log it and forget its record.

    Without its record the daemon fetches the image again if a manifest still
    wants it. A file that cannot be moved is logged and left in place.
    """
    target = check.target
    actual = check.actual or ""
    try:
        moved: Path | None = store.quarantine(target.path)
    except FileNotFoundError:
        moved = None
    except OSError as error:
        log.error("store.quarantine_failed", digest=target.digest, path=str(target.path), error=str(error))
        moved = None

    log.error(
        "store.corrupt",
        digest=target.digest,
        actual=actual,
        path=str(target.path),
        quarantine=str(moved) if moved else None,
    )
    if state is not None:
        state.forget_present([target.digest])
    return Corruption(target.digest, actual, target.path, moved)


def record_of(check: Check, verified_at: float) -> PresentRecord:
    """Return the state record of a file that hashed to its name."""
    target = check.target
    return PresentRecord(target.digest, target.extension, check.size, check.mtime_ns, verified_at)


# herbsync verify ----------------------------------------------------------


def files_named(store: Store, digests: Iterable[str]) -> tuple[list[StoredFile], list[str]]:
    """Return the stored files of ``digests`` and the digests that have no file."""
    found: list[StoredFile] = []
    missing: list[str] = []
    for digest in digests:
        path = store.find(digest)
        if path is None:
            missing.append(digest)
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            missing.append(digest)
            continue
        _, extension = split_name(path.name)
        found.append(StoredFile(path, digest, extension or "jpg", size))
    return found, missing


def forget_vanished(store: Store, state: State) -> list[str]:
    """Forget records whose file is no longer in the store; return their digests."""
    vanished = [
        record.digest
        for record in state.iter_present()
        if not store.path_for(record.digest, record.extension).is_file()
    ]
    if vanished:
        state.forget_present(vanished)
    return vanished


def verify_files(
    store: Store,
    state: State | None,
    files: list[StoredFile],
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
) -> VerifyReport:
    """Hash ``files`` now; quarantine the corrupt ones and record the good ones.

    With a ``state``, good files get a fresh verification record and corrupt
    or vanished files lose theirs. The progress bar on stderr shows files,
    bytes and the rate; it is hidden when stderr is not a terminal.
    """
    report = VerifyReport()
    stop = stop or threading.Event()
    started = time.monotonic()
    good: list[PresentRecord] = []
    bar = _progress_bar(files, progress)
    checks = check_many(files, workers, stop)

    try:
        for check in checks:
            _count_check(check, report, store, state, good, clock)
            bar.update(check.size or check.target.size)
            bar.set_postfix_str(f"{report.files}/{len(files)} files", refresh=False)
            if state is not None and len(good) >= RECORD_BATCH:
                state.mark_present_many(good)
                good.clear()
    except KeyboardInterrupt:
        stop.set()
        report.stopped = True
    finally:
        checks.close()
        bar.close()
        if state is not None and good:
            state.mark_present_many(good)

    report.seconds = time.monotonic() - started
    return report


def _progress_bar(files: list[StoredFile], progress: bool) -> tqdm:
    return tqdm(
        total=sum(stored.size for stored in files),
        unit="B",
        unit_scale=True,
        desc="verify",
        file=sys.stderr,
        # None hides the bar when stderr is not a terminal.
        disable=not progress or None,
    )


def _count_check(
    check: Check,
    report: VerifyReport,
    store: Store,
    state: State | None,
    good: list[PresentRecord],
    clock: Callable[[], float],
) -> None:
    if check.status is Status.STOPPED:
        report.stopped = True
        return
    if check.status is Status.MISSING:
        report.missing.append(check.target.digest)
        if state is not None:
            state.forget_present([check.target.digest])
        return
    if check.status is Status.UNREADABLE:
        log.error("store.unreadable", digest=check.target.digest, path=str(check.target.path), error=check.error)
        report.unreadable.append((check.target.path, check.error or "unknown error"))
        return

    report.files += 1
    report.bytes += check.size
    if check.status is Status.GOOD:
        report.good += 1
        good.append(record_of(check, clock()))
    else:
        report.corrupt.append(quarantine_corrupt(store, state, check))


def verify_store(
    store: Store,
    state: State | None,
    digests: list[str] | None,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
    clock: Callable[[], float] = time.time,
) -> VerifyReport:
    """Verify the images ``digests``, or every file at a layout path when it is None.

    A full check also drops the state records of images whose file is gone,
    so the daemon fetches them again if they are still wanted.
    """
    forgotten: list[str] = []
    if digests is None:
        files = list(store.iter_files())
        missing: list[str] = []
        if state is not None:
            forgotten = forget_vanished(store, state)
    else:
        files, missing = files_named(store, digests)
        if state is not None and missing:
            state.forget_present(missing)

    report = verify_files(store, state, files, workers, progress, clock)
    report.missing = missing + report.missing
    report.forgotten = forgotten
    return report
