"""The background scrub: order, budget, pace, quarantine, stopping and overlapping runs."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from conftest import wait_until
from structlog.testing import capture_logs

from herbsync.digest import calculate_sha256
from herbsync.errors import ConfigError
from herbsync.manifests import Entry
from herbsync.mirror import Mirror, RetryPolicy
from herbsync.scrub import ScrubPace, Scrubber, ScrubSettings, scrub_settings_from_table
from herbsync.sources.local import LocalImageSource
from herbsync.state import ManifestRecord, PresentRecord, State
from herbsync.store import Store


UNLIMITED = ScrubPace()


class FakeClock:
    """A wall clock that moves only when a test or ``ClockedStop.wait`` moves it."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ClockedStop(threading.Event):
    """A stop event whose ``wait`` moves the fake clock instead of sleeping."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.clock.advance(timeout)
        return self.is_set()


def put_image(store: Store, state: State, content: bytes, verified_at: float) -> str:
    """Store ``content`` under its digest and record it as verified at ``verified_at``."""
    digest = hashlib.sha256(content).hexdigest()
    stored = store.place(digest, "jpg", [content], "test")
    info = stored.path.stat()
    state.mark_present(PresentRecord(digest, "jpg", info.st_size, info.st_mtime_ns, verified_at))
    return digest


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def state(tmp_path: Path) -> State:
    opened = State(tmp_path / "state")
    yield opened
    opened.close()


def images_by_age(store: Store, state: State, count: int, size: int = 1000) -> list[str]:
    """Store ``count`` images of ``size`` bytes verified at 10, 20, 30...; return them oldest first."""
    digests = []
    for index in range(count):
        content = bytes([index]) * size
        digests.append(put_image(store, state, content, verified_at=10.0 * (index + 1)))
    return digests


def verified_at(state: State, digest: str) -> float | None:
    record = state.present(digest)
    return None if record is None else record.verified_at


class TestQuarantine:
    """A file that no longer hashes to its name leaves the layout and the state."""

    def test_corrupt_file_quarantined_row_removed(self, store, state, tmp_path):
        clock = FakeClock()
        digests = images_by_age(store, state, 3)
        damaged = store.path_for(digests[1])
        damaged.write_bytes(b"flipped bits")
        reported: list[str] = []
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, clock, reported.append)

        with capture_logs() as logs:
            result = scrubber.run_once(10_000, threading.Event())

        assert result.corrupt == [digests[1]]
        assert reported == [digests[1]]
        assert not damaged.exists()
        assert state.present(digests[1]) is None
        quarantined = list(store.quarantine_folder.iterdir())
        assert [path.read_bytes() for path in quarantined] == [b"flipped bits"]
        corrupt_events = [event for event in logs if event["event"] == "store.corrupt"]
        assert corrupt_events[0]["digest"] == digests[1]
        assert corrupt_events[0]["actual"] == hashlib.sha256(b"flipped bits").hexdigest()
        assert corrupt_events[0]["quarantine"] == str(quarantined[0])
        assert corrupt_events[0]["log_level"] == "error"

    def test_quarantined_image_fetched_again(self, store, state, tmp_path):
        """After the scrub drops a corrupt image's record, a mirror pass fetches it anew."""
        content = b"a herbarium sheet" * 100
        digest = put_image(store, state, content, verified_at=5.0)
        store.path_for(digest).write_bytes(b"truncated")
        good_copies = Store(tmp_path / "copies")
        good_copies.place(digest, "jpg", [content], "test")
        record = ManifestRecord("wanted.txt", 0, 0, "", [], 0)
        state.replace_manifest(record, [Entry(digest, 1)])
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock())

        scrubber.run_once(10_000, threading.Event())
        mirror = Mirror(store, LocalImageSource(good_copies.root), state, 1, RetryPolicy(attempts=1))
        try:
            result = mirror.run_pass()
        finally:
            mirror.close()

        assert result.fetched == 1
        assert store.path_for(digest).read_bytes() == content
        assert state.present(digest) is not None

    def test_missing_file_row_removed(self, store, state, tmp_path):
        digests = images_by_age(store, state, 2)
        store.path_for(digests[0]).unlink()
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock())

        result = scrubber.run_once(10_000, threading.Event())

        assert result.missing == [digests[0]]
        assert result.files == 1
        assert state.present(digests[0]) is None
        assert state.present(digests[1]) is not None

    def test_good_file_gets_new_size_and_mtime(self, store, state, tmp_path):
        clock = FakeClock(now=500.0)
        digest = images_by_age(store, state, 1)[0]
        path = store.path_for(digest)
        os.utime(path, ns=(1_000_000_000, 2_000_000_000))
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, clock)

        scrubber.run_once(10_000, threading.Event())

        record = state.present(digest)
        assert record is not None
        assert record.verified_at == 500.0
        assert record.mtime_ns == 2_000_000_000
        assert record.size == 1000

    def test_access_time_kept(self, store, state, tmp_path):
        """Hashing does not make a file look recently used to eviction."""
        digest = images_by_age(store, state, 1)[0]
        path = store.path_for(digest)
        mtime_ns = path.stat().st_mtime_ns
        # An access time older than the mtime makes relatime update it on the next read.
        old_atime_ns = mtime_ns - 10**12
        os.utime(path, ns=(old_atime_ns, mtime_ns))
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock())

        scrubber.run_once(10_000, threading.Event())

        assert path.stat().st_atime_ns == old_atime_ns


class TestOrderAndBudget:
    """Which images a run hashes and how many."""

    def test_oldest_verification_first(self, store, state, tmp_path):
        clock = FakeClock(now=1000.0)
        digests = images_by_age(store, state, 5)
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, clock)

        first = scrubber.run_once(2500, threading.Event())
        clock.advance(1)
        second = scrubber.run_once(2500, threading.Event())

        assert (first.files, first.bytes) == (2, 2000)
        assert (second.files, second.bytes) == (2, 2000)
        assert [verified_at(state, digest) for digest in digests] == [1000.0, 1000.0, 1001.0, 1001.0, 50.0]

    def test_each_file_hashed_once_per_run(self, store, state, tmp_path):
        images_by_age(store, state, 5)
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock())

        result = scrubber.run_once(10**9, threading.Event())

        assert result.files == 5
        assert result.bytes == 5000

    def test_file_larger_than_budget_still_hashed(self, store, state, tmp_path):
        digests = images_by_age(store, state, 2)
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock(now=99.0))

        result = scrubber.run_once(10, threading.Event())

        assert result.files == 1
        assert verified_at(state, digests[0]) == 99.0
        assert verified_at(state, digests[1]) == 20.0

    def test_zero_budget_hashes_nothing(self, store, state, tmp_path):
        images_by_age(store, state, 2)
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock())

        result = scrubber.run_once(0, threading.Event())

        assert result.files == 0

    def test_run_for_budget_from_rate(self, store, state, tmp_path):
        images_by_age(store, state, 5)
        scrubber = Scrubber(store, tmp_path / "state", ScrubPace(rate=100.0), FakeClock())
        stop = ClockedStop(scrubber.clock)

        result = scrubber.run_for(25.0, stop)

        assert result.budget_bytes == 2500
        assert result.files == 2

    def test_run_for_budget_from_full_pass(self, store, state, tmp_path):
        """A full pass in one day over 5000 bytes gives 2000 bytes to 40 % of a day."""
        images_by_age(store, state, 5)
        scrubber = Scrubber(store, tmp_path / "state", ScrubPace(full_pass_days=1.0), FakeClock())
        stop = ClockedStop(scrubber.clock)

        result = scrubber.run_for(0.4 * 86_400, stop)

        assert result.budget_bytes in (2000, 2001)
        assert result.files == 2


class TestPace:
    """Hashing within a run is held to four times the average rate."""

    def test_files_started_at_the_pace(self, store, state, tmp_path):
        clock = FakeClock(now=1000.0)
        images_by_age(store, state, 4)
        stop = ClockedStop(clock)
        # 250 B/s on average allows 1000 B/s within a run: one 1000-byte file per second.
        scrubber = Scrubber(store, tmp_path / "state", ScrubPace(rate=250.0), clock)

        result = scrubber.run_once(10**6, stop)

        assert result.files == 4
        assert clock.now == pytest.approx(1003.0)
        assert stop.waits == pytest.approx([1.0, 1.0, 1.0])

    def test_unlimited_pace_never_waits(self, store, state, tmp_path):
        clock = FakeClock()
        images_by_age(store, state, 4)
        stop = ClockedStop(clock)
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, clock)

        scrubber.run_once(10**6, stop)

        assert stop.waits == []


class BlockingStore(Store):
    """A store whose ``path_for`` calls a hook, so a test can pause or stop a run inside it."""

    def __init__(self, root: Path, hook) -> None:
        super().__init__(root)
        self.hook = hook
        self.calls = 0

    def path_for(self, digest: str, extension: str = "jpg") -> Path:
        self.calls += 1
        self.hook(self.calls)
        return super().path_for(digest, extension)


class TestStopAndOverlap:
    """Runs end promptly on stop and never overlap."""

    def test_stop_before_run_hashes_nothing(self, store, state, tmp_path):
        digests = images_by_age(store, state, 3)
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock())
        stop = threading.Event()
        stop.set()

        result = scrubber.run_once(10**6, stop)

        assert result.files == 0
        assert result.stopped is True
        assert [verified_at(state, digest) for digest in digests] == [10.0, 20.0, 30.0]

    def test_stop_during_run_ends_it(self, store, state, tmp_path):
        stop = threading.Event()

        def stop_at_second_image(calls: int) -> None:
            if calls == 2:
                stop.set()

        blocking = BlockingStore(store.root, stop_at_second_image)
        digests = images_by_age(store, state, 5)
        scrubber = Scrubber(blocking, tmp_path / "state", UNLIMITED, FakeClock(now=999.0))

        result = scrubber.run_once(10**6, stop)

        assert result.stopped is True
        assert result.files <= 1
        assert [verified_at(state, digest) for digest in digests[1:]] == [20.0, 30.0, 40.0, 50.0]

    def test_second_run_skipped_while_first_runs(self, store, state, tmp_path):
        entered = threading.Event()
        release = threading.Event()

        def pause_first_image(calls: int) -> None:
            if calls == 1:
                entered.set()
                release.wait(30)

        blocking = BlockingStore(store.root, pause_first_image)
        images_by_age(store, state, 2)
        scrubber = Scrubber(blocking, tmp_path / "state", UNLIMITED, FakeClock())
        results = []
        first = threading.Thread(target=lambda: results.append(scrubber.run_once(10**6, threading.Event())))

        first.start()
        assert entered.wait(30)
        with capture_logs() as logs:
            second = scrubber.run_once(10**6, threading.Event())
        release.set()
        first.join(30)

        assert second.skipped is True
        assert second.files == 0
        assert [event["event"] for event in logs] == ["scrub.skipped"]
        assert results[0].skipped is False
        assert results[0].files == 2

    def test_run_logs_start_and_completion(self, store, state, tmp_path):
        images_by_age(store, state, 2)
        scrubber = Scrubber(store, tmp_path / "state", UNLIMITED, FakeClock())

        with capture_logs() as logs:
            scrubber.run_once(10**6, threading.Event())

        events = [event["event"] for event in logs]
        assert events == ["scrub.started", "scrub.completed"]
        completed = logs[-1]
        assert (completed["files"], completed["bytes"], completed["corrupt"], completed["missing"]) == (2, 2000, 0, 0)
        assert "seconds" in completed


class TestSettings:
    """The [scrub] table of the configuration."""

    def test_defaults_full_pass_weekly(self):
        settings = scrub_settings_from_table({})

        assert settings == ScrubSettings()
        assert settings.pace == ScrubPace(full_pass_days=7.0)
        assert settings.interval == 600.0

    def test_rate_with_unit(self):
        settings = scrub_settings_from_table({"rate": "50 MB", "interval": 60, "workers": 1})

        assert settings.pace == ScrubPace(rate=50_000_000.0)
        assert settings.interval == 60.0
        assert settings.workers == 1

    @pytest.mark.parametrize(
        ("table", "named"),
        [
            ({"rate": "fast"}, "scrub.rate = 'fast'"),
            ({"rate": "50 MB", "full_pass_days": 7}, "set only one"),
            ({"full_pass_days": 0}, "scrub.full_pass_days = 0"),
            ({"interval": -1}, "scrub.interval = -1"),
            ({"workers": 0}, "scrub.workers = 0"),
            ({"enabled": "yes"}, "scrub.enabled = 'yes'"),
            ({"speed": 1}, "unknown key scrub.speed"),
        ],
    )
    def test_invalid_value_named(self, table, named):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            scrub_settings_from_table(table)


class TestDaemonScrub:
    """The daemon's scheduled scrub, end to end against SeaweedFS."""

    def test_corrupt_store_file_fetched_again(self, seaweed, bucket, s3_table, specimens, start_daemon):
        digests = seaweed.upload_images(bucket, specimens[:2])
        daemon = start_daemon(s3_table, scrub={"rate": "1 GB", "interval": 1})
        daemon.drop_manifest("scrubbed.txt", "\n".join(digests))
        daemon.wait_settled("scrubbed.txt", 2)

        daemon.stored(digests[0]).write_bytes(b"bit rot")
        wait_until(lambda: daemon.events("store.corrupt"), "the scrub to find the damaged file")

        def fetched_twice() -> bool:
            fetches = [event for event in daemon.events("image.fetched") if event["digest"] == digests[0]]
            return len(fetches) == 2

        wait_until(fetched_twice, "the damaged image to be fetched again")

        assert daemon.events("store.corrupt")[0]["digest"] == digests[0]
        assert calculate_sha256(daemon.stored(digests[0])) == digests[0]
        quarantined = list((daemon.store / ".quarantine").iterdir())
        assert [path.read_bytes() for path in quarantined] == [b"bit rot"]
