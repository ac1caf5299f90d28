"""A full disk, read-only folders and unreadable manifests, end to end.

These tests run as root and mount file systems: a 4 MiB tmpfs for the full
disk, and bind mounts remounted read-only for the folders, because root
ignores permission bits. The unreadable manifest is read by a daemon that
``setpriv`` starts without the capabilities that let root bypass them.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_KEYS, DaemonProcess, wait_until
from storecheck import stored_digests, temporary_files, unexpected_store_files

from herbsync.testing.seaweed import SeaweedServer, image_key


MIB = 1024 * 1024

# Capabilities that let root read and write files whatever their mode bits.
DAC_CAPABILITIES = "-dac_override,-dac_read_search"


def _upload_random(seaweed: SeaweedServer, bucket: str, count: int, size: int) -> list[str]:
    """Put ``count`` random objects of ``size`` bytes under their real SHA-256; return the digests."""
    rng = random.Random(count * size)
    client = seaweed.client()
    digests = []
    for _ in range(count):
        body = rng.randbytes(size)
        digest = hashlib.sha256(body).hexdigest()
        client.put_object(Bucket=bucket, Key=image_key(digest), Body=body, ChecksumAlgorithm="SHA256")
        digests.append(digest)
    client.close()
    return digests


def _status_with(daemon: Any, name: str, predicate: Callable[[dict[str, Any]], bool]) -> Callable[[], Any]:
    def check() -> dict[str, Any] | None:
        report = daemon.status(name)
        return report if report is not None and predicate(report) else None

    return check


def _run_herbsync(config: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    """Run ``herbsync run`` in the foreground, expecting it to exit by itself."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "herbsync.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
        timeout=60,
        check=False,
    )


# Mounts ---------------------------------------------------------------------


def _mount(*arguments: str) -> None:
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"mount {' '.join(arguments)} failed: {result.stderr.strip()}. "
            "These tests must run as root on a system that allows tmpfs and bind mounts"
        )


def _unmount(folder: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def _set_read_only(folder: Path, read_only: bool) -> None:
    _mount("-o", f"remount,bind,{'ro' if read_only else 'rw'}", str(folder))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted after the test."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder))
    yield folder
    _unmount(folder)


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Bind-mount folders onto themselves so they can be remounted read-only; unmount after."""
    mounted: list[Path] = []

    def bind(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        _mount("--bind", str(folder), str(folder))
        mounted.append(folder)
        return folder

    yield bind
    for folder in reversed(mounted):
        _unmount(folder)


# Full disk ------------------------------------------------------------------


def test_full_disk_reported_then_resumed(small_disk, seaweed, bucket, s3_table, start_daemon, tmp_path):
    """On a full store the daemon reports it, keeps its files, leaks no partial one and resumes once freed."""
    ballast = small_disk / "ballast"
    ballast.write_bytes(os.urandom(2 * MIB))
    digests = _upload_random(seaweed, bucket, 8, 384 * 1024)
    store = small_disk / "store"
    daemon = start_daemon(s3_table, root=tmp_path / "daemon", store={"path": str(store)})

    daemon.drop_manifest("big.txt", "\n".join(digests))
    report = wait_until(
        _status_with(daemon, "big.txt", lambda report: report["failed"] > 0),
        f"the full disk to show in status; log:\n{daemon.log()[-3000:]}",
    )

    assert {failure["kind"] for failure in report["failures"]} == {"store_full"}
    assert all("no space left" in failure["reason"] for failure in report["failures"])
    assert all(str(store) in failure["reason"] for failure in report["failures"])
    assert [event["kind"] for event in daemon.events("image.failed")][:1] == ["store_full"]
    assert daemon.events("store.full")
    stored_while_full = stored_digests(store)
    assert 0 < len(stored_while_full) < len(digests)
    assert unexpected_store_files(store) == []

    ballast.unlink()
    report = wait_until(
        _status_with(daemon, "big.txt", lambda report: report["complete"]),
        f"the mirror to resume; log:\n{daemon.log()[-3000:]}",
    )

    assert report["present"] == len(digests)
    assert stored_while_full <= stored_digests(store)
    assert stored_digests(store) == set(digests)
    assert unexpected_store_files(store) == []
    # Temporary names are unique, so a partial file leaked during the full
    # phase would still be here now that every transfer has finished.
    assert temporary_files(store) == set()


# Read-only folders ----------------------------------------------------------


def test_read_only_store_rejected_at_start(s3_table, bind_mount, tmp_path):
    """A store on a read-only mount stops the daemon at start with an error naming the store."""
    daemon = DaemonProcess(tmp_path / "daemon", s3_table)
    bind_mount(daemon.store)
    _set_read_only(daemon.store, True)

    result = _run_herbsync(daemon.config)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(daemon.store) in output
    assert "read-only" in output.lower()
    assert "Traceback" not in output


def test_read_only_state_rejected_at_start(s3_table, bind_mount, tmp_path):
    """A state folder on a read-only mount stops the daemon at start with an error naming it."""
    daemon = DaemonProcess(tmp_path / "daemon", s3_table)
    bind_mount(daemon.state)
    _set_read_only(daemon.state, True)

    result = _run_herbsync(daemon.config)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert str(daemon.state) in output
    assert "read-only" in output.lower()
    assert "Traceback" not in output


@pytest.fixture
def immutable() -> Iterator[Callable[[Path, bool], None]]:
    """Set or clear the immutable attribute (``chattr +i``); every folder is cleared after."""
    changed: list[Path] = []

    def set_immutable(folder: Path, on: bool) -> None:
        command = ["chattr", "+i" if on else "-i", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(f"chattr on {folder} failed: {result.stderr.strip()}. This test needs root on ext4 or XFS")
        changed.append(folder)

    yield set_immutable
    for folder in changed:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_store_turned_unwritable_reported_then_resumed(
    immutable, seaweed, bucket, s3_table, specimens, start_daemon, tmp_path
):
    """A store that stops taking writes fails each image naming the path, then resumes by itself.

    Every write goes through ``<store>/.tmp`` first, so that folder is made
    immutable. A read-only remount of the store cannot stand in here: the
    kernel answers "busy" while the daemon holds its lock file open for
    writing, and a bind mount of ``.tmp`` alone breaks the final rename
    with "Invalid cross-device link".
    """
    digests = seaweed.upload_images(bucket, specimens[:2])
    root = tmp_path / "daemon"
    temporary_folder = root / "store" / ".tmp"
    temporary_folder.mkdir(parents=True)
    daemon = start_daemon(s3_table, root=root)
    immutable(temporary_folder, True)

    daemon.drop_manifest("blocked.txt", "\n".join(digests))
    report = wait_until(
        _status_with(daemon, "blocked.txt", lambda report: report["failed"] == 2),
        f"the unwritable store to show in status; log:\n{daemon.log()[-3000:]}",
    )

    for failure in report["failures"]:
        assert str(temporary_folder) in failure["reason"]
        assert "Operation not permitted" in failure["reason"]
    assert daemon.process.poll() is None

    immutable(temporary_folder, False)
    report = wait_until(
        _status_with(daemon, "blocked.txt", lambda report: report["complete"]),
        f"the mirror to resume; log:\n{daemon.log()[-3000:]}",
    )

    assert stored_digests(daemon.store) == set(digests)
    assert unexpected_store_files(daemon.store) == []


# Unreadable manifest --------------------------------------------------------


@pytest.fixture
def unprivileged_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons as root without the capabilities that bypass permission bits."""
    started: list[DaemonProcess] = []

    def start(source: dict[str, Any]) -> DaemonProcess:
        daemon = DaemonProcess(tmp_path / "unprivileged", source)
        started.append(daemon)
        with open(daemon.log_path, "ab") as log:
            daemon.process = subprocess.Popen(
                [
                    "setpriv",
                    f"--bounding-set={DAC_CAPABILITIES}",
                    sys.executable,
                    "-m",
                    "herbsync.cli",
                    "run",
                    "--config",
                    str(daemon.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **TEST_KEYS},
            )
        wait_until(lambda: "daemon.started" in daemon.log() or daemon.process.poll() is not None, "start")
        assert daemon.process.poll() is None, daemon.log()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def test_unreadable_manifest_reported_others_served(seaweed, bucket, s3_table, specimens, unprivileged_daemon):
    """A manifest the daemon may not read is reported with its path; the readable one is served."""
    digests = seaweed.upload_images(bucket, specimens[:2])
    daemon = unprivileged_daemon(s3_table)
    locked = daemon.manifests / "locked.txt"
    locked.write_text(digests[0] + "\n", encoding="utf-8")
    locked.chmod(0)

    daemon.drop_manifest("open.txt", digests[1])
    daemon.process.send_signal(signal.SIGHUP)
    report = daemon.wait_settled("open.txt", 1)
    unreadable = wait_until(lambda: daemon.events("manifest.unreadable"), "the unreadable manifest's report")

    assert report["complete"] is True
    assert unreadable[0]["path"] == str(locked)
    assert "Permission denied" in unreadable[0]["error"]
    assert daemon.process.poll() is None
    assert not daemon.stored(digests[0]).exists()

    locked.chmod(0o644)
    daemon.process.send_signal(signal.SIGHUP)
    report = daemon.wait_settled("locked.txt", 1)

    assert report["complete"] is True
