"""Run one child process and measure its wall time, CPU time and peak memory.

CPU time comes from ``wait4``, so it covers the child and every descendant
it waited for. Peak memory is the kernel's high-water mark of resident
memory (``VmHWM`` in ``/proc/<pid>/status``), read every 10 ms while the
process runs. ``ru_maxrss`` from ``wait4`` is not used: a child started with
``vfork`` inherits the parent's high-water mark at ``exec``, so it would
report the benchmark's own memory for small tools.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


SAMPLE_SECONDS = 0.01


@dataclass(frozen=True)
class Usage:
    """Costs of one measured run."""

    #: Wall time in seconds.
    seconds: float
    #: User plus system CPU time of the tool, in seconds.
    cpu_seconds: float
    #: Peak resident set size of the tool and its children, in bytes.
    peak_rss: int
    #: CPU time the S3 server spent during the run, in seconds.
    server_cpu_seconds: float


class CommandFailed(RuntimeError):
    """A benchmarked command exited with a non-zero status or never finished."""


class ServerMeter:
    """Reads the CPU time of the S3 server process and all of its children."""

    def __init__(self, pid: int | None) -> None:
        self.process = None if pid is None else psutil.Process(pid)

    def cpu_seconds(self) -> float:
        """Return the server's CPU seconds so far (0 when no server is known)."""
        if self.process is None:
            return 0.0
        total = _process_cpu(self.process)
        for child in self.process.children(recursive=True):
            total += _process_cpu(child)
        return total


def _process_cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def high_water_rss(pid: int) -> int:
    """Return the peak resident memory of a live process in bytes, or 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0
    return 0


def tree_high_water_rss(pid: int) -> int:
    """Return the sum of the peak resident memory of a process and its live descendants."""
    total = high_water_rss(pid)
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return total
    return total + sum(high_water_rss(child.pid) for child in children)


class PeakMemorySampler:
    """A thread that keeps the largest ``tree_high_water_rss`` seen while a process runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop sampling and return the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_high_water_rss(self.pid))
            time.sleep(SAMPLE_SECONDS)


def cpu_of(status: tuple[int, int, object]) -> float:
    """Return the user plus system CPU seconds from the result of ``os.wait4``."""
    _, _, usage = status
    return float(usage.ru_utime + usage.ru_stime)  # type: ignore[attr-defined]


def run_measured(
    command: list[str],
    environment: dict[str, str],
    log_path: Path,
    server: ServerMeter,
    cwd: Path | None = None,
) -> Usage:
    """Run ``command`` to completion and measure it; raise ``CommandFailed`` on a non-zero exit."""
    server_before = server.cpu_seconds()
    started = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, env=environment, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )
        sampler = PeakMemorySampler(process.pid)
        status = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    server_cpu = server.cpu_seconds() - server_before
    peak_rss = sampler.stop()

    # wait4 reaped the child, so record its exit status instead of letting Popen wait again.
    process.returncode = os.waitstatus_to_exitcode(status[1])
    if process.returncode != 0:
        msg = f"{command[0]} exited with status {process.returncode}; see {log_path}"
        raise CommandFailed(msg)
    return Usage(seconds, cpu_of(status), peak_rss, server_cpu)
