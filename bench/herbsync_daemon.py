"""``herbsync run`` as a benchmarked tool: timed from a manifest drop to a complete status report.

The daemon starts and reports ``daemon.started`` before the clock starts, as
it would be running already in production. The clock stops when
``<state>/status/<manifest>.json`` reports ``"complete": true``, which the
daemon writes after the last image is verified and recorded.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.first_file import FirstFileWatcher
from bench.herbsync_setup import HerbsyncPaths, herbsync_command, herbsync_environment, herbsync_version, write_config
from bench.measure import CommandFailed, ServerMeter, Usage, high_water_rss
from bench.tool import Job, Outcome, Tool
from herbsync.config import Settings


MANIFEST_NAME = "bench.txt"
START_TIMEOUT = 60.0
# Only stops a hung run: the largest full set took under 10 s on a 2-core machine.
COMPLETE_TIMEOUT = 900.0
STOP_TIMEOUT = 60.0
STATUS_POLL_SECONDS = 0.005


class DaemonRun:
    """One ``herbsync run`` process started by the benchmark and stopped by its PID."""

    def __init__(self, job: Job, paths: HerbsyncPaths) -> None:
        self.job = job
        self.paths = paths
        command = [*herbsync_command(), "run", "--config", str(paths.config)]
        with open(job.log_path, "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(command)}\n")
        with open(job.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=herbsync_environment(job),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.meter = psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        """Return the daemon's user plus system CPU seconds so far, all threads included."""
        times = self.meter.cpu_times()
        return times.user + times.system

    def wait_started(self) -> None:
        """Wait until the daemon logs ``daemon.started``."""
        deadline = time.monotonic() + START_TIMEOUT
        while "daemon.started" not in self.job.log_path.read_text(encoding="utf-8", errors="replace"):
            self._check_running(deadline, "start")
            time.sleep(0.02)

    def wait_complete(self) -> None:
        """Wait until the status report marks the manifest complete; raise if it settles with failures."""
        status_file = self.paths.status_file(MANIFEST_NAME)
        deadline = time.monotonic() + COMPLETE_TIMEOUT
        while True:
            report = _read_report(status_file)
            if report.get("complete"):
                return
            if report.get("settled") and report.get("entries"):
                msg = f"herbsync settled with {report['failed']} failed images; see {status_file}"
                raise CommandFailed(msg)
            self._check_running(deadline, "completion")
            time.sleep(STATUS_POLL_SECONDS)

    def peak_rss(self) -> int:
        """Return the daemon's peak resident memory so far, in bytes."""
        return high_water_rss(self.process.pid)

    def stop(self) -> None:
        """Send SIGTERM and wait for the exit; raise ``CommandFailed`` on a non-zero status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=STOP_TIMEOUT)
        if status != 0:
            msg = f"herbsync run exited with status {status} after SIGTERM; see {self.job.log_path}"
            raise CommandFailed(msg)

    def kill(self) -> None:
        """End the daemon at once if it is still running (after an error)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def _check_running(self, deadline: float, stage: str) -> None:
        if self.process.poll() is not None:
            msg = f"herbsync run exited with status {self.process.returncode} before {stage}; see {self.job.log_path}"
            raise CommandFailed(msg)
        if time.monotonic() > deadline:
            msg = f"herbsync run timed out waiting for {stage}; see {self.job.log_path}"
            raise CommandFailed(msg)


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return report


def drop_manifest(manifests: Path, source: Path) -> None:
    """Write the manifest under a hidden name, then rename it into the folder, as a pipeline would."""
    manifests.mkdir(parents=True, exist_ok=True)
    staging = manifests / f".{MANIFEST_NAME}.tmp"
    staging.write_bytes(source.read_bytes())
    staging.rename(manifests / MANIFEST_NAME)


class HerbsyncDaemon(Tool):
    """The herbsync daemon with its default settings."""

    name = "herbsync"
    default_setting = Settings().workers

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str:
        return herbsync_version()

    def describe(self) -> str:
        return "herbsync run --config FILE, then rename the manifest into [manifests] path (default settings)"

    def mirror(self, job: Job, setting: int, server: ServerMeter) -> Outcome:
        paths = HerbsyncPaths.for_job(job)
        write_config(paths, job)
        daemon = DaemonRun(job, paths)
        watcher = FirstFileWatcher(paths.store, {f"{digest}.jpg" for digest in job.digests})
        try:
            daemon.wait_started()
            cpu_before = daemon.cpu_seconds()
            server_before = server.cpu_seconds()
            started = time.monotonic()
            watcher.start(started)
            drop_manifest(paths.manifests, job.manifest)

            daemon.wait_complete()
            seconds = time.monotonic() - started
            cpu = daemon.cpu_seconds() - cpu_before
            server_cpu = server.cpu_seconds() - server_before
            peak_rss = daemon.peak_rss()
        except BaseException:
            daemon.kill()
            raise
        finally:
            first_file = watcher.stop()

        daemon.stop()
        return Outcome(Usage(seconds, cpu, peak_rss, server_cpu), first_file)

    def noop(self, job: Job, setting: int, server: ServerMeter) -> Outcome | None:
        """Time the same manifest dropped again into the running daemon, and a restart before that.

        The restart runs from the process start to a complete report. The
        drop runs from renaming the manifest in again to a fresh complete report.
        """
        paths = HerbsyncPaths.for_job(job)
        status_file = paths.status_file(MANIFEST_NAME)
        status_file.unlink(missing_ok=True)
        server_before = server.cpu_seconds()
        started = time.monotonic()
        daemon = DaemonRun(job, paths)
        try:
            daemon.wait_complete()
            restart = Usage(
                time.monotonic() - started, daemon.cpu_seconds(), daemon.peak_rss(), server.cpu_seconds() - server_before
            )

            daemon.wait_started()
            status_file.unlink()
            cpu_before = daemon.cpu_seconds()
            server_before = server.cpu_seconds()
            started = time.monotonic()
            drop_manifest(paths.manifests, job.manifest)
            daemon.wait_complete()
            seconds = time.monotonic() - started
            again = Usage(
                seconds, daemon.cpu_seconds() - cpu_before, daemon.peak_rss(), server.cpu_seconds() - server_before
            )
        except BaseException:
            daemon.kill()
            raise

        daemon.stop()
        return Outcome(again, extra={"restart": restart})
