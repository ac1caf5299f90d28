"""herbsync as a systemd service: unit file, notifications, reload, lock, shutdown, metrics."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import REPOSITORY, TEST_KEYS, wait_until, write_config
from faultproxy import FaultProxy

from herbsync.digest import calculate_sha256


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unit_passes_systemd_analyze(tmp_path):
    """systemd-analyze verify accepts the unit, with ExecStart pointing at this install."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install Debian's systemd package"
    herbsync = Path(sys.executable).parent / "herbsync"
    unit = (REPOSITORY / "systemd" / "herbsync.service").read_text()
    assert "ExecStart=/opt/herbsync/bin/herbsync run" in unit
    copy = tmp_path / "herbsync.service"
    copy.write_text(unit.replace("/opt/herbsync/bin/herbsync", str(herbsync)))

    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert "Type=notify" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "AWS_SECRET_ACCESS_KEY=" not in unit


class TestNotify:
    """The sd_notify messages systemd relies on."""

    def test_ready_status_reloading_stopping_in_order(self, seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
        """READY, STATUS, RELOADING and STOPPING arrive in that order, with watchdog pings."""
        digests = seaweed.upload_images(bucket, specimens[:2])
        address = str(tmp_path / "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        listener.settimeout(30)
        daemon = start_daemon(s3_table, environment={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        messages = []

        def receive_until(fragment: str) -> None:
            while not any(fragment in message for message in messages):
                messages.append(listener.recv(4096).decode())

        receive_until("READY=1")
        daemon.drop_manifest("n.txt", "\n".join(digests))
        daemon.wait_settled("n.txt", 2)
        receive_until("STATUS=2 wanted, 2 present, 0 pending, 0 failed")
        receive_until("WATCHDOG=1")
        daemon.send(signal.SIGHUP)
        receive_until("RELOADING=1")
        receive_until("READY=1\nSTATUS=2 wanted")
        assert daemon.stop() == 0
        receive_until("STOPPING=1")
        listener.close()

        kinds = [message.split("=", 1)[0] for message in messages if not message.startswith("WATCHDOG")]
        first_ready = kinds.index("READY")
        reloading = kinds.index("RELOADING")
        assert first_ready < reloading
        assert "READY" in kinds[reloading + 1 :]
        assert kinds[-1] == "STOPPING"
        assert any("present" in message for message in messages if message.startswith("STATUS="))


class TestReload:
    """SIGHUP re-reads the configuration."""

    def test_broken_config_keeps_old(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """A reload with an invalid file logs the error and keeps serving with the old settings."""
        digests = seaweed.upload_images(bucket, specimens[:2])
        daemon = start_daemon(s3_table)
        daemon.config.write_text("[transfers]\nworkers = 0\n")

        daemon.send(signal.SIGHUP)
        failed = wait_until(lambda: daemon.events("config.reload_failed"), "the reload to be rejected")
        daemon.drop_manifest("after.txt", "\n".join(digests))
        report = daemon.wait_settled("after.txt", 2)

        assert "transfers.workers" in failed[0]["error"]
        assert report["complete"] is True

    def test_valid_config_applies(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """A reload with a valid file switches to the new source."""
        digests = seaweed.upload_images(bucket, specimens[:1])
        daemon = start_daemon({**s3_table, "bucket": "no-such-bucket-yet"})
        config_text = daemon.config.read_text().replace('"no-such-bucket-yet"', f'"{bucket}"')
        daemon.config.write_text(config_text)

        daemon.send(signal.SIGHUP)
        wait_until(lambda: daemon.events("config.reloaded"), "the reload")
        daemon.drop_manifest("r.txt", digests[0])

        assert daemon.wait_settled("r.txt", 1)["complete"] is True


def test_second_daemon_refused(s3_table, start_daemon, tmp_path):
    """A second daemon on the same store exits at once naming the first one's PID."""
    first = start_daemon(s3_table)
    config = write_config(
        tmp_path / "second.toml",
        {
            "store": {"path": str(first.store)},
            "manifests": {"path": str(tmp_path / "m2")},
            "state": {"path": str(tmp_path / "s2")},
            "source": s3_table,
        },
    )

    result = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
    )

    assert result.returncode == 1
    assert f"PID {first.process.pid}" in result.stderr


class TestShutdown:
    """SIGTERM during transfers."""

    def _proxied(self, seaweed, s3_table):
        proxy = FaultProxy("127.0.0.1", seaweed.s3_port).start()
        return proxy, {**s3_table, "endpoint_url": proxy.url}

    def test_sigterm_mid_transfer_within_grace(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """A transfer running at SIGTERM finishes within the grace period; exit status 0."""
        digests = seaweed.upload_images(bucket, specimens[:1])
        proxy, source = self._proxied(seaweed, s3_table)
        try:
            proxy.stall(2.0, count=1, method="GET")
            daemon = start_daemon(source)
            daemon.drop_manifest("slow.txt", digests[0])
            wait_until(lambda: proxy.pending() == 0, "the stalled GET to start")

            status = daemon.stop()
        finally:
            proxy.stop()

        assert status == 0
        assert calculate_sha256(daemon.stored(digests[0])) == digests[0]
        assert not list((daemon.store / ".tmp").iterdir())

    def test_sigterm_aborts_after_grace(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """A transfer still running after the grace period is aborted: no file, no temporary, exit 0."""
        digests = seaweed.upload_images(bucket, specimens[:1])
        proxy, source = self._proxied(seaweed, s3_table)
        try:
            proxy.stall(4.0, count=1, method="GET")
            daemon = start_daemon(source, transfers={"workers": 2, "shutdown_grace": 0.2})
            daemon.drop_manifest("slow.txt", digests[0])
            wait_until(lambda: proxy.pending() == 0, "the stalled GET to start")

            status = daemon.stop()
        finally:
            proxy.stop()

        assert status == 0
        assert not daemon.stored(digests[0]).exists()
        temporary = daemon.store / ".tmp"
        assert not temporary.exists() or not list(temporary.iterdir())
        assert daemon.events("fetch.aborting")


def test_metrics_after_mirror(seaweed, bucket, s3_table, specimens, start_daemon):
    """The metrics endpoint serves image gauges and fetch counters after a mirror."""
    digests = seaweed.upload_images(bucket, specimens[:3])
    port = _free_port()
    daemon = start_daemon(s3_table, metrics={"address": f"127.0.0.1:{port}"})
    daemon.drop_manifest("m.txt", "\n".join(digests) + "\n" + "d" * 64)
    daemon.wait_settled("m.txt", 4)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    text = wait_until(lambda: 'herbsync_images{state="present"} 3.0' in scrape() and scrape(), "the gauges")

    assert "herbsync_fetched_objects_total 3.0" in text
    assert 'herbsync_images{state="failed"} 1.0' in text
    assert 'herbsync_transfer_errors_total{kind="not_found"} 1.0' in text
    size = sum(path.stat().st_size for path in specimens[:3])
    assert f"herbsync_fetched_bytes_total {float(size)}" in text


@pytest.mark.parametrize("value", ["9108", "localhost:http", "127.0.0.1:70000"])
def test_bad_metrics_address_rejected(tmp_path, value):
    """An invalid metrics address is rejected at start naming the key."""
    config = write_config(tmp_path / "m.toml", {"metrics": {"address": value}})

    result = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "run", "--config", str(config)], capture_output=True, text=True
    )

    assert result.returncode != 0
    assert "metrics.address" in result.stderr


def test_config_check_masks_and_validates(tmp_path):
    """config check prints the effective settings of a valid file and names the key of a bad one."""
    good = write_config(tmp_path / "good.toml", {"store": {"path": "images"}, "transfers": {"workers": 4}})
    bad = write_config(tmp_path / "bad.toml", {"transfers": {"workers": -1}})

    valid = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "config", "check", str(good)], capture_output=True, text=True
    )
    invalid = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "config", "check", str(bad)], capture_output=True, text=True
    )

    assert valid.returncode == 0
    assert f'"store_path": "{tmp_path / "images"}"' in valid.stdout
    assert '"workers": 4' in valid.stdout
    assert invalid.returncode != 0
    assert "transfers.workers = -1" in invalid.stderr


def test_secrets_masked():
    """Values under secret-looking keys are never printed."""
    from herbsync.cli import _masked

    masked = _masked({"source": {"bucket": "b", "aws_secret_access_key": "s3cr3t"}})

    assert masked == {"source": {"bucket": "b", "aws_secret_access_key": "********"}}


def test_example_config_is_valid():
    """The example configuration shipped for /etc/herbsync passes config check."""
    example = REPOSITORY / "config" / "herbsync.example.toml"

    result = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "config", "check", str(example)], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr


def test_max_retry_below_first_retry_rejected(tmp_path):
    """A retry cap below the first retry delay is rejected naming both keys."""
    config = write_config(tmp_path / "r.toml", {"transfers": {"first_retry": 60, "max_retry": 10}})

    result = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "config", "check", str(config)], capture_output=True, text=True
    )

    assert result.returncode != 0
    assert "transfers.max_retry = 10" in result.stderr
    assert "transfers.first_retry = 60" in result.stderr
