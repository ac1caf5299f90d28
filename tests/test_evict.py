"""Eviction to [store] max_size: least recently used unwanted images go, wanted ones stay."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from herbsync.errors import ConfigError
from herbsync.evict import Evictor, evict, max_size_from_table, plan_eviction, scan_store
from herbsync.manifests import Entry
from herbsync.state import ManifestRecord, PresentRecord, State
from herbsync.store import Store
from herbsync.units import format_size, parse_size


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def state(tmp_path: Path) -> State:
    opened = State(tmp_path / "state")
    yield opened
    opened.close()


def put_image(store: Store, state: State, index: int, last_used: float, size: int = 1000) -> str:
    """Store a ``size``-byte image with access and modification time ``last_used``; return its digest."""
    content = index.to_bytes(4, "big") * (size // 4)
    digest = hashlib.sha256(content).hexdigest()
    stored = store.place(digest, "jpg", [content], "test")
    os.utime(stored.path, (last_used, last_used))
    info = stored.path.stat()
    state.mark_present(PresentRecord(digest, "jpg", info.st_size, info.st_mtime_ns, 1.0))
    return digest


def want(state: State, digests: list[str], name: str = "wanted.txt") -> None:
    record = ManifestRecord(name, 0, 0, "", [], 0)
    state.replace_manifest(record, [Entry(digest, line) for line, digest in enumerate(digests, 1)])


class TestPlan:
    """Which files a plan removes, and in which order."""

    def test_least_recently_used_unwanted_first(self, store, state):
        wanted = [put_image(store, state, index, last_used=10.0 + index) for index in range(2)]
        unwanted = [put_image(store, state, index, last_used=1000.0 * index) for index in range(2, 6)]
        want(state, wanted)

        plan = plan_eviction(store, state, max_size=3500)

        assert plan.total_bytes == 6000
        assert plan.wanted_bytes == 2000
        assert [entry.digest for entry in plan.removals] == unwanted[:3]
        assert plan.bytes_freed == 3000
        assert plan.total_after == 3000
        assert plan.over_capacity is False

    def test_within_max_size_removes_nothing(self, store, state):
        for index in range(3):
            put_image(store, state, index, last_used=100.0)

        plan = plan_eviction(store, state, max_size=3000)

        assert plan.removals == ()
        assert plan.bytes_freed == 0

    def test_mtime_used_when_atime_is_older(self, store, state):
        """On a noatime mount the access time stays at creation; the later mtime counts."""
        read_recently = put_image(store, state, 1, last_used=0.0)
        os.utime(store.path_for(read_recently), (500.0, 50.0))
        written_recently = put_image(store, state, 2, last_used=0.0)
        os.utime(store.path_for(written_recently), (100.0, 1000.0))

        plan = plan_eviction(store, state, max_size=1000)

        assert [entry.digest for entry in plan.removals] == [read_recently]
        assert plan.removals[0].last_used == 500.0

    def test_total_counts_unrecorded_skips_hidden(self, store, state):
        recorded = put_image(store, state, 1, last_used=1.0)
        unrecorded = put_image(store, state, 2, last_used=2.0)
        state.forget_present([unrecorded])
        store.temporary_folder.mkdir(parents=True, exist_ok=True)
        (store.temporary_folder / ".part-x").write_bytes(b"x" * 5000)
        store.quarantine_folder.mkdir(parents=True, exist_ok=True)
        (store.quarantine_folder / f"20240101T000000-{'a' * 64}.jpg").write_bytes(b"x" * 5000)
        (store.root / ".herbsync.lock").write_text("123\n")
        (store.path_for(recorded).parent / "notes.txt").write_bytes(b"x" * 5000)

        entries = list(scan_store(store))
        plan = plan_eviction(store, state, max_size=0)

        assert sorted(entry.digest for entry in entries) == sorted([recorded, unrecorded])
        assert plan.total_bytes == 2000
        assert [entry.digest for entry in plan.removals] == [recorded, unrecorded]

    def test_empty_store(self, store, state):
        plan = plan_eviction(store, state, max_size=0)

        assert (plan.total_bytes, plan.removals, plan.over_capacity) == (0, (), False)


class TestEvict:
    """Removing the planned files and their records."""

    def test_keeps_wanted_frees_least_recent(self, store, state):
        wanted = [put_image(store, state, index, last_used=1.0) for index in range(2)]
        unwanted = [put_image(store, state, index, last_used=100.0 * index) for index in range(2, 6)]
        want(state, wanted)
        plan = plan_eviction(store, state, max_size=3500)

        result = evict(plan, store, state)

        assert all(store.path_for(digest).is_file() for digest in wanted)
        assert [store.path_for(digest).exists() for digest in unwanted] == [False, False, False, True]
        assert [state.present(digest) is None for digest in unwanted] == [True, True, True, False]
        assert (result.removed, result.bytes_freed, result.total_bytes) == (3, 3000, 3000)

    def test_over_capacity_reported_wanted_kept(self, store, state):
        wanted = [put_image(store, state, index, last_used=1.0) for index in range(3)]
        unwanted = put_image(store, state, 9, last_used=500.0)
        want(state, wanted)
        plan = plan_eviction(store, state, max_size=2000)

        with capture_logs() as logs:
            result = evict(plan, store, state)

        assert plan.over_capacity is True
        assert plan.wanted_bytes == 3000
        assert [entry.digest for entry in plan.removals] == [unwanted]
        assert result.over_capacity is True
        assert all(store.path_for(digest).is_file() for digest in wanted)
        warnings = [event for event in logs if event["event"] == "store.over_capacity"]
        assert warnings[0]["wanted_bytes"] == 3000
        assert warnings[0]["max_size"] == 2000
        assert warnings[0]["log_level"] == "warning"

    def test_image_wanted_after_plan_spared(self, store, state):
        digest = put_image(store, state, 1, last_used=1.0)
        plan = plan_eviction(store, state, max_size=0)

        want(state, [digest], name="late.txt")
        result = evict(plan, store, state)

        assert store.path_for(digest).is_file()
        assert (result.removed, result.spared) == (0, 1)

    def test_vanished_file_spared(self, store, state):
        digest = put_image(store, state, 1, last_used=1.0)
        plan = plan_eviction(store, state, max_size=0)
        store.path_for(digest).unlink()

        result = evict(plan, store, state)

        assert (result.removed, result.spared, result.failed) == (0, 1, 0)

    def test_stop_ends_before_removing(self, store, state):
        digest = put_image(store, state, 1, last_used=1.0)
        plan = plan_eviction(store, state, max_size=0)
        stop = threading.Event()
        stop.set()

        result = evict(plan, store, state, stop)

        assert result.stopped is True
        assert store.path_for(digest).is_file()

    def test_each_removal_logged(self, store, state):
        digest = put_image(store, state, 1, last_used=1.0)
        plan = plan_eviction(store, state, max_size=0)

        with capture_logs() as logs:
            evict(plan, store, state)

        assert [(event["event"], event.get("digest")) for event in logs] == [
            ("image.evicted", digest),
            ("store.evicted", None),
        ]

    def test_evictor_uses_its_own_connection(self, store, state, tmp_path):
        wanted = put_image(store, state, 1, last_used=1.0)
        unwanted = put_image(store, state, 2, last_used=2.0)
        want(state, [wanted])
        evictor = Evictor(store, tmp_path / "state", max_size=1000)

        result = evictor.run_once()

        assert (result.removed, result.skipped, result.error) == (1, False, None)
        assert store.path_for(wanted).is_file()
        assert not store.path_for(unwanted).exists()
        assert state.present(unwanted) is None


class TestSizes:
    """Parsing [store] max_size and other byte sizes."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1024, 1024),
            ("1024", 1024),
            ("500 GB", 500 * 10**9),
            ("500GB", 500 * 10**9),
            ("500 gb", 500 * 10**9),
            ("1.5 TiB", 3 * 2**39),
            ("2 MiB", 2 * 2**20),
            ("10 kB", 10_000),
            ("0", 0),
            (2e12, 2 * 10**12),
            (" 7 B ", 7),
        ],
    )
    def test_valid_sizes(self, value, expected):
        assert parse_size(value, "store.max_size") == expected

    @pytest.mark.parametrize("value", ["lots", "5 GBytes", "-1 GB", "1e3 MB", "", True, 1.5, -5, [1]])
    def test_invalid_size_names_key_and_value(self, value):
        with pytest.raises(ConfigError) as raised:
            parse_size(value, "store.max_size")

        assert "store.max_size" in str(raised.value)
        assert repr(value) in str(raised.value)

    def test_max_size_absent_is_none(self):
        assert max_size_from_table({"path": "/srv/images"}) is None

    def test_max_size_from_table(self):
        assert max_size_from_table({"max_size": "2 GiB"}) == 2 * 2**30

    @pytest.mark.parametrize(
        ("size", "text"),
        [(0, "0 B"), (999, "999 B"), (1000, "1 kB"), (1_234_567, "1.23 MB"), (999_600_000, "1 GB")],
    )
    def test_format_size(self, size, text):
        assert format_size(size) == text


def test_daemon_reports_over_capacity(seaweed, bucket, s3_table, specimens, start_daemon):
    """A cap below the wanted images is shown by herbsync status, and nothing wanted is removed."""
    import subprocess
    import sys

    from conftest import TEST_KEYS, wait_until

    digests = seaweed.upload_images(bucket, specimens[:2])
    daemon = start_daemon(s3_table, store={"max_size": "1 kB", "evict_interval": 1})
    daemon.drop_manifest("big.txt", "\n".join(digests))
    daemon.wait_settled("big.txt", 2)
    report_path = daemon.state / "store-status.json"

    wait_until(lambda: report_path.exists() and '"over_capacity": true' in report_path.read_text(), "the report")
    result = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "status", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
    )

    assert "store over capacity" in result.stdout
    assert all(daemon.stored(digest).is_file() for digest in digests)
    assert daemon.events("store.over_capacity")
