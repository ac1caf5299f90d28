"""Benchmark ``herbsync verify --all`` against ``sha256sum -c`` and hashlib's single-thread rate.

Run from the repository root::

    .venv/bin/python -m bench.verify_speed

It writes about 2 GB of random files of 2 to 6 MB into a store in a new
temporary folder. ``--workdir`` picks the folder's parent, which should be on
the disk under test. Each tool then runs ``--repeat`` times, and the script
prints a Markdown table of the medians. Warm runs read from the page cache, so they measure
hashing. Cold runs first drop every file of the data set from the page cache
with ``posix_fadvise(POSIX_FADV_DONTNEED)``, so they also measure the disk.
The single-thread hashlib rate on one file is the limit of one core. The
wall-time ratio divides each tool's rate by that limit times the cores it
uses. The CPU-time ratio divides bytes per CPU second by the same limit, so
it stays meaningful when other processes share the cores.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.machine import describe_machine
from herbsync.state import PresentRecord, State
from herbsync.store import Store
from herbsync.verify import DEFAULT_WORKERS


MB = 1000**2
GB = 1000**3
READ_SIZE = 1024 * 1024
REFERENCE_FILE_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True)
class DataSet:
    """The generated store and the files that describe it."""

    root: Path
    store: Path
    state: Path
    config: Path
    #: A configuration whose store is empty, to time the command's start-up alone.
    empty_config: Path
    checksums: Path
    reference_file: Path
    files: int
    bytes: int


@dataclass(frozen=True)
class Measurement:
    """The median of several timed runs of one tool."""

    name: str
    files: int
    bytes: int
    seconds: list[float]
    cpu_seconds: list[float]
    cores: int

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Return bytes per second at the median time."""
        return self.bytes / self.median_seconds

    @property
    def rate_per_cpu_second(self) -> float:
        """Return bytes hashed per second of CPU time, at the median CPU time."""
        return self.bytes / statistics.median(self.cpu_seconds)


# Data set ---------------------------------------------------------------


def generate(parent: Path | None, total_bytes: int, seed: int) -> DataSet:
    """Write random files in the store layout until ``total_bytes``; record them in a state database."""
    root = Path(tempfile.mkdtemp(prefix="herbsync-verify-", dir=parent))
    store = Store(root / "store")
    state = State(root / "state")
    generator = random.Random(seed)
    lines: list[str] = []
    written = 0

    while written < total_bytes:
        content = generator.randbytes(generator.randint(2 * MB, 6 * MB))
        digest = hashlib.sha256(content).hexdigest()
        stored = store.place(digest, "jpg", [content], "benchmark")
        info = stored.path.stat()
        state.mark_present(PresentRecord(digest, "jpg", info.st_size, info.st_mtime_ns, time.time()))
        lines.append(f"{digest}  {stored.path.relative_to(store.root)}\n")
        written += len(content)
    state.close()

    checksums = root / "SHA256SUMS"
    checksums.write_text("".join(lines), encoding="ascii")
    reference = root / "reference.bin"
    with open(reference, "wb") as stream:
        for _ in range(REFERENCE_FILE_SIZE // (16 * 1024 * 1024)):
            stream.write(generator.randbytes(16 * 1024 * 1024))
    (root / "empty-source").mkdir()
    config = _write_config(root, "herbsync.toml", "store", "state")
    empty_config = _write_config(root, "empty.toml", "empty-store", "empty-state")
    return DataSet(root, store.root, root / "state", config, empty_config, checksums, reference, len(lines), written)


def _write_config(root: Path, name: str, store: str, state: str) -> Path:
    config = root / name
    config.write_text(
        f'[store]\npath = "{root / store}"\n'
        f'[state]\npath = "{root / state}"\n'
        f'[manifests]\npath = "{root / "manifests"}"\n'
        f'[source]\ntype = "local"\nbase_path = "{root / "empty-source"}"\n',
        encoding="utf-8",
    )
    return config


def drop_from_page_cache(data: DataSet) -> None:
    """Ask the kernel to drop the data set's files from the page cache; other files stay cached."""
    for path in [*data.store.rglob("*.jpg"), data.reference_file]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


# Timed runs -------------------------------------------------------------


def hash_one_file(path: Path) -> None:
    """Hash a file on this thread with 1 MiB reads, as one hashing worker does."""
    hasher = hashlib.sha256()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while count := stream.readinto(buffer):
            hasher.update(view[:count])


def run_command(command: list[str], cwd: Path) -> None:
    """Run a command to completion; raise with its output if it fails."""
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        msg = f"{' '.join(command)} exited with {completed.returncode}: {completed.stderr[-2000:]}"
        raise RuntimeError(msg)


def timed(action: Callable[[], None]) -> tuple[float, float]:
    """Return the wall time and the CPU time, of this process and its children, of ``action``."""
    before = _cpu_seconds()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started, _cpu_seconds() - before


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(
    name: str,
    action: Callable[[], None],
    files: int,
    size: int,
    cores: int,
    repeat: int,
    before_each: Callable[[], None] | None = None,
) -> Measurement:
    """Time ``action`` ``repeat`` times after one untimed warm-up run."""
    action()
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    for _ in range(repeat):
        if before_each is not None:
            before_each()
        wall, cpu = timed(action)
        seconds.append(wall)
        cpu_seconds.append(cpu)
    return Measurement(name, files, size, seconds, cpu_seconds, cores)


def measure_all(data: DataSet, repeat: int, workers: int) -> list[Measurement]:
    """Time hashlib on one file, ``sha256sum -c`` and ``herbsync verify --all``, warm and cold."""
    herbsync = [sys.executable, "-m", "herbsync.cli", "verify", "--all", "--workers", str(workers)]
    startup = [*herbsync, "--config", str(data.empty_config)]
    herbsync += ["--config", str(data.config)]
    sha256sum = ["sha256sum", "--check", "--quiet", str(data.checksums)]
    herbsync_cores = min(workers, os.cpu_count() or 1)
    reference_size = data.reference_file.stat().st_size

    def cold() -> None:
        drop_from_page_cache(data)

    return [
        measure("hashlib, one file, 1 thread", lambda: hash_one_file(data.reference_file), 1, reference_size, 1, repeat),
        measure("sha256sum -c", lambda: run_command(sha256sum, data.store), data.files, data.bytes, 1, repeat),
        measure("herbsync verify --all, empty store", lambda: run_command(startup, data.root), 0, 0, 1, repeat),
        measure(
            f"herbsync verify --all, {workers} threads",
            lambda: run_command(herbsync, data.root),
            data.files,
            data.bytes,
            herbsync_cores,
            repeat,
        ),
        measure("sha256sum -c, cold cache", lambda: run_command(sha256sum, data.store), data.files, data.bytes, 1, repeat, cold),
        measure(
            f"herbsync verify --all, {workers} threads, cold cache",
            lambda: run_command(herbsync, data.root),
            data.files,
            data.bytes,
            herbsync_cores,
            repeat,
            cold,
        ),
    ]


# Report -----------------------------------------------------------------


def render(measurements: list[Measurement], machine: dict[str, str], repeat: int) -> str:
    """Return the results as a Markdown table with the machine it ran on."""
    raw_rate = measurements[0].rate
    raw_per_cpu_second = measurements[0].rate_per_cpu_second
    header = (
        "| Run | Files | GB | Seconds (median) | Range | GB/s | Ratio to raw rate per core | CPU s "
        "| GB per CPU s | CPU-time ratio to raw |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for item in measurements:
        times = (
            f"| {item.name} | {item.files} | {item.bytes / GB:.2f} | {item.median_seconds:.2f} "
            f"| {min(item.seconds):.2f}–{max(item.seconds):.2f} "
        )
        cpu = f"{statistics.median(item.cpu_seconds):.2f}"
        if item.bytes == 0:
            lines.append(f"{times}| – | – | {cpu} | – | – |")
            continue
        ratio = item.rate / (raw_rate * item.cores)
        cpu_ratio = item.rate_per_cpu_second / raw_per_cpu_second
        cores = f"{item.cores} core{'s' if item.cores > 1 else ''}"
        lines.append(
            f"{times}| {item.rate / GB:.2f} | {ratio:.2f} ({cores}) "
            f"| {cpu} | {item.rate_per_cpu_second / GB:.2f} | {cpu_ratio:.2f} |"
        )
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines.append("")
    lines.append(
        f"Medians of {repeat} runs after one warm-up run. Machine: {machine['cores']} cores "
        f"({machine['cpu']}), {machine['memory']}, kernel {machine['kernel']}, disk {machine['disk']}. "
        f"Load average at the end (1, 5, 15 min): {load}."
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m bench.verify_speed``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.verify_speed",
        description="Time herbsync verify --all against sha256sum -c and hashlib on one file.",
    )
    parser.add_argument("--size-gb", type=float, default=2.0, help="data set size in GB (default: 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool (default: 3)")
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help=f"herbsync hashing threads (default: {DEFAULT_WORKERS})"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary data folder")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the data set (default: 1)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder after the run")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate the data set, time every tool and print the Markdown table."""
    arguments = build_parser().parse_args(argv)
    if shutil.which("sha256sum") is None:
        print("sha256sum not found on PATH; install GNU coreutils", file=sys.stderr)
        return 1

    data = generate(arguments.workdir, int(arguments.size_gb * GB), arguments.seed)
    print(f"data set: {data.files} files, {data.bytes / GB:.2f} GB in {data.root}", file=sys.stderr)
    try:
        measurements = measure_all(data, arguments.repeat, arguments.workers)
        print(render(measurements, describe_machine(data.root), arguments.repeat))
    finally:
        if not arguments.keep:
            shutil.rmtree(data.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
