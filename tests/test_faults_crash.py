"""Crash safety and the single-instance lock, end to end.

``kill -9`` may stop the daemon at any instruction. Whatever it was doing,
no final store path may hold a partial or wrong file afterwards, and a
restart must converge to the full set.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TEST_KEYS, DaemonProcess, wait_until, write_config
from storecheck import stored_digests, temporary_files, unexpected_store_files

from herbsync.testing.seaweed import SeaweedServer, image_key


CRASH_OBJECTS = 200
CRASH_CYCLES = 20
# A few larger objects keep a temporary file open long enough for some
# kills to land in the middle of a write.
LARGE_OBJECTS = 4
LARGE_SIZE = 4 * 1024 * 1024
SMALL_SIZES = (1, 64 * 1024)


def _random_objects(rng: random.Random) -> list[bytes]:
    bodies = [rng.randbytes(LARGE_SIZE) for _ in range(LARGE_OBJECTS)]
    bodies += [rng.randbytes(rng.randint(*SMALL_SIZES)) for _ in range(CRASH_OBJECTS - LARGE_OBJECTS)]
    return bodies


def _upload(seaweed: SeaweedServer, bucket: str, bodies: list[bytes]) -> list[str]:
    """Put each body under the key of its real SHA-256; return the digests."""
    client = seaweed.client()

    def put(body: bytes) -> str:
        digest = hashlib.sha256(body).hexdigest()
        client.put_object(Bucket=bucket, Key=image_key(digest), Body=body, ChecksumAlgorithm="SHA256")
        return digest

    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(put, bodies))
    client.close()
    return digests


def _launch(daemon: DaemonProcess) -> None:
    """Start ``herbsync run`` without waiting for it, so a kill can land during start-up."""
    with open(daemon.log_path, "ab") as log:
        daemon.process = subprocess.Popen(
            [sys.executable, "-m", "herbsync.cli", "run", "--config", str(daemon.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **TEST_KEYS},
        )


def _wait_for_kill_point(daemon: DaemonProcess, rng: random.Random, fetch_target: int, stale: set[str]) -> str:
    """Wait for a randomly chosen moment to kill the daemon; return what it was.

    Every moment comes before the daemon could finish the whole set, so
    each of the cycles kills a daemon with work left to do.
    """
    mode = rng.choice(("start-up", "after fetches", "mid-write"))
    if fetch_target == 0:
        mode = "idle"
    give_up_at = time.monotonic() + (rng.uniform(0.0, 1.5) if mode in ("start-up", "idle") else 30)
    fetches = 1 if mode == "start-up" else fetch_target

    while time.monotonic() < give_up_at and daemon.process.poll() is None:
        if mode == "mid-write" and temporary_files(daemon.store) - stale:
            break
        if daemon.log().count('"image.fetched"') >= fetches and mode != "idle":
            break
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.01))
    return mode


def _check_state_database(state: Path) -> str:
    """Return SQLite's integrity verdict on the state database, or a note when a kill came before it."""
    database = state / "herbsync.db"
    if not database.exists():
        return "not created yet"
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()


def test_kill_9_never_leaves_bad_file(seaweed, bucket, s3_table, start_daemon, tmp_path):
    """Twenty kills at random points leave only verified files, and a restart completes the set."""
    seed = int(os.environ.get("HERBSYNC_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    replay = f"replay with HERBSYNC_CRASH_SEED={seed}"
    rng = random.Random(seed)
    digests = _upload(seaweed, bucket, _random_objects(rng))
    root = tmp_path / "crashing"
    first = DaemonProcess(root, s3_table)
    first.drop_manifest("crash.txt", "\n".join(digests) + "\n")
    leftovers: set[str] = set()

    for cycle in range(CRASH_CYCLES):
        daemon = first if cycle == 0 else DaemonProcess(root, s3_table)
        remaining = len(set(digests) - stored_digests(daemon.store))
        fetch_target = rng.randint(min(1, remaining), remaining // (CRASH_CYCLES - cycle) + min(1, remaining))
        _launch(daemon)
        try:
            mode = _wait_for_kill_point(daemon, rng, fetch_target, leftovers)
            started = "daemon.started" in daemon.log()
        finally:
            daemon.process.kill()
            daemon.process.wait()
        where = f"{replay}; cycle {cycle}, killed at {mode}"

        assert unexpected_store_files(daemon.store) == [], where
        assert _check_state_database(daemon.state) in ("ok", "not created yet"), where
        if started:
            assert not leftovers & temporary_files(daemon.store), f"{where}: stale temporary files kept"
        leftovers = temporary_files(daemon.store)

    final = start_daemon(s3_table, root=root)
    report = wait_until(
        lambda: (final.status("crash.txt") or {}).get("complete"),
        f"the full set after the kills ({replay}); log:\n{final.log()[-3000:]}",
        120,
    )

    assert report is True, replay
    assert stored_digests(final.store) == set(digests), replay
    assert unexpected_store_files(final.store) == [], replay
    assert not leftovers & temporary_files(final.store), f"{replay}: stale temporary files kept"
    events = [json.loads(line) for line in final.log().splitlines() if line.startswith("{")]
    assert not [event for event in events if event.get("event") == "image.failed"], replay


@pytest.mark.parametrize("shared", ["same configuration", "same store only"])
def test_second_daemon_on_store_rejected(shared, s3_table, start_daemon, tmp_path):
    """A second ``herbsync run`` on a store in use exits at once, naming the running daemon's PID."""
    first = start_daemon(s3_table, root=tmp_path / "first")
    if shared == "same configuration":
        config = first.config
    else:
        config = write_config(
            tmp_path / "second.toml",
            {
                "store": {"path": str(first.store)},
                "manifests": {"path": str(tmp_path / "second" / "manifests")},
                "state": {"path": str(tmp_path / "second" / "state")},
                "logging": {"format": "json"},
                "source": s3_table,
            },
        )

    second = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
        timeout=60,
        check=False,
    )

    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    assert f"PID {first.process.pid}" in output
    assert str(first.store) in output
    assert "Traceback" not in output
    assert first.process.poll() is None
    assert (first.store / ".herbsync.lock").read_text(encoding="ascii").strip() == str(first.process.pid)


def test_restart_after_kill_takes_the_lock(s3_table, start_daemon, tmp_path):
    """The lock of a daemon killed with SIGKILL does not block the next start."""
    root = tmp_path / "relock"
    first = start_daemon(s3_table, root=root)
    first.process.kill()
    first.process.wait()

    second = start_daemon(s3_table, root=root)

    assert second.process.poll() is None
    assert (second.store / ".herbsync.lock").read_text(encoding="ascii").strip() == str(second.process.pid)
