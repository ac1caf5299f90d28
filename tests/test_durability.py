"""Background syncing of placed files, and the check of unsynced files after a crash.

A test cannot cut the power, so the crash tests build what a power cut
leaves behind. That is the marker of a writer that died, and a stored file
whose bytes never reached the disk (here, wrong bytes at a layout path).
"""

from __future__ import annotations

import errno
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_until, write_config
from storecheck import unexpected_store_files

import herbsync.durability
import herbsync.store
from herbsync.durability import CLOCK_MARGIN_NS, UNSYNCED_FOLDER, WriteBack, recover
from herbsync.config import load_settings
from herbsync.errors import StoreError
from herbsync.oneshot import fetch_once
from herbsync.store import Store


def _blob(number: int) -> tuple[str, bytes]:
    data = f"specimen {number} ".encode() * 700
    return hashlib.sha256(data).hexdigest(), data


def _markers(store: Store) -> list[Path]:
    folder = store.root / UNSYNCED_FOLDER
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _marker_time(marker: Path) -> int:
    return int(marker.name.rpartition(".")[2])


def _place(store: Store, write_back: WriteBack, blobs: list[tuple[str, bytes]]) -> list[Path]:
    staged = [store.stage(digest, "jpg", [data], "test") for digest, data in blobs]
    results = store.commit(staged, sync=False)
    paths = [result.stored.path for result in results if result.stored is not None]
    write_back.placed(paths)
    return paths


def _abandoned_marker(store: Store, synced_before_ns: int) -> Path:
    """Leave the marker of a writer that died: its name and time, and no lock held."""
    folder = store.root / UNSYNCED_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{'0' * 32}.{synced_before_ns}"
    marker.touch()
    return marker


def _write_unsynced(store: Store, digest: str, data: bytes) -> Path:
    """Put bytes at ``digest``'s layout path, as a crash can leave a file whose data was lost."""
    path = store.path_for(digest, "jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_write_back_marker_lifecycle(tmp_path):
    """The marker exists while files are placed, moves forward with each sync, and goes at close."""
    store = Store(tmp_path)
    write_back = WriteBack(store)
    write_back.start()
    (first,) = _markers(store)
    before_place = time.time_ns()

    paths = _place(store, write_back, [_blob(number) for number in range(3)])
    synced = write_back.flush()

    (advanced,) = _markers(store)
    assert synced is True
    assert _marker_time(advanced) >= before_place
    assert _marker_time(advanced) > _marker_time(first)
    assert all(path.is_file() for path in paths)
    write_back.close()
    assert _markers(store) == []


def test_write_back_without_syncfs(tmp_path, monkeypatch):
    """Where syncfs is missing, each placed file and folder is fsynced, and the marker still advances."""
    monkeypatch.setattr(herbsync.store, "_syncfs", None)
    store = Store(tmp_path)
    write_back = WriteBack(store)
    write_back.start()
    (first,) = _markers(store)

    _place(store, write_back, [_blob(number) for number in range(3)])

    assert write_back.flush() is True
    (advanced,) = _markers(store)
    assert _marker_time(advanced) > _marker_time(first)
    write_back.close()


def test_write_back_skips_removed_file(tmp_path, monkeypatch):
    """Without syncfs, a file removed before its sync (evicted, say) does not fail the sync."""
    monkeypatch.setattr(herbsync.store, "_syncfs", None)
    store = Store(tmp_path)
    write_back = WriteBack(store)
    write_back.start()

    staged = [store.stage(digest, "jpg", [data], "test") for digest, data in (_blob(1), _blob(2))]
    paths = [result.stored.path for result in store.commit(staged, sync=False) if result.stored is not None]
    paths[0].unlink()
    write_back.placed(paths)

    assert write_back.flush() is True
    assert write_back.close() is True
    assert _markers(store) == []


def test_failed_sync_keeps_marker(tmp_path, monkeypatch):
    """A sync that fails leaves the marker at its old time, so a restart checks those files."""
    store = Store(tmp_path)
    write_back = WriteBack(store)
    write_back.start()
    (first,) = _markers(store)

    def failing_sync(path: Path) -> bool:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(herbsync.durability, "sync_filesystem", failing_sync)
    _place(store, write_back, [_blob(1)])

    assert write_back.flush() is False
    write_back.close()
    assert _markers(store) == [first]


def test_recover_quarantines_unsynced_file(tmp_path):
    """After a writer died, a file placed since its last sync that hashes wrong is quarantined."""
    store = Store(tmp_path)
    marker = _abandoned_marker(store, time.time_ns())
    lost_digest, lost_data = _blob(1)
    intact_digest, intact_data = _blob(2)
    lost = _write_unsynced(store, lost_digest, b"\0" * len(lost_data))
    intact = _write_unsynced(store, intact_digest, intact_data)

    quarantined = recover(store)

    assert [path.name.endswith(lost.name) for path in quarantined] == [True]
    assert not lost.exists()
    assert intact.read_bytes() == intact_data
    assert not marker.exists()
    assert unexpected_store_files(store.root) == []


def test_recover_trusts_files_synced_before_marker(tmp_path):
    """Files older than the marker's time were synced, so they are not hashed again."""
    store = Store(tmp_path)
    digest, data = _blob(1)
    older = _write_unsynced(store, digest, b"other bytes")
    marker = _abandoned_marker(store, time.time_ns() + 2 * CLOCK_MARGIN_NS)

    quarantined = recover(store)

    assert quarantined == []
    assert older.exists()
    assert not marker.exists()


def test_recover_reports_progress(tmp_path, monkeypatch):
    """The walk after a crash calls its progress callback as it goes, for systemd's start timeout."""
    monkeypatch.setattr(herbsync.durability, "PROGRESS_EVERY", 2)
    store = Store(tmp_path)
    for number in range(5):
        digest, data = _blob(number)
        _write_unsynced(store, digest, data)
    _abandoned_marker(store, time.time_ns())
    calls: list[tuple[int, int]] = []

    recover(store, progress=lambda scanned, hashed: calls.append((scanned, hashed)))

    assert [scanned for scanned, _ in calls] == [2, 4]
    assert all(hashed <= scanned for scanned, hashed in calls)


def test_recover_skips_running_writer(tmp_path):
    """A marker whose writer still runs is locked, so its files are left to that writer."""
    store = Store(tmp_path)
    write_back = WriteBack(store)
    write_back.start()
    digest, data = _blob(1)
    placed = _write_unsynced(store, digest, b"not yet the right bytes")

    quarantined = recover(store)

    assert quarantined == []
    assert placed.exists()
    assert len(_markers(store)) == 1
    write_back.close()


def test_recover_after_killed_writer(tmp_path):
    """The marker of a process that was killed is taken over: its lock died with the process."""
    store = Store(tmp_path)
    script = (
        "import os, sys\n"
        "from herbsync.durability import WriteBack\n"
        "from herbsync.store import Store\n"
        "WriteBack(Store(sys.argv[1])).start()\n"
        "os.kill(os.getpid(), 9)\n"
    )
    finished = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert finished.returncode == -9
    assert len(_markers(store)) == 1
    digest, data = _blob(1)
    lost = _write_unsynced(store, digest, b"\0" * len(data))

    quarantined = recover(store)

    assert len(quarantined) == 1
    assert not lost.exists()
    assert _markers(store) == []


def test_recover_reports_unreadable_folder(tmp_path, monkeypatch):
    """A marker folder that cannot be read raises an error that names it."""
    store = Store(tmp_path)
    folder = store.root / UNSYNCED_FOLDER
    folder.mkdir()

    def denied(path: object) -> list[str]:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(herbsync.durability.os, "listdir", denied)

    with pytest.raises(StoreError, match=str(folder)):
        recover(store)


def test_daemon_refetches_file_lost_in_crash(seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
    """A daemon started after a crash quarantines an unsynced wrong file before READY and fetches it again."""
    digests = seaweed.upload_images(bucket, specimens[:3])
    root = tmp_path / "after-crash"
    first = start_daemon(s3_table, root=root)
    first.drop_manifest("batch.txt", "\n".join(digests) + "\n")
    assert first.wait_settled("batch.txt", 3)["complete"] is True
    assert first.stop() == 0
    assert _markers(Store(first.store)) == []

    # What a power cut right after placing the first image could leave.
    store = Store(first.store)
    lost = store.path_for(digests[0], "jpg")
    size = lost.stat().st_size
    lost.chmod(0o644)
    lost.write_bytes(b"\0" * size)
    _abandoned_marker(store, time.time_ns())

    second = start_daemon(s3_table, root=root)

    recovered = second.events("store.unsynced_corrupt")
    assert [event["digest"] for event in recovered] == [digests[0]]
    wait_until(
        lambda: lost.is_file() and hashlib.sha256(lost.read_bytes()).hexdigest() == digests[0],
        f"the lost image fetched again; log:\n{second.log()[-3000:]}",
    )
    assert unexpected_store_files(store.root) == []
    assert second.stop() == 0
    assert _markers(store) == []


def _fetch_config(tmp_path: Path, s3_table: dict[str, object]) -> Path:
    return write_config(
        tmp_path / "herbsync.toml",
        {
            "store": {"path": str(tmp_path / "store")},
            "manifests": {"path": str(tmp_path / "manifests")},
            "state": {"path": str(tmp_path / "state")},
            "source": s3_table,
        },
    )


def test_fetch_reports_failed_sync(seaweed, bucket, specimens, tmp_path, s3_table, monkeypatch):
    """A fetch whose final sync fails reports it and keeps its marker for the next start."""
    digests = seaweed.upload_images(bucket, specimens[:2])
    settings = load_settings(_fetch_config(tmp_path, s3_table))

    def failing_sync(path: Path) -> bool:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(herbsync.durability, "sync_filesystem", failing_sync)
    report = fetch_once(settings, digests, progress=False)

    assert report.fetched == 2
    assert report.synced is False
    assert len(_markers(Store(settings.store_path))) == 1


def test_fetch_leaves_no_marker(seaweed, bucket, specimens, tmp_path, s3_table):
    """``herbsync fetch`` exits with every file synced and its marker removed."""
    digests = seaweed.upload_images(bucket, specimens[:2])
    store = tmp_path / "store"
    config = _fetch_config(tmp_path, s3_table)

    finished = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "fetch", "--config", str(config), "--no-progress", *digests],
        capture_output=True,
        text=True,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    assert unexpected_store_files(store) == []
    assert _markers(Store(store)) == []
