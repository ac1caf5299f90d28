"""The scrub: re-hash stored images in the background, least recently verified first.

A disk error or a stray write can change a file after herbsync verified it.
Each scrub run hashes up to a byte budget of verified images, taking those
whose verification is oldest first. A file that no longer hashes to its name
is moved to the quarantine folder and its record dropped, so the daemon
fetches the image again while a manifest wants it. A run opens its own state
database connection, so it can run on a scheduler thread beside the daemon.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from herbsync.errors import ConfigError
from herbsync.state import PresentRecord, State
from herbsync.store import Store, StoredFile
from herbsync.units import parse_size
from herbsync.verify import (
    DEFAULT_WORKERS,
    RECORD_BATCH,
    Check,
    Status,
    check_many,
    quarantine_corrupt,
    record_of,
)


log = structlog.get_logger("herbsync.scrub")

SECONDS_PER_DAY = 86_400.0

# Within a run, hashing is held to this multiple of the average rate. A run
# with the budget of one interval then ends after about a quarter of the
# interval, well before the next run is due, and reads the disk at no more
# than four times the configured rate, averaged over the run.
BURST_FACTOR = 4.0

# Verification records read from the state database per query.
PAGE_SIZE = 256

SCRUB_KEYS = frozenset({"enabled", "rate", "full_pass_days", "interval", "workers"})


@dataclass(frozen=True)
class ScrubPace:
    """The average rate at which the scrub re-hashes the store, over many runs."""

    #: Bytes per second; when None, the rate follows from ``full_pass_days``.
    rate: float | None = None
    #: Days for one pass over every verified image, used when ``rate`` is None.
    full_pass_days: float | None = None

    def bytes_per_second(self, total_bytes: int) -> float | None:
        """Return the average rate for ``total_bytes`` of verified images, or None for no limit."""
        if self.rate is not None:
            return self.rate
        if self.full_pass_days is not None:
            return total_bytes / (self.full_pass_days * SECONDS_PER_DAY)
        return None


@dataclass(frozen=True)
class ScrubSettings:
    """The ``[scrub]`` table of the configuration file."""

    enabled: bool = True
    pace: ScrubPace = ScrubPace(full_pass_days=7.0)
    #: Seconds between scrub runs; each run gets the budget of one interval.
    interval: float = 600.0
    #: Hashing threads.
    workers: int = DEFAULT_WORKERS


@dataclass
class ScrubResult:
    """Counts and findings of one scrub run."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    budget_bytes: int = 0
    #: Digests of files that did not hash to their name and were quarantined.
    corrupt: list[str] = field(default_factory=list)
    #: Digests whose file was gone; their records were dropped.
    missing: list[str] = field(default_factory=list)
    unreadable: int = 0
    #: True when another run was still in progress, so this one did nothing.
    skipped: bool = False
    #: True when ``stop`` was set before the budget was used up.
    stopped: bool = False
    #: The database or file system error that ended the run early, if any.
    error: str | None = None


class Scrubber:
    """Re-hashes verified images at a pace, oldest verification first.

    ``on_corrupt`` is called with the digest of each quarantined image, from
    the thread that runs the scrub, so the daemon can wake up and fetch it.
    Runs never overlap: a run started while another is in progress returns
    at once with ``skipped`` set.
    """

    def __init__(
        self,
        store: Store,
        state_folder: str | Path,
        pace: ScrubPace,
        clock: Callable[[], float] = time.time,
        on_corrupt: Callable[[str], None] | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.store = store
        self.state_folder = Path(state_folder)
        self.pace = pace
        self.clock = clock
        self.on_corrupt = on_corrupt
        self.workers = workers
        self._running = threading.Lock()

    def run_once(self, budget_bytes: int, stop: threading.Event) -> ScrubResult:
        """Hash up to ``budget_bytes`` of the least recently verified images.

        A run takes images in order while they fit the budget, but always
        takes the first one, so an image larger than the budget is still
        checked. It returns soon after ``stop`` is set.
        """
        return self._run(lambda state: budget_bytes, stop)

    def run_for(self, interval: float, stop: threading.Event) -> ScrubResult:
        """Run once with the budget of ``interval`` seconds at the configured pace."""
        return self._run(lambda state: self._budget_for(state, interval), stop)

    def _budget_for(self, state: State, interval: float) -> int:
        total = state.present_bytes()
        rate = self.pace.bytes_per_second(total)
        if rate is None:
            return total
        return math.ceil(rate * interval)

    def _run(self, budget_of: Callable[[State], int], stop: threading.Event) -> ScrubResult:
        if not self._running.acquire(blocking=False):
            log.info("scrub.skipped", reason="the previous scrub run is still in progress")
            return ScrubResult(skipped=True)

        try:
            state = State(self.state_folder)
            try:
                return self._scrub(state, budget_of(state), stop)
            finally:
                state.close()
        except (sqlite3.Error, OSError) as error:
            log.error("scrub.failed", error=str(error), state=str(self.state_folder))
            return ScrubResult(error=str(error))
        finally:
            self._running.release()

    def _scrub(self, state: State, budget: int, stop: threading.Event) -> ScrubResult:
        started_at = self.clock()
        result = ScrubResult(budget_bytes=budget)
        rate = self.pace.bytes_per_second(state.present_bytes())
        max_rate = None if rate is None else rate * BURST_FACTOR
        log.info("scrub.started", budget_bytes=budget, max_bytes_per_second=max_rate)

        good: list[PresentRecord] = []
        targets = self._targets(state, started_at, budget, max_rate, stop)
        checks = check_many(targets, self.workers, stop)
        try:
            for check in checks:
                self._apply(check, state, result, good)
                if len(good) >= RECORD_BATCH:
                    state.refresh_verified(good)
                    good.clear()
        finally:
            checks.close()
            if good:
                state.refresh_verified(good)

        result.stopped = stop.is_set()
        result.seconds = self.clock() - started_at
        log.info(
            "scrub.completed",
            files=result.files,
            bytes=result.bytes,
            seconds=round(result.seconds, 3),
            corrupt=len(result.corrupt),
            missing=len(result.missing),
            unreadable=result.unreadable,
            stopped=result.stopped,
        )
        return result

    def _targets(
        self,
        state: State,
        started_at: float,
        budget: int,
        max_rate: float | None,
        stop: threading.Event,
    ) -> Iterator[StoredFile]:
        """Yield images verified before this run, oldest first, within budget and pace.

        Images verified during the run get a verification time at or after
        ``started_at``, so the query never returns them twice.
        """
        planned = 0
        cursor: tuple[float, str] | None = None
        while budget > 0:
            page = state.least_recently_verified(started_at, cursor, PAGE_SIZE)
            if not page:
                return

            for record in page:
                if planned > 0 and planned + record.size > budget:
                    return
                if not self._wait_for_pace(planned, started_at, max_rate, stop):
                    return
                planned += record.size
                path = self.store.path_for(record.digest, record.extension)
                yield StoredFile(path, record.digest, record.extension, record.size)
            cursor = (page[-1].verified_at, page[-1].digest)

    def _wait_for_pace(
        self, planned: int, started_at: float, max_rate: float | None, stop: threading.Event
    ) -> bool:
        """Wait until ``planned`` bytes fit ``max_rate`` since the start; False if stopped."""
        if max_rate is None or max_rate <= 0:
            return not stop.is_set()

        while True:
            ahead = planned / max_rate - (self.clock() - started_at)
            if ahead <= 0:
                return not stop.is_set()
            if stop.wait(ahead):
                return False

    def _apply(self, check: Check, state: State, result: ScrubResult, good: list[PresentRecord]) -> None:
        target = check.target
        if check.status is Status.STOPPED:
            return
        if check.status is Status.MISSING:
            log.warning("scrub.missing", digest=target.digest, path=str(target.path))
            state.forget_present([target.digest])
            result.missing.append(target.digest)
            return
        if check.status is Status.UNREADABLE:
            log.error("scrub.unreadable", digest=target.digest, path=str(target.path), error=check.error)
            result.unreadable += 1
            return

        result.files += 1
        result.bytes += check.size
        if check.status is Status.GOOD:
            good.append(record_of(check, self.clock()))
            return
        quarantine_corrupt(self.store, state, check)
        result.corrupt.append(target.digest)
        if self.on_corrupt is not None:
            self.on_corrupt(target.digest)


# Configuration ------------------------------------------------------------


def scrub_settings_from_table(table: Mapping[str, Any], where: str = "scrub") -> ScrubSettings:
    """Validate the ``[scrub]`` table; raise ``ConfigError`` naming the key and value.

    ``rate`` is a size per second, such as ``"50 MB"``. ``full_pass_days``
    sets the rate so that one pass covers every verified image in that many
    days. Only one of the two may be given; with neither, a pass takes 7 days.
    """
    defaults = ScrubSettings()
    unknown = sorted(set(table) - SCRUB_KEYS)
    if unknown:
        msg = f"unknown key {where}.{unknown[0]}; known keys: {', '.join(sorted(SCRUB_KEYS))}"
        raise ConfigError(msg)
    if "rate" in table and "full_pass_days" in table:
        msg = f"{where}.rate and {where}.full_pass_days are both set; set only one of them"
        raise ConfigError(msg)

    enabled = table.get("enabled", defaults.enabled)
    if not isinstance(enabled, bool):
        msg = f"{where}.enabled = {enabled!r} is invalid: expected true or false"
        raise ConfigError(msg)

    pace = defaults.pace
    if "rate" in table:
        pace = ScrubPace(rate=float(parse_size(table["rate"], f"{where}.rate", minimum=1)))
    elif "full_pass_days" in table:
        pace = ScrubPace(full_pass_days=_positive_number(table, "full_pass_days", where))

    interval = _positive_number(table, "interval", where) if "interval" in table else defaults.interval
    workers = table.get("workers", defaults.workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        msg = f"{where}.workers = {workers!r} is invalid: expected an integer >= 1"
        raise ConfigError(msg)
    return ScrubSettings(enabled, pace, interval, workers)


def _positive_number(table: Mapping[str, Any], key: str, where: str) -> float:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        msg = f"{where}.{key} = {value!r} is invalid: expected a number > 0"
        raise ConfigError(msg)
    return float(value)
