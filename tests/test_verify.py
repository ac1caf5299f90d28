"""``herbsync verify`` and ``herbsync gc`` from the command line, and the checks behind them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from conftest import write_config

from herbsync.manifests import Entry
from herbsync.state import ManifestRecord, PresentRecord, State
from herbsync.store import Store, StoredFile
from herbsync.verify import Status, check_file, check_many


class Setup:
    """A store, a state database and a configuration file for one test."""

    def __init__(self, root: Path, **store_keys: object) -> None:
        self.store = Store(root / "store")
        self.state_path = root / "state"
        empty = root / "empty-source"
        empty.mkdir(parents=True)
        self.config = write_config(
            root / "herbsync.toml",
            {
                "store": {"path": str(self.store.root), **store_keys},
                "manifests": {"path": str(root / "manifests")},
                "state": {"path": str(self.state_path)},
                "logging": {"format": "json"},
                "source": {"type": "local", "base_path": str(empty)},
            },
        )

    def put(self, index: int, last_used: float = 1_000.0, size: int = 1000, record: bool = True) -> str:
        """Store a ``size``-byte image; record it as verified at time 1 unless ``record`` is False."""
        content = index.to_bytes(4, "big") * (size // 4)
        digest = hashlib.sha256(content).hexdigest()
        stored = self.store.place(digest, "jpg", [content], "test")
        os.utime(stored.path, (last_used, last_used))
        if record:
            info = stored.path.stat()
            with self.state() as state:
                state.mark_present(PresentRecord(digest, "jpg", info.st_size, info.st_mtime_ns, 1.0))
        return digest

    def want(self, digests: list[str]) -> None:
        with self.state() as state:
            record = ManifestRecord("wanted.txt", 0, 0, "", [], 0)
            state.replace_manifest(record, [Entry(digest, line) for line, digest in enumerate(digests, 1)])

    def state(self) -> _OpenState:
        return _OpenState(self.state_path)

    def herbsync(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "herbsync.cli", *arguments, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


class _OpenState:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> State:
        self.state = State(self.path)
        return self.state

    def __exit__(self, *exc_info: object) -> None:
        self.state.close()


class TestVerifyCommand:
    """``herbsync verify`` hashes now, quarantines and reports."""

    def test_corrupt_file_listed_and_quarantined(self, tmp_path):
        setup = Setup(tmp_path)
        good = setup.put(1)
        bad = setup.put(2)
        setup.store.path_for(bad).write_bytes(b"not the image")

        result = setup.herbsync("verify", "--all", "--no-progress")

        assert result.returncode == 1
        assert f"corrupt {bad}" in result.stderr
        assert hashlib.sha256(b"not the image").hexdigest() in result.stderr
        assert good not in result.stderr
        assert "2 files" in result.stdout
        assert "1 corrupt" in result.stdout
        assert not setup.store.path_for(bad).exists()
        quarantined = list(setup.store.quarantine_folder.iterdir())
        assert [path.read_bytes() for path in quarantined] == [b"not the image"]
        with setup.state() as state:
            assert state.present(bad) is None
            assert state.present(good).verified_at > 1.0

    def test_all_good_exits_zero(self, tmp_path):
        setup = Setup(tmp_path)
        for index in range(3):
            setup.put(index)

        result = setup.herbsync("verify", "--all", "--no-progress")

        assert result.returncode == 0, result.stderr
        assert "3 good, 0 corrupt" in result.stdout

    def test_unrecorded_file_verified_and_recorded(self, tmp_path):
        setup = Setup(tmp_path)
        setup.want([])
        digest = setup.put(1, record=False)

        result = setup.herbsync("verify", "--all", "--no-progress")

        assert result.returncode == 0, result.stderr
        with setup.state() as state:
            assert state.present(digest) is not None

    def test_named_hashes_only(self, tmp_path):
        setup = Setup(tmp_path)
        named = setup.put(1)
        other = setup.put(2)
        setup.store.path_for(other).write_bytes(b"damaged but not named")

        result = setup.herbsync("verify", named.upper(), "--no-progress")

        assert result.returncode == 0, result.stderr
        assert "1 good" in result.stdout
        assert setup.store.path_for(other).exists()

    def test_named_hash_not_in_store_fails(self, tmp_path):
        setup = Setup(tmp_path)
        setup.put(1)
        absent = "e" * 64

        result = setup.herbsync("verify", absent, "--no-progress")

        assert result.returncode == 1
        assert f"missing {absent}: not in the store" in result.stderr

    def test_invalid_hash_is_usage_error(self, tmp_path):
        setup = Setup(tmp_path)

        result = setup.herbsync("verify", "not-a-hash", "--no-progress")

        assert result.returncode == 64
        assert "not-a-hash" in result.stderr

    def test_all_and_hashes_rejected(self, tmp_path):
        setup = Setup(tmp_path)

        result = setup.herbsync("verify", "--all", "e" * 64)

        assert result.returncode == 2
        assert "not allowed with argument --all" in result.stderr

    def test_record_without_file_dropped(self, tmp_path):
        setup = Setup(tmp_path)
        kept = setup.put(1)
        gone = setup.put(2)
        setup.store.path_for(gone).unlink()

        result = setup.herbsync("verify", "--all", "--no-progress")

        assert result.returncode == 0, result.stderr
        assert "1 verified images had no file, so their records were dropped" in result.stdout
        with setup.state() as state:
            assert state.present(gone) is None
            assert state.present(kept) is not None

    def test_without_state_database(self, tmp_path):
        """A store can be verified before the daemon ever ran; no database is created."""
        setup = Setup(tmp_path)
        content = b"plain image"
        digest = hashlib.sha256(content).hexdigest()
        setup.store.place(digest, "jpg", [content], "test")

        result = setup.herbsync("verify", "--all", "--no-progress")

        assert result.returncode == 0, result.stderr
        assert not setup.state_path.exists()


class TestGcCommand:
    """``herbsync gc`` removes unwanted images to fit [store] max_size."""

    def test_dry_run_lists_removes_nothing(self, tmp_path):
        setup = Setup(tmp_path, max_size="2 kB")
        oldest = setup.put(1, last_used=100.0)
        middle = setup.put(2, last_used=200.0)
        newest = setup.put(3, last_used=300.0)
        wanted = setup.put(4, last_used=50.0)
        setup.want([wanted])

        result = setup.herbsync("gc", "--dry-run")

        assert result.returncode == 0, result.stderr
        listed = [line for line in result.stdout.splitlines() if line.startswith("would remove /")]
        assert len(listed) == 2
        assert str(setup.store.path_for(oldest)) in listed[0]
        assert str(setup.store.path_for(middle)) in listed[1]
        assert "would remove 2 files, freeing 2 kB: the store would go from 4 kB to 2 kB" in result.stdout
        assert all(setup.store.path_for(digest).is_file() for digest in (oldest, middle, newest, wanted))

    def test_gc_removes_least_recently_used(self, tmp_path):
        setup = Setup(tmp_path, max_size=2000)
        oldest = setup.put(1, last_used=100.0)
        newest = setup.put(2, last_used=300.0)
        wanted = setup.put(3, last_used=50.0)
        setup.want([wanted])

        result = setup.herbsync("gc")

        assert result.returncode == 0, result.stderr
        assert "removed 1 file, freeing 1 kB" in result.stdout
        assert not setup.store.path_for(oldest).exists()
        assert setup.store.path_for(newest).is_file()
        assert setup.store.path_for(wanted).is_file()
        with setup.state() as state:
            assert state.present(oldest) is None

    def test_no_max_size_says_so(self, tmp_path):
        setup = Setup(tmp_path)
        digest = setup.put(1)

        result = setup.herbsync("gc")

        assert result.returncode == 0
        assert "no [store] max_size is set" in result.stdout
        assert setup.store.path_for(digest).is_file()

    def test_over_capacity_exits_one(self, tmp_path):
        setup = Setup(tmp_path, max_size="1.5 kB")
        wanted = [setup.put(1), setup.put(2)]
        setup.want(wanted)

        result = setup.herbsync("gc")

        assert result.returncode == 1
        assert "wanted images alone take 2 kB, more than max_size 1.5 kB" in result.stderr
        assert all(setup.store.path_for(digest).is_file() for digest in wanted)

    def test_invalid_max_size_named(self, tmp_path):
        setup = Setup(tmp_path, max_size="lots")
        setup.put(1)

        result = setup.herbsync("gc", "--dry-run")

        assert result.returncode == 64
        assert "store.max_size = 'lots' is invalid" in result.stderr

    def test_without_state_database_refused(self, tmp_path):
        """Without the state, gc cannot tell wanted images apart, so it removes nothing."""
        setup = Setup(tmp_path, max_size=0)
        content = b"plain image"
        digest = hashlib.sha256(content).hexdigest()
        setup.store.place(digest, "jpg", [content], "test")

        result = setup.herbsync("gc")

        assert result.returncode == 64
        assert "no state database" in result.stderr
        assert setup.store.path_for(digest).is_file()


class TestChecks:
    """The hashing primitives shared by verify and the scrub."""

    def stored(self, tmp_path: Path, content: bytes) -> StoredFile:
        store = Store(tmp_path / "store")
        digest = hashlib.sha256(content).hexdigest()
        return store.place(digest, "jpg", [content], "test")

    def test_check_file_outcomes(self, tmp_path):
        good = self.stored(tmp_path, b"x" * 3_000_000)
        bad = self.stored(tmp_path, b"y")
        bad.path.write_bytes(b"z")
        gone = StoredFile(tmp_path / "nowhere.jpg", "f" * 64, "jpg", 1)

        outcomes = [check_file(good), check_file(bad), check_file(gone)]

        assert [outcome.status for outcome in outcomes] == [Status.GOOD, Status.CORRUPT, Status.MISSING]
        assert outcomes[0].size == 3_000_000
        assert outcomes[1].actual == hashlib.sha256(b"z").hexdigest()

    def test_check_file_stopped(self, tmp_path):
        stored = self.stored(tmp_path, b"x" * 10)
        stop = threading.Event()
        stop.set()

        assert check_file(stored, stop).status is Status.STOPPED

    def test_check_many_yields_every_file(self, tmp_path):
        files = [self.stored(tmp_path, bytes([index]) * 100) for index in range(20)]

        checks = list(check_many(files, 2, threading.Event()))

        assert sorted(check.target.digest for check in checks) == sorted(stored.digest for stored in files)
        assert all(check.status is Status.GOOD for check in checks)

    def test_directory_at_layout_path_unreadable(self, tmp_path):
        folder = tmp_path / "store" / "ab" / "cd" / f"abcd{'0' * 60}.jpg"
        folder.mkdir(parents=True)
        target = StoredFile(folder, f"abcd{'0' * 60}", "jpg", 0)

        check = check_file(target)

        assert check.status is Status.UNREADABLE
        assert check.error == "Is a directory"
