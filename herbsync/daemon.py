"""The daemon: wires the drop folder, the transfer engine and the schedule together.

All state writes happen on the thread that calls ``Daemon.run``. The watchdog
observer and the APScheduler jobs only put requests on a queue; a periodic
full rescan catches any file event that was lost.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import (
    DirDeletedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from herbsync.config import Settings, load_settings
from herbsync.drop_folder import DropFolder, is_manifest_name
from herbsync.durability import WriteBack, recover
from herbsync.errors import ConfigError, HerbsyncError
from herbsync.evict import EvictionResult, Evictor
from herbsync.lock import StoreLock
from herbsync.metrics import Metrics
from herbsync.mirror import Mirror, RetryPolicy
from herbsync.notify import Notifier
from herbsync.scrub import Scrubber
from herbsync.sources.factory import build_source
from herbsync.state import State
from herbsync.status import remove_stale_reports, write_status, write_store_report
from herbsync.store import Store
from herbsync.upload import Inbox


log = structlog.get_logger("herbsync.daemon")


@dataclass(frozen=True, slots=True)
class Request:
    """Work for the daemon's main thread: ``read``/``withdraw`` a name, ``rescan`` or ``wake``."""

    kind: str
    name: str = ""


# Seconds a file that appeared without a close event (moved in from another
# folder) must stay unchanged before it is read.
CREATED_SETTLE_SECONDS = 1.0

# Seconds between passes when no event wakes the daemon.
RETRY_CHECK_SECONDS = 60.0

# Failure kinds that a start or SIGHUP leaves to their retry schedule. Every
# other failed image is tried again at once.
RETRY_ON_SCHEDULE_KINDS = frozenset({"not_found"})


class ManifestEvents(FileSystemEventHandler):
    """Turns file events in the manifest folder into requests.

    A manifest counts once it is closed after writing or renamed into the
    folder; writes still in progress are not read. A file moved in from
    another folder arrives as a created event with no close event, so it is
    read once its size and mtime stay unchanged for ``CREATED_SETTLE_SECONDS``
    and no close event came for it in that time.
    """

    def __init__(self, folder: Path, requests: queue.SimpleQueue[Request]) -> None:
        self.folder = folder
        self.requests = requests
        self._created: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def on_created(self, event: FileSystemEvent) -> None:
        if not isinstance(event, FileCreatedEvent):
            return
        name = self._in_folder(event.src_path)
        signature = _signature(self.folder / name) if name else None
        if name is None or signature is None:
            return
        with self._lock:
            self._created[name] = signature
        timer = threading.Timer(CREATED_SETTLE_SECONDS, self._read_if_settled, args=[name])
        timer.daemon = True
        timer.start()

    def _read_if_settled(self, name: str) -> None:
        with self._lock:
            signature = self._created.pop(name, None)
        if signature is not None and signature == _signature(self.folder / name):
            self.requests.put(Request("read", name))

    def _in_folder(self, path: str | bytes) -> str | None:
        candidate = Path(os.fsdecode(path))
        if candidate.parent != self.folder or not is_manifest_name(candidate.name):
            return None
        return candidate.name

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self._read(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            self._withdraw(event.src_path)
            self._read(event.dest_path)

    def on_deleted(self, event: FileSystemEvent) -> None:
        if isinstance(event, (FileDeletedEvent, DirDeletedEvent)):
            self._withdraw(event.src_path)

    def _read(self, path: str | bytes) -> None:
        name = self._in_folder(path)
        if name is not None:
            with self._lock:
                self._created.pop(name, None)
            self.requests.put(Request("read", name))

    def _withdraw(self, path: str | bytes) -> None:
        name = self._in_folder(path)
        if name is not None:
            self.requests.put(Request("withdraw", name))


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        attempts=settings.attempts,
        backoff=settings.backoff,
        first_retry=settings.first_retry,
        max_retry=settings.max_retry,
    )


# Settings that a reload cannot change: they name what this process has open.
_RESTART_ONLY = (
    "store_path",
    "manifests_path",
    "state_path",
    "metrics_address",
    "upload",
    "max_size",
    "evict_interval",
    "scrub",
)


def _folder_error(what: str, folder: Path, error: Exception) -> HerbsyncError:
    """Return the start-up error for a folder the daemon cannot write, naming it and why."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    if _is_read_only(folder):
        reason = "it is on a read-only file system"
    return HerbsyncError(f"cannot open the {what} {folder}: {reason}; make it writable and start again")


def _is_read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _build_inbox(settings: Settings, store: Store) -> Inbox | None:
    """Return the upload inbox of the [upload] section, or None when it names no inbox."""
    upload = settings.upload
    if upload is None or upload.inbox is None:
        return None
    return Inbox(
        upload,
        upload.build_target(),
        store,
        settings.state_path,
        first_retry=settings.first_retry,
        max_retry=settings.max_retry,
    )


class Daemon:
    """The long-running mirror process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = StoreLock(settings.store_path)
        try:
            self.lock.acquire()
        except OSError as error:
            raise _folder_error("store", settings.store_path, error) from error
        self.store = Store(settings.store_path)
        self.source = build_source(settings.source)
        try:
            self.state = State(settings.state_path)
        except (OSError, sqlite3.Error) as error:
            raise _folder_error("state folder", settings.state_path, error) from error
        self.folder = DropFolder(settings.manifests_path, self.state)
        self.write_back = WriteBack(self.store)
        self.mirror = self._build_mirror(settings)
        self.metrics = Metrics()
        self.mirror.metrics = self.metrics
        self.notifier = Notifier()
        # SimpleQueue.put is reentrant, so signal handlers may call it.
        self.requests: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self._changed: set[str] = set()
        self._observer: Observer | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._reload_requested = False
        self.inbox = _build_inbox(settings, self.store)
        self.scrubber = Scrubber(
            self.store,
            settings.state_path,
            settings.scrub.pace,
            on_corrupt=self._on_corrupt,
            workers=settings.scrub.workers,
        )
        self.evictor = (
            Evictor(self.store, settings.state_path, settings.max_size) if settings.max_size is not None else None
        )
        self.last_eviction: EvictionResult | None = None

    def _report_recovery(self, scanned: int, hashed: int) -> None:
        """Keep systemd's start timeout away while ``recover`` walks a large store."""
        status = f"checking the store after an unclean stop: {scanned} files scanned, {hashed} hashed"
        self.notifier.extend_start(status)

    def _build_mirror(self, settings: Settings) -> Mirror:
        mirror = Mirror(self.store, self.source, self.state, settings.workers, _retry_policy(settings))
        mirror.grace = settings.shutdown_grace
        mirror.write_back = self.write_back
        return mirror

    # Start and stop -----------------------------------------------------

    def start(self) -> None:
        """Prepare folders, clean up after a crash, and start watching."""
        self.settings.manifests_path.mkdir(parents=True, exist_ok=True)
        # First, so that a source that cannot be built (partial credentials,
        # say) stops the start before the write-back leaves its marker.
        self.source.prepare(self.settings.workers)
        # Before READY, so no reader sees a file that a crash left unsynced.
        recover(self.store, progress=self._report_recovery)
        self.write_back.start()
        removed = self.store.clean_temporary()
        if removed:
            log.info("store.cleaned", temporary_files=removed)
        self._retry_failures_now("start")
        self._observer = Observer()
        handler = ManifestEvents(self.settings.manifests_path, self.requests)
        self._observer.schedule(handler, str(self.settings.manifests_path), recursive=False)
        self._observer.start()

        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(
            self.requests.put,
            "interval",
            args=[Request("rescan")],
            seconds=self.settings.rescan_interval,
            id="rescan",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=30,
        )
        # A pass every minute picks up work that no event announces: images
        # that `herbsync verify` quarantined, retries that came due.
        self._scheduler.add_job(
            self.requests.put,
            "interval",
            args=[Request("wake")],
            seconds=RETRY_CHECK_SECONDS,
            id="retry",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(RETRY_CHECK_SECONDS),
        )
        # The audit stats every verified file, which takes a while on a store
        # of millions, so it runs after READY on a connection of its own.
        self._scheduler.add_job(self._audit_in_background, id="audit", max_instances=1)
        self._add_upkeep_jobs(self._scheduler)
        self._scheduler.start()
        if self.settings.metrics_address:
            self.metrics.serve(self.settings.metrics_address)

        if self.inbox is not None:
            self.inbox.metrics = self.metrics
            self.inbox.start()

        self.handle_requests_now([Request("rescan")])
        self.notifier.ready(self.summary())
        log.info(
            "daemon.started",
            store=str(self.settings.store_path),
            manifests=str(self.settings.manifests_path),
            state=str(self.settings.state_path),
            source=self.source.describe(),
            workers=self.settings.workers,
            metrics=self.settings.metrics_address,
            pid=os.getpid(),
        )

    def _add_upkeep_jobs(self, scheduler: BackgroundScheduler) -> None:
        """Schedule the scrub and, with a size cap, eviction; neither overlaps itself."""
        scrub = self.settings.scrub
        if scrub.enabled:
            scheduler.add_job(
                self._scrub,
                "interval",
                seconds=scrub.interval,
                id="scrub",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=int(scrub.interval),
            )
        if self.evictor is not None:
            scheduler.add_job(
                self._evict,
                "interval",
                seconds=self.settings.evict_interval,
                id="evict",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=int(self.settings.evict_interval),
                next_run_time=datetime.now(),
            )

    def _scrub(self) -> None:
        result = self.scrubber.run_for(self.settings.scrub.interval, self.stopping)
        self.metrics.scrubbed_files.inc(result.files)
        self.metrics.scrubbed_bytes.inc(result.bytes)

    def _on_corrupt(self, digest: str) -> None:
        self.metrics.corrupt_files.inc()
        self.requests.put(Request("wake"))

    def _evict(self) -> None:
        assert self.evictor is not None
        result = self.evictor.run_once(self.stopping)
        self.last_eviction = result
        if not result.skipped:
            write_store_report(self.settings.state_path, dataclasses.asdict(result))

    def stop(self) -> None:
        """Stop taking new work; running transfers get the grace period.

        Safe to call from a signal handler: it only sets events and puts on a
        ``SimpleQueue``.
        """
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.mirror.stopping.set()
        self.requests.put(Request("wake"))

    def _shut_down(self) -> None:
        log.info("daemon.stopping", grace_seconds=self.settings.shutdown_grace)
        self.notifier.stopping()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        if self.inbox is not None:
            # A long upload is interrupted by store.aborting after the grace period.
            self.inbox.stop(grace=self.settings.shutdown_grace)
        self.mirror.close()
        self.write_back.close()
        self.write_reports()
        removed = self.store.clean_temporary()
        self.state.close()
        self.lock.release()
        log.info("daemon.stopped", temporary_files_removed=removed)

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT; reload the configuration on SIGHUP."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.stop()

        def on_hangup(signum: int, frame: FrameType | None) -> None:
            self.requests.put(Request("reload"))

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hangup)

    def reload(self) -> None:
        """Re-read the configuration file; keep the running one if the new one is invalid."""
        self.notifier.reloading()
        path = self.settings.config_path
        try:
            if path is None:
                raise ConfigError("the daemon was started without a configuration file")
            settings = load_settings(path)
            self._apply(settings)
            self._retry_failures_now("reload")
            if self.inbox is not None:
                self.inbox.retry_now()
        except ConfigError as error:
            log.error("config.reload_failed", error=str(error), action="fix the file and send SIGHUP again")
        self.handle_requests_now([Request("rescan")])
        self.notifier.ready(self.summary())

    def _retry_failures_now(self, cause: str) -> None:
        """Make failed images due at once, because a restart or reload usually follows a fix.

        Images that no source had wait for their schedule: they stay
        missing until someone uploads them, and retrying every one of them
        on each reload would only load the server.
        """
        retried = self.state.retry_now(time.time(), except_kinds=RETRY_ON_SCHEDULE_KINDS)
        if retried:
            self._changed.update(self.state.manifest_names())
            log.info("failures.retrying_now", images=retried, cause=cause)

    def _apply(self, settings: Settings) -> None:
        ignored = [name for name in _RESTART_ONLY if getattr(settings, name) != getattr(self.settings, name)]
        if ignored:
            log.warning("config.restart_needed", settings=ignored)
        source = build_source(settings.source)
        source.prepare(settings.workers)
        self.mirror.close()
        self.source = source
        self.mirror = self._build_mirror(settings)
        self.mirror.metrics = self.metrics
        self.settings = settings
        log.info("config.reloaded", path=str(settings.config_path), source=source.describe(), workers=settings.workers)

    # Work ---------------------------------------------------------------

    def _audit_in_background(self) -> None:
        state = State(self.settings.state_path)
        try:
            stale = self.audit_present(state)
        finally:
            state.close()
        if stale:
            self.requests.put(Request("rescan"))

    def audit_present(self, state: State) -> int:
        """Forget verified images whose file is gone or changed since verification.

        Returns how many were forgotten; the next pass fetches those still wanted.
        """
        stale = []
        for record in state.iter_present():
            if self.stopping.is_set():
                break
            path = self.store.path_for(record.digest, record.extension)
            try:
                info = path.stat()
            except FileNotFoundError:
                stale.append(record.digest)
                continue
            if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
                stale.append(record.digest)
        if stale:
            state.forget_present(stale)
        log.info("store.audited", stale=len(stale))
        return len(stale)

    def handle_requests_now(self, requests: list[Request]) -> None:
        """Handle the given requests at once, on the calling thread."""
        for request in requests:
            self._handle(request)

    def handle_requests(self, timeout: float | None = None) -> bool:
        """Handle every queued request, waiting up to ``timeout`` for the first."""
        self.notifier.ping_watchdog()
        handled = False
        if self.stopping.is_set():
            # The wake-up request that stop() queued may already be consumed
            # by a pass, so never block once stopping.
            timeout = None
        try:
            request = self.requests.get(timeout=timeout) if timeout else self.requests.get_nowait()
        except queue.Empty:
            return False
        while True:
            handled = self._handle(request) or handled
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return handled

    def _handle(self, request: Request) -> bool:
        if request.kind == "read":
            self.folder.read(request.name)
            # A manifest dropped again unchanged still gets a fresh report,
            # so the person or pipeline that dropped it sees that it was read.
            self._changed.add(request.name)
            return True
        if request.kind == "withdraw":
            if (self.settings.manifests_path / request.name).exists():
                return self._handle(Request("read", request.name))
            self.folder.withdraw(request.name)
            self._changed.add(request.name)
            return True
        if request.kind == "reload":
            self._reload_requested = True
            return True
        if request.kind == "rescan":
            results = self.folder.reconcile()
            self._changed.update(result.name for result in results if result.changed)
            self._changed.update(self.state.manifest_names())
            remove_stale_reports(self.state)
            return True
        return request.kind == "wake"

    def write_reports(self) -> None:
        """Rewrite the status report of every manifest touched since the last call."""
        if not self._changed:
            return
        for name in sorted(self._changed):
            write_status(self.state, name)
        self._changed.clear()
        totals = self.state.totals()
        self.metrics.set_totals(totals)
        self.notifier.status(self.summary(totals))

    def summary(self, totals: dict[str, int] | None = None) -> str:
        """Return the one-line status for systemd: wanted, present, pending, failed."""
        totals = totals or self.state.totals()
        return (
            f"{totals['wanted']} wanted, {totals['present']} present, "
            f"{totals['pending']} pending, {totals['failed']} failed"
        )

    def run_pass(self) -> None:
        """Fetch everything due now, reading new manifests between batches."""
        result = self.mirror.run_pass(between_batches=lambda: self.handle_requests())
        if result.fetched or result.failed or result.adopted:
            self._changed.update(self.state.manifest_names())
            log.info(
                "pass.completed",
                fetched=result.fetched,
                adopted=result.adopted,
                failed=result.failed,
                bytes=result.bytes,
                seconds=round(result.seconds, 3),
                totals=self.state.totals(),
            )

    def _seconds_until_next_retry(self) -> float:
        next_attempt = self.state.next_attempt_at()
        if next_attempt is None:
            return 3600.0
        return max(0.05, next_attempt - time.time())

    def _wait_timeout(self) -> float:
        timeout = self._seconds_until_next_retry()
        if self.notifier.watchdog_interval is not None:
            timeout = min(timeout, self.notifier.watchdog_interval)
        return timeout

    def run(self) -> None:
        """Serve until ``stop`` is called."""
        self.start()
        try:
            while not self.stopping.is_set():
                self.handle_requests()
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()
                self.run_pass()
                self.write_reports()
                self.handle_requests(timeout=self._wait_timeout())
        finally:
            self._shut_down()
