"""Shared fixtures: one real SeaweedFS server per session, a bucket per test, a daemon."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy

from herbsync.testing.seaweed import SeaweedServer


REPOSITORY = Path(__file__).resolve().parent.parent
SPECIMENS = REPOSITORY / "samples" / "specimens"
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}

_bucket_numbers = itertools.count(1)


def wait_until(condition: Callable[[], Any], what: str, seconds: float = 60.0) -> Any:
    """Poll ``condition`` until it returns a true value; fail naming ``what`` if it never does.

    The deadline only keeps a broken build from hanging; no test asserts on time.
    """
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def specimens() -> list[Path]:
    """The real specimen images, each named by its SHA-256."""
    return sorted(SPECIMENS.glob("*.jpg"))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real SeaweedFS S3 server on 127.0.0.1, shared by the whole session."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give boto3's credential chain keys for the open-mode server, and no ambient config."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in TEST_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    os.umask(0o022)


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the test keys from this process and from daemons started after it."""
    for name in list(TEST_KEYS):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delitem(TEST_KEYS, name)


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS server."""
    with FaultProxy("127.0.0.1", seaweed.s3_port) as running:
        yield running


@pytest.fixture
def bucket(seaweed: SeaweedServer) -> Iterator[str]:
    """A new, empty bucket with a dotted name, like the production one; deleted after the test."""
    name = f"herbsync.test-{next(_bucket_numbers)}-{os.getpid()}"
    seaweed.create_bucket(name)
    yield name
    seaweed.delete_bucket(name)


@pytest.fixture
def s3_table(seaweed: SeaweedServer, bucket: str) -> dict[str, Any]:
    """A ``[source]`` table for the test bucket."""
    return {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": seaweed.endpoint_url}


def toml_value(value: Any) -> str:
    """Render a Python value as TOML (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as TOML")


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a TOML configuration file from a dict of sections."""
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class DaemonProcess:
    """A ``herbsync run`` process started by a test, stopped by its PID."""

    def __init__(
        self, root: Path, source: dict[str, Any], environment: dict[str, str] | None = None, **sections: dict[str, Any]
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = root / "store"
        self.manifests = root / "manifests"
        self.state = root / "state"
        # One log per process, so a restarted daemon's events stand apart.
        self.log_path = root / f"daemon-{len(list(root.glob('daemon-*.log')))}.log"
        config: dict[str, dict[str, Any]] = {
            "store": {"path": str(self.store)},
            "manifests": {"path": str(self.manifests)},
            "state": {"path": str(self.state)},
            "transfers": {"workers": 4, "backoff": 0.05, "first_retry": 0.5},
            "logging": {"format": "json"},
        }
        # A test's section adds to these defaults rather than replacing them.
        for name, table in sections.items():
            config[name] = {**config.get(name, {}), **table}
        config["source"] = source
        self.config = write_config(root / "herbsync.toml", config)
        self.process: subprocess.Popen[bytes] | None = None
        self.environment = {**os.environ, **TEST_KEYS, **(environment or {})}

    def start(self) -> DaemonProcess:
        """Start the daemon and wait until it logs that it started."""
        environment = self.environment
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "herbsync.cli", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        wait_until(lambda: "daemon.started" in self.log() or self.process.poll() is not None, "daemon start")
        assert self.process.poll() is None, self.log()
        return self

    def stop(self) -> int:
        """Send SIGTERM and return the exit status."""
        if self.process is None:
            return 0
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"daemon did not stop on SIGTERM:\n{self.log()}")
        return int(process.returncode)

    def send(self, signum: int) -> None:
        """Send a signal to the running daemon."""
        assert self.process is not None
        self.process.send_signal(signum)

    def log(self) -> str:
        """Return everything the daemon printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        """Return the logged events called ``name``, as dicts, in order."""
        found = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found

    def drop_manifest(self, name: str, text: str) -> Path:
        """Write a manifest beside the folder, then rename it in, as a pipeline would."""
        self.manifests.mkdir(parents=True, exist_ok=True)
        staging = self.manifests / f".{name}.tmp"
        staging.write_text(text, encoding="utf-8")
        target = self.manifests / name
        staging.rename(target)
        return target

    def stored(self, digest: str, extension: str = "jpg") -> Path:
        """Return the store path of an image."""
        return self.store / digest[0:2] / digest[2:4] / f"{digest}.{extension}"

    def status(self, name: str) -> dict[str, Any] | None:
        """Return a manifest's status report, or None before it is written."""
        path = self.state / "status" / f"{name}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def wait_settled(self, name: str, entries: int | None = None) -> dict[str, Any]:
        """Wait until every entry of a manifest is present or has failed."""

        def settled() -> dict[str, Any] | None:
            report = self.status(name)
            if report is None or not report["settled"]:
                return None
            if entries is not None and report["entries"] != entries:
                return None
            return report

        return wait_until(settled, f"manifest {name} to settle; log:\n{self.log()[-4000:]}", 120)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start ``herbsync run`` processes; every one is stopped after the test."""
    started: list[DaemonProcess] = []

    def start(
        source: dict[str, Any],
        root: Path | None = None,
        environment: dict[str, str] | None = None,
        **sections: dict[str, Any],
    ) -> DaemonProcess:
        daemon = DaemonProcess(root or tmp_path / f"daemon{len(started)}", source, environment, **sections)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()
