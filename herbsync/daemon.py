"""The daemon: wires the drop folder, the transfer engine and the schedule together.

All state writes happen on the thread that calls ``Daemon.run``. The watchdog
observer and the APScheduler jobs only put requests on a queue; a periodic
full rescan catches any file event that was lost.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import (
    DirDeletedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from herbsync.config import Settings
from herbsync.drop_folder import DropFolder, is_manifest_name
from herbsync.mirror import Mirror, RetryPolicy
from herbsync.sources.factory import build_source
from herbsync.state import State
from herbsync.status import remove_stale_reports, write_status
from herbsync.store import Store


log = structlog.get_logger("herbsync.daemon")


@dataclass(frozen=True, slots=True)
class Request:
    """Work for the daemon's main thread: ``read``/``withdraw`` a name, ``rescan`` or ``wake``."""

    kind: str
    name: str = ""


class ManifestEvents(FileSystemEventHandler):
    """Turns file events in the manifest folder into requests.

    A manifest counts once it is closed after writing or renamed into the
    folder; writes still in progress are not read.
    """

    def __init__(self, folder: Path, requests: queue.Queue[Request]) -> None:
        self.folder = folder
        self.requests = requests

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
            self.requests.put(Request("read", name))

    def _withdraw(self, path: str | bytes) -> None:
        name = self._in_folder(path)
        if name is not None:
            self.requests.put(Request("withdraw", name))


class Daemon:
    """The long-running mirror process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.store_path)
        self.source = build_source(settings.source)
        self.state = State(settings.state_path)
        self.folder = DropFolder(settings.manifests_path, self.state)
        policy = RetryPolicy(
            attempts=settings.attempts,
            backoff=settings.backoff,
            first_retry=settings.first_retry,
            max_retry=settings.max_retry,
        )
        self.mirror = Mirror(self.store, self.source, self.state, settings.workers, policy)
        self.requests: queue.Queue[Request] = queue.Queue()
        self.stopping = threading.Event()
        self._changed: set[str] = set()
        self._observer: Observer | None = None
        self._scheduler: BackgroundScheduler | None = None

    # Start and stop -----------------------------------------------------

    def start(self) -> None:
        """Prepare folders, clean up after a crash, and start watching."""
        self.settings.manifests_path.mkdir(parents=True, exist_ok=True)
        removed = self.store.clean_temporary()
        if removed:
            log.info("store.cleaned", temporary_files=removed)
        self.audit_present()

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
        )
        self._scheduler.start()
        self.requests.put(Request("rescan"))
        log.info(
            "daemon.started",
            store=str(self.settings.store_path),
            manifests=str(self.settings.manifests_path),
            state=str(self.settings.state_path),
            source=self.source.describe(),
            workers=self.settings.workers,
            pid=os.getpid(),
        )

    def stop(self) -> None:
        """Ask the daemon to stop; safe to call from a signal handler."""
        self.stopping.set()
        self.mirror.stopping.set()
        self.requests.put(Request("wake"))

    def _shut_down(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
        self.mirror.close()
        removed = self.store.clean_temporary()
        self.state.close()
        log.info("daemon.stopped", temporary_files_removed=removed)

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT; rescan the manifest folder on SIGHUP."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.stop()

        def on_hangup(signum: int, frame: FrameType | None) -> None:
            self.requests.put(Request("rescan"))

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hangup)

    # Work ---------------------------------------------------------------

    def audit_present(self) -> None:
        """Forget verified images whose file is gone or changed since verification."""
        stale = []
        for record in self.state.iter_present():
            path = self.store.path_for(record.digest, record.extension)
            try:
                info = path.stat()
            except FileNotFoundError:
                stale.append(record.digest)
                continue
            if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
                stale.append(record.digest)
        if stale:
            self.state.forget_present(stale)
            log.info("store.audited", stale=len(stale))

    def handle_requests(self, timeout: float | None = None) -> bool:
        """Handle every queued request, waiting up to ``timeout`` for the first."""
        handled = False
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
            result = self.folder.read(request.name)
            if result is None or result.changed:
                self._changed.add(request.name)
            return True
        if request.kind == "withdraw":
            if (self.settings.manifests_path / request.name).exists():
                return self._handle(Request("read", request.name))
            self.folder.withdraw(request.name)
            self._changed.add(request.name)
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
        for name in sorted(self._changed):
            write_status(self.state, name)
        self._changed.clear()

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

    def run(self) -> None:
        """Serve until ``stop`` is called."""
        self.start()
        try:
            while not self.stopping.is_set():
                self.handle_requests()
                self.run_pass()
                self.write_reports()
                self.handle_requests(timeout=self._seconds_until_next_retry())
        finally:
            self._shut_down()
