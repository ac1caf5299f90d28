"""The transfer engine: bring every wanted image into the store, verified.

A pass reads the due wanted images from the state database in digest order,
fetches them on a bounded thread pool, and records each outcome. Worker
threads only fetch and hash. The thread that runs the pass makes every write
on the daemon's database connection, so that connection has one user.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from herbsync.digest import split_name
from herbsync.durability import WriteBack
from herbsync.errors import (
    AccessDenied,
    DigestMismatch,
    HerbsyncError,
    ObjectNotFound,
    SizeMismatch,
    SourceUnavailable,
    StoreFull,
    TransferAborted,
)
from herbsync.metrics import Metrics
from herbsync.sources.base import ImageSource
from herbsync.state import PresentRecord, State, Want
from herbsync.store import StagedFile, Store, StoredFile, VerifiedWriter


log = structlog.get_logger("herbsync.mirror")

# Errors that may clear on the next try within the same pass: a dropped
# connection, a throttled server, or bytes corrupted in transit.
TRANSIENT_ERRORS = (SourceUnavailable, DigestMismatch, SizeMismatch)

# Failure kinds that another try soon will not fix.
PERMANENT_KINDS = frozenset({"not_found", "access_denied"})

# Staged files are synced and renamed into place once this many are waiting,
# once nothing else is in flight, or once the oldest has waited this many
# seconds, whichever comes first.
COMMIT_BATCH = 64
COMMIT_AFTER_SECONDS = 1.0


def failure_kind(error: BaseException) -> str:
    """Return the short, stable name of a failure's kind, used in status and logs."""
    if isinstance(error, ObjectNotFound):
        return "not_found"
    if isinstance(error, AccessDenied):
        return "access_denied"
    if isinstance(error, (DigestMismatch, SizeMismatch)):
        return "mismatch"
    if isinstance(error, SourceUnavailable):
        return "unavailable"
    if isinstance(error, StoreFull):
        return "store_full"
    return "error"


class StagingSink:
    """A sink that leaves verified files staged in the store, for ``Store.commit`` to place."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def place(
        self,
        digest: str,
        extension: str,
        chunks: Iterable[bytes],
        origin: str,
        expected_size: int | None = None,
    ) -> StagedFile:
        return self.store.stage(digest, extension, chunks, origin, expected_size)

    def open_writer(
        self, digest: str, extension: str, origin: str, expected_size: int | None = None
    ) -> VerifiedWriter[StagedFile]:
        return self.store.open_staged(digest, extension, origin, expected_size)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a fetch is tried, within a pass and across passes."""

    #: Tries of one image within a pass, for transient errors.
    attempts: int = 3
    #: Seconds before the second try within a pass; doubles after each try.
    backoff: float = 0.5
    #: Seconds before the first retry in a later pass.
    first_retry: float = 60.0
    #: Maximum wait between retries in later passes.
    max_retry: float = 86_400.0
    #: Random spread applied to retry delays, as a fraction.
    jitter: float = 0.2

    def next_delay(self, attempts: int, kind: str) -> float:
        """Return seconds until the next pass may retry an image that failed ``attempts`` times."""
        exponent = attempts - 1
        if kind in PERMANENT_KINDS:
            # Missing or forbidden images rarely appear soon: start eight
            # times later so a wrong manifest does not hammer the server.
            exponent += 3
        delay = min(self.max_retry, self.first_retry * (2 ** min(exponent, 40)))
        spread = 1 + random.uniform(-self.jitter, self.jitter)
        return float(min(self.max_retry, delay * spread))


@dataclass(frozen=True, slots=True)
class Outcome:
    """The outcome of one wanted image in a pass."""

    digest: str
    stored: StoredFile | None = None
    origin: str = ""
    seconds: float = 0.0
    error: HerbsyncError | None = None
    adopted: bool = False


@dataclass
class PassResult:
    """Counts of one pass over the wanted images."""

    fetched: int = 0
    adopted: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    store_full: bool = False
    failures: dict[str, str] = field(default_factory=dict)


class Mirror:
    """Fetches wanted images into a store, recording outcomes in the state.

    Workers write and verify each download into the store's ``.tmp`` without
    syncing it. The thread that runs the pass then places the staged files in
    batches (see ``Store.commit``) and records them only after that. With a
    ``write_back`` set, a batch counts once renamed, and is synced in the background.
    """

    def __init__(
        self,
        store: Store,
        source: ImageSource,
        state: State,
        workers: int = 8,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.source = source
        self.state = state
        self.workers = workers
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.stopping = threading.Event()
        #: Called with each outcome after it is recorded, for progress bars.
        self.on_outcome: Callable[[Outcome], None] | None = None
        #: Prometheus counters to update, if metrics are on.
        self.metrics: Metrics | None = None
        #: Whether failures go to the state database and its retry schedule.
        #: A one-shot fetch reports them to its user instead, so a shell
        #: without credentials cannot delay the daemon's own retries.
        self.record_failures = True
        #: Seconds running transfers may take to finish once ``stopping`` is set.
        self.grace = 30.0
        self._stop_seen_at: float | None = None
        self._staging = StagingSink(store)
        #: Downloads staged by workers and not yet committed, oldest first.
        self._staged: list[Outcome] = []
        self._oldest_staged_at = 0.0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        #: Where set, batches are renamed into place unsynced and this syncs
        #: them in the background; otherwise each batch is synced before it counts.
        self.write_back: WriteBack | None = None

    def close(self) -> None:
        """Stop the worker threads after their current fetch."""
        self.stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # One image ---------------------------------------------------------

    def fetch_one(self, want: Want) -> Outcome:
        """Bring one image into the store; never raises for a per-image failure."""
        try:
            adopted = self._adopt_existing(want)
            if adopted is not None:
                return adopted
            return self._download(want)
        except HerbsyncError as error:
            return Outcome(want.digest, error=error)
        except OSError as error:
            wrapped = HerbsyncError(f"{want.digest}: {error}")
            return Outcome(want.digest, error=wrapped)

    def _adopt_existing(self, want: Want) -> Outcome | None:
        """Count a file already in the store once it hashes to its name."""
        path = self.store.find(want.digest, want.extension)
        if path is None:
            return None

        started = time.monotonic()
        actual = self.store.check(path)
        if actual is not None:
            moved = self.store.quarantine(path)
            log.error(
                "store.corrupt", digest=want.digest, actual=actual, path=str(path), quarantine=str(moved)
            )
            return None

        _, extension = split_name(path.name)
        stored = StoredFile(path, want.digest, extension or "jpg", path.stat().st_size)
        return Outcome(want.digest, stored, str(path), time.monotonic() - started, adopted=True)

    def _download(self, want: Want) -> Outcome:
        delay = self.policy.backoff
        for attempt in range(1, self.policy.attempts + 1):
            try:
                result = self.source.copy_to(want.digest, self._staging, want.extension, want.size)
                return Outcome(want.digest, result.stored, result.origin, result.seconds)
            except TRANSIENT_ERRORS as error:
                if attempt == self.policy.attempts or self.stopping.is_set():
                    raise
                log.info(
                    "fetch.retrying",
                    digest=want.digest,
                    attempt=attempt,
                    error=str(error),
                    kind=failure_kind(error),
                )
                if self.stopping.wait(delay):
                    raise
                delay *= 2
        raise AssertionError("unreachable: the loop returns or raises")

    # A pass ------------------------------------------------------------

    def run_pass(
        self,
        between_batches: Callable[[], None] | None = None,
        manifest: str | None = None,
        now: float | None = None,
    ) -> PassResult:
        """Fetch every due wanted image once; return the counts.

        ``between_batches`` is called after each batch of results is
        recorded, so the caller can read new manifests during a long pass.
        ``manifest`` limits the pass to one manifest's entries, and ``now``
        overrides the clock when choosing which failures are due.
        """
        result = PassResult()
        started = time.monotonic()
        in_flight: set[Future[Outcome]] = set()
        after = ""
        limit = max(64, self.workers * 8)

        while not self.stopping.is_set() and not result.store_full:
            due_at = self.clock() if now is None else now
            batch = self.state.pending(due_at, after, limit, manifest)
            if not batch:
                break
            after = batch[-1].digest
            for want in batch:
                if self.stopping.is_set() or result.store_full:
                    break
                if len(in_flight) >= self.workers * 2:
                    in_flight = self._record_done(in_flight, result)
                in_flight.add(self._pool.submit(self.fetch_one, want))
            if between_batches is not None:
                between_batches()

        while in_flight:
            in_flight = self._record_done(in_flight, result)
        self._commit_staged(result)
        result.seconds = time.monotonic() - started
        if result.store_full:
            self._report_store_full(result)
        return result

    def _report_store_full(self, result: PassResult) -> None:
        """Log once per pass that the store's filesystem is full and the pass stopped early."""
        try:
            free_bytes: int | None = shutil.disk_usage(self.store.root).free
        except OSError:
            free_bytes = None
        log.error(
            "store.full",
            store=str(self.store.root),
            free_bytes=free_bytes,
            failed=result.failed,
            action="free space on the store's filesystem; herbsync retries by itself",
        )

    def _record_done(self, in_flight: set[Future[Outcome]], result: PassResult) -> set[Future[Outcome]]:
        done, remaining = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
        self._enforce_grace()
        for future in done:
            if future.cancelled():
                continue
            outcome = future.result()
            if isinstance(outcome.stored, StagedFile):
                self._add_staged(outcome)
            else:
                self.record(outcome, result)

        waited = time.monotonic() - self._oldest_staged_at
        if self._staged and (
            len(self._staged) >= COMMIT_BATCH or not remaining or waited >= COMMIT_AFTER_SECONDS
        ):
            self._commit_staged(result)
        return remaining

    def _add_staged(self, outcome: Outcome) -> None:
        if not self._staged:
            self._oldest_staged_at = time.monotonic()
        self._staged.append(outcome)

    def _commit_staged(self, result: PassResult) -> None:
        """Place the staged downloads with one sync before and one after, then record them."""
        outcomes, self._staged = self._staged, []
        if not outcomes:
            return
        staged = [outcome.stored for outcome in outcomes if isinstance(outcome.stored, StagedFile)]
        placed: list[Outcome] = []
        records: list[PresentRecord] = []
        commits = self.store.commit(staged, sync=self.write_back is None)
        if self.write_back is not None:
            self.write_back.placed(commit.stored.path for commit in commits if commit.stored is not None)
        for outcome, commit in zip(outcomes, commits, strict=True):
            if commit.stored is None:
                self.record(dataclasses.replace(outcome, stored=None, error=commit.error), result)
                continue
            stat = commit.stored.path.stat()
            records.append(
                PresentRecord(commit.stored.digest, commit.stored.extension, stat.st_size, stat.st_mtime_ns, self.clock())
            )
            placed.append(dataclasses.replace(outcome, stored=commit.stored))

        self.state.mark_present_many(records, clear_failures=True)
        for outcome in placed:
            self._report_fetched(outcome, result)
            if self.on_outcome is not None:
                self.on_outcome(outcome)

    def _enforce_grace(self) -> None:
        """Abort the transfers still running once the shutdown grace period is over."""
        if not self.stopping.is_set():
            return
        now = time.monotonic()
        if self._stop_seen_at is None:
            self._stop_seen_at = now
        elif now - self._stop_seen_at >= self.grace and not self.store.aborting.is_set():
            log.warning("fetch.aborting", grace_seconds=self.grace)
            self.store.aborting.set()

    def record(self, outcome: Outcome, result: PassResult) -> None:
        """Write one outcome to the state and the log, and count it."""
        if outcome.stored is not None:
            self._record_success(outcome, result)
        else:
            self._record_failure(outcome, result)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _record_failure(self, outcome: Outcome, result: PassResult) -> None:
        error = outcome.error or HerbsyncError("unknown failure")
        if isinstance(error, TransferAborted):
            log.info("fetch.aborted", digest=outcome.digest)
            return
        kind = failure_kind(error)
        now = self.clock()
        attempts = self.state.attempts(outcome.digest) + 1
        delay = self.policy.next_delay(attempts, kind)
        if self.record_failures:
            self.state.record_failure(outcome.digest, kind, str(error), now, now + delay)
        if self.metrics is not None:
            self.metrics.transfer_errors.labels(kind=kind).inc()
        result.failed += 1
        result.failures[outcome.digest] = str(error)
        if kind == "store_full":
            result.store_full = True
        log.warning(
            "image.failed",
            digest=outcome.digest,
            kind=kind,
            reason=str(error),
            attempts=attempts,
            retry_in=round(delay, 1),
        )

    def _record_success(self, outcome: Outcome, result: PassResult) -> None:
        stored = outcome.stored
        assert stored is not None
        stat = Path(stored.path).stat()
        record = PresentRecord(stored.digest, stored.extension, stat.st_size, stat.st_mtime_ns, self.clock())
        self.state.mark_present(record)
        if outcome.adopted:
            result.adopted += 1
            log.info("image.adopted", digest=stored.digest, path=str(stored.path), bytes=stored.size)
            return
        self._report_fetched(outcome, result)

    def _report_fetched(self, outcome: Outcome, result: PassResult) -> None:
        """Count and log one downloaded image that is already recorded as present."""
        stored = outcome.stored
        assert stored is not None
        result.fetched += 1
        result.bytes += stored.size
        if self.metrics is not None:
            self.metrics.fetched_objects.inc()
            self.metrics.fetched_bytes.inc(stored.size)
        log.info(
            "image.fetched",
            digest=stored.digest,
            source=outcome.origin,
            bytes=stored.size,
            seconds=round(outcome.seconds, 4),
        )
