"""The upload inbox: a watched folder whose complete images go to S3 and the store.

For each complete candidate file (see ``candidates``), the inbox uploads it
under its SHA-256, places it in the local store (unless ``after`` is
"delete"), appends a line to ``<state>/uploads.jsonl``, and then moves,
keeps or deletes the original as ``after`` sets. A file whose upload fails
stays in the inbox untouched and is tried again later (see ``failures``).

``start()`` runs a watchdog observer and one worker thread, which does all
uploads. ``scan()`` and ``process()`` do the same work on the caller's
thread, for tests and one-off runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from herbsync.digest import split_name
from herbsync.errors import ConfigError, HerbsyncError, TransferAborted
from herbsync.sources.base import ImageSource, UploadResult
from herbsync.store import Store
from herbsync.upload.candidates import (
    SettleTracker,
    is_candidate_name,
    is_candidate_path,
    iter_candidates,
)
from herbsync.upload.failures import RetrySchedule, UploadFailure, failure_kind
from herbsync.upload.hashing import FileVersion, version_of
from herbsync.upload.journal import UploadJournal, journal_record
from herbsync.upload.placement import copy_into_store, link_into_store
from herbsync.upload.report import write_report
from herbsync.upload.settings import UploadSettings


log = structlog.get_logger("herbsync.upload")

DEFAULT_RESCAN_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    """The outcome of one inbox file that was due for upload."""

    path: Path
    result: UploadResult | None = None
    #: Where the image now is in the store, or None (``after = "delete"`` or a failure).
    stored: Path | None = None
    kind: str | None = None
    error: BaseException | None = None

    @property
    def succeeded(self) -> bool:
        """Whether the file is uploaded and its ``after`` action is done."""
        return self.result is not None and self.error is None


class Inbox:
    """Uploads complete image files from a folder, then moves, keeps or deletes them as ``after`` sets."""

    def __init__(
        self,
        settings: UploadSettings,
        target: ImageSource,
        store: Store,
        state_folder: str | os.PathLike[str],
        *,
        first_retry: float = 30.0,
        max_retry: float = 3600.0,
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.inbox is None:
            msg = "upload.inbox is missing: set it to the folder to upload images from"
            raise ConfigError(msg)
        if not target.accepts_uploads:
            msg = f"upload target {target.describe()} does not accept uploads; use an s3 source with credentials"
            raise ConfigError(msg)

        self.settings = settings
        self.folder = Path(os.path.abspath(settings.inbox))
        self.target = target
        self.store = store
        self.state_folder = Path(state_folder)
        self.journal = UploadJournal(self.state_folder)
        self.retry = RetrySchedule(first_retry, max_retry)
        self.rescan_interval = rescan_interval
        self.clock = clock
        self._excluded = self._folders_to_skip(Path(state_folder))

        self._tracker = SettleTracker(settings.settle_seconds)
        self._failures: dict[Path, UploadFailure] = {}
        self._kept_versions = self._load_kept() if settings.after == "keep" else {}
        self._due: dict[Path, float] = {}
        self._counts = {"uploaded": 0, "already_present": 0, "bytes": 0}
        #: Prometheus counters to update, if metrics are on.
        self.metrics: Any = None

        # _work_lock serialises uploads. _lock guards the dicts above and is never held during I/O.
        self._work_lock = threading.Lock()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._rescan_requested = False
        self._thread: threading.Thread | None = None
        self._observer: Any = None

    def _folders_to_skip(self, state_folder: Path) -> list[Path]:
        """Check the inbox and the store are separate; return folders inside the inbox to skip."""
        store_root = Path(os.path.abspath(self.store.root))
        if self.folder == store_root or self.folder.is_relative_to(store_root) or store_root.is_relative_to(self.folder):
            msg = f"upload.inbox = {str(self.folder)!r} is invalid: it overlaps the store {store_root}; use a separate folder"
            raise ConfigError(msg)
        return [Path(os.path.abspath(state_folder))]

    def _load_kept(self) -> dict[str, tuple[int, int]]:
        """Return the files that ``after = "keep"`` left in the inbox, by name, with size and mtime."""
        versions: dict[str, tuple[int, int]] = {}
        for record in self.journal.records():
            name = record.get("original_name")
            size = record.get("bytes")
            mtime_ns = record.get("original_mtime_ns")
            if isinstance(name, str) and isinstance(size, int) and isinstance(mtime_ns, int):
                versions[name] = (size, mtime_ns)
        return versions

    # One file ----------------------------------------------------------

    def process(self, path: str | os.PathLike[str]) -> UploadOutcome | None:
        """Upload one file if it is a complete candidate and due; return None if nothing was tried."""
        absolute = Path(os.path.abspath(path))
        with self._work_lock:
            outcome = self._process(absolute)
        if outcome is not None:
            self.write_report()
        return outcome

    def _process(self, path: Path) -> UploadOutcome | None:
        if self._stopping.is_set():
            return None
        now = self.clock()
        if not is_candidate_path(self.folder, path, self.settings.extensions):
            self._forget(path)
            return None
        try:
            version = version_of(path)
        except FileNotFoundError:
            self._forget(path)
            return None

        if self._is_kept(path, version):
            return None

        # A file that failed waits for its retry time, unless it changed since.
        with self._lock:
            failure = self._failures.get(path)
        if failure is not None and failure.version == version and failure.next_attempt_at > now:
            self._schedule(path, failure.next_attempt_at)
            return None

        with self._lock:
            wait = self._tracker.observe(path, version, now)
        if wait > 0:
            self._schedule(path, now + wait)
            return None
        return self._upload(path, version)

    def _upload(self, path: Path, version: FileVersion) -> UploadOutcome | None:
        try:
            result = self.target.upload(path, self.settings.transfer, progress=self._raise_if_stopping)
            stored = self._place(path, result)
            self._write_journal(path, version, result)
        except TransferAborted:
            log.info("upload.interrupted", path=str(path), reason="herbsync is stopping; the file is uploaded after restart")
            return None
        except (HerbsyncError, OSError) as error:
            return self._record_failure(path, version, error)

        outcome = UploadOutcome(path, result, stored)
        self._record_success(outcome, version)
        return self._remove_original(outcome, version)

    def _raise_if_stopping(self, count: int) -> None:
        """Progress callback that ends the upload, via the HTTP client's body read, when stopping runs out of time."""
        if self._aborting.is_set() or self.store.aborting.is_set():
            raise TransferAborted("upload stopped because herbsync is stopping")

    def _place(self, path: Path, result: UploadResult) -> Path | None:
        _, extension = split_name(result.key)
        extension = extension or "jpg"
        if self.settings.after == "delete":
            return None
        if self.settings.after == "move":
            return link_into_store(self.store, path, result.digest, extension)
        return copy_into_store(self.store, path, result.digest, extension)

    def _write_journal(self, path: Path, version: FileVersion, result: UploadResult) -> None:
        record = journal_record(result, self._relative(path), version.mtime_ns, time.time())
        self.journal.append(record)

    def _remove_original(self, outcome: UploadOutcome, version: FileVersion) -> UploadOutcome:
        path = outcome.path
        if self.settings.after == "keep":
            with self._lock:
                self._kept_versions[self._relative(path)] = (version.size, version.mtime_ns)
            return outcome

        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            reason = f"uploaded, but cannot remove {path} from the inbox: {error.strerror}"
            failed = self._record_failure(path, version, error, "remove_failed", reason)
            return UploadOutcome(path, outcome.result, outcome.stored, failed.kind, error)
        return outcome

    def _is_kept(self, path: Path, version: FileVersion) -> bool:
        with self._lock:
            return self._kept_versions.get(self._relative(path)) == (version.size, version.mtime_ns)

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    # Outcomes ----------------------------------------------------------

    def _record_success(self, outcome: UploadOutcome, version: FileVersion) -> None:
        result = outcome.result
        assert result is not None
        with self._lock:
            self._failures.pop(outcome.path, None)
            self._counts["uploaded"] += 1
            self._counts["already_present"] += 0 if result.created else 1
            self._counts["bytes"] += result.size if result.created else 0
            self._tracker.forget(outcome.path)
        if self.metrics is not None and result.created:
            self.metrics.uploaded_objects.inc()
            self.metrics.uploaded_bytes.inc(result.size)

        log.info(
            "image.uploaded",
            digest=result.digest,
            key=result.key,
            bytes=result.size,
            seconds=round(result.seconds, 4),
            path=str(outcome.path),
            new_object=result.created,
            multipart=result.multipart,
            stored=None if outcome.stored is None else str(outcome.stored),
        )

    def _record_failure(
        self,
        path: Path,
        version: FileVersion,
        error: BaseException,
        kind: str | None = None,
        reason: str | None = None,
    ) -> UploadOutcome:
        kind = kind or failure_kind(error)
        reason = reason or _reason_of(path, error)
        now = self.clock()

        with self._lock:
            previous = self._failures.get(path)
            attempts = previous.attempts + 1 if previous is not None else 1
            first_failed_at = previous.first_failed_at if previous is not None else now
            delay = self.retry.delay(attempts, kind)
            failure = UploadFailure(path, kind, reason, attempts, first_failed_at, now + delay, version)
            self._failures[path] = failure
        self._schedule(path, failure.next_attempt_at)

        # Report a new kind of failure loudly; repeats of the same kind quietly, with their count.
        repeated = previous is not None and previous.kind == kind
        emit = log.warning
        if repeated:
            emit = log.info
        elif kind == "access_denied":
            emit = log.error
        emit("upload.failed", path=str(path), kind=kind, reason=reason, attempts=attempts, retry_in=round(delay, 1))
        return UploadOutcome(path, kind=kind, error=error)

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._failures.pop(path, None)
            self._due.pop(path, None)
            self._tracker.forget(path)

    # The whole folder --------------------------------------------------

    def scan(self) -> list[UploadOutcome]:
        """Check every candidate file once; upload those complete and due; return what was tried."""
        outcomes = []
        present: set[Path] = set()
        for path in iter_candidates(self.folder, self.settings.extensions, self._excluded):
            if self._stopping.is_set():
                return outcomes
            absolute = Path(os.path.abspath(path))
            present.add(absolute)
            outcome = self.process(absolute)
            if outcome is not None:
                outcomes.append(outcome)

        self._drop_missing(present)
        return outcomes

    def _drop_missing(self, present: set[Path]) -> None:
        """Forget the failures and observations of files that are no longer in the inbox."""
        with self._lock:
            known = set(self._failures) | set(self._tracker.paths())
        missing = [path for path in known if path not in present and not path.exists()]
        for path in missing:
            self._forget(path)

    def retry_now(self) -> None:
        """Make every failed file due now, for example after credentials were fixed."""
        now = self.clock()
        with self._lock:
            for failure in self._failures.values():
                failure.next_attempt_at = now
                self._due[failure.path] = now
        self._wakeup.set()

    # Events and the worker thread ---------------------------------------

    def notify(self, path: str | os.PathLike[str]) -> None:
        """Schedule a check of a file that was closed after writing or moved into the inbox."""
        candidate = Path(os.path.abspath(path))
        if is_candidate_name(candidate.name, self.settings.extensions):
            self._schedule(candidate, self.clock())

    def request_rescan(self) -> None:
        """Ask the worker to scan the whole inbox soon, as after a folder was moved in."""
        with self._lock:
            self._rescan_requested = True
        self._wakeup.set()

    def _schedule(self, path: Path, when: float) -> None:
        with self._lock:
            current = self._due.get(path)
            self._due[path] = when if current is None else min(current, when)
        self._wakeup.set()

    def _take_due(self, now: float) -> list[Path]:
        with self._lock:
            due = sorted(path for path, when in self._due.items() if when <= now)
            for path in due:
                del self._due[path]
        return due

    def _seconds_until_next(self, next_rescan: float) -> float:
        with self._lock:
            earliest = min([next_rescan, *self._due.values()])
        return min(self.rescan_interval, max(0.01, earliest - self.clock()))

    def start(self) -> None:
        """Create the inbox folder, start watching it and start the upload worker."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._aborting.clear()

        observer = Observer()
        observer.schedule(InboxEvents(self), str(self.folder), recursive=True)
        observer.start()
        self._observer = observer

        self._thread = threading.Thread(target=self._run, name="inbox-upload", daemon=True)
        self._thread.start()
        log.info(
            "inbox.started",
            inbox=str(self.folder),
            target=self.target.describe(),
            after=self.settings.after,
            settle_seconds=self.settings.settle_seconds,
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop taking new files, wait for the upload in progress, and end the worker.

        With ``grace``, an upload still running after that many seconds is
        interrupted. Without it, the upload runs to its end unless
        ``store.aborting`` is set first. An interrupted file stays in the
        inbox, and an interrupted multipart upload is aborted on the server.
        """
        self._stopping.set()
        self._wakeup.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None

        if self._thread is not None:
            self._thread.join(grace)
            if self._thread.is_alive():
                self._aborting.set()
                self._thread.join()
            self._thread = None

        self.write_report()
        with self._lock:
            counts = dict(self._counts)
            failed = len(self._failures)
        log.info("inbox.stopped", inbox=str(self.folder), failed=failed, **counts)

    def _run(self) -> None:
        next_rescan = self.clock()
        while not self._stopping.is_set():
            # Cleared before the work, so a notification during the work is not lost.
            self._wakeup.clear()
            if self._rescan_due(next_rescan):
                self._guarded(self.scan)
                next_rescan = self.clock() + self.rescan_interval

            for path in self._take_due(self.clock()):
                if self._stopping.is_set():
                    break
                self._guarded(lambda path=path: self.process(path))

            self._wakeup.wait(self._seconds_until_next(next_rescan))

    def _rescan_due(self, next_rescan: float) -> bool:
        with self._lock:
            requested, self._rescan_requested = self._rescan_requested, False
        return requested or self.clock() >= next_rescan

    def _guarded(self, work: Callable[[], object]) -> None:
        """Run ``work``, logging any unexpected error so the worker thread keeps going."""
        try:
            work()
        except Exception as error:  # the worker must outlive any one bug
            log.exception("inbox.error", error=str(error))

    # Status ------------------------------------------------------------

    def write_report(self) -> None:
        """Write ``status()`` to ``<state>/uploads-status.json``; log a failure to write it."""
        try:
            write_report(self.state_folder, self.status())
        except OSError as error:
            log.warning("inbox.report_failed", folder=str(self.state_folder), error=str(error))

    def status(self) -> dict[str, Any]:
        """Return counts and the failures with their reasons and next attempt times."""
        now = self.clock()
        with self._lock:
            failures = [failure.as_dict(self.folder, now) for failure in self._failures.values()]
            counts = dict(self._counts)
            waiting = self._tracker.waiting(now)
        failures.sort(key=lambda failure: failure["path"])
        return {
            "inbox": str(self.folder),
            "target": self.target.describe(),
            "after": self.settings.after,
            **counts,
            "waiting": waiting,
            "failed": len(failures),
            "failures": failures,
        }


class InboxEvents(FileSystemEventHandler):
    """Turns file events in the inbox into checks; the worker does the rest."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self.inbox.notify(os.fsdecode(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            self.inbox.notify(os.fsdecode(event.dest_path))
        elif isinstance(event, DirMovedEvent):
            self.inbox.request_rescan()

    def on_created(self, event: FileSystemEvent) -> None:
        # A file or folder moved in from outside the inbox arrives as "created".
        if isinstance(event, FileCreatedEvent):
            self.inbox.notify(os.fsdecode(event.src_path))
        elif isinstance(event, DirCreatedEvent):
            self.inbox.request_rescan()


def _reason_of(path: Path, error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, HerbsyncError):
        return f"cannot read {path}: {error.strerror or error}"
    return str(error)
