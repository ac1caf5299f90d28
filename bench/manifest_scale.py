"""Scale benchmark: ingest a manifest of 1,000,000 hashes, re-ingest it, start the daemon.

Half of the hashes are already in the store, as files herbsync verified and
recorded in its state database. Each step runs in a fresh Python process so
its wall time and peak memory (``VmHWM`` of that process) stand alone.

    .venv/bin/python -m bench.manifest_scale [--count 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from herbsync.state import PresentRecord, State


def _digest(index: int) -> tuple[str, bytes]:
    content = index.to_bytes(8, "big")
    return hashlib.sha256(content).hexdigest(), content


def prepare(root: Path, count: int) -> None:
    """Write the store files and state for half the hashes, and the manifest for all."""
    store = root / "store"
    records = []
    with open(root / "manifest.txt", "w", encoding="ascii") as manifest:
        for index in range(count):
            digest, content = _digest(index)
            manifest.write(digest + "\n")
            if index % 2:
                continue
            path = store / digest[0:2] / digest[2:4] / f"{digest}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            info = path.stat()
            records.append(PresentRecord(digest, "jpg", info.st_size, info.st_mtime_ns, time.time()))
    state = State(root / "state")
    state.mark_present_many(records)
    state.close()


def ingest(root: Path) -> None:
    """Read the manifest folder into the state once (the step being measured)."""
    from herbsync.drop_folder import DropFolder

    state = State(root / "state")
    results = DropFolder(root / "manifests", state).reconcile()
    state.close()
    peak_mb = _peak_rss_mb("self")
    print(json.dumps({"changed": [result.changed for result in results], "peak_mb": peak_mb}))


def _peak_rss_mb(pid: str) -> float:
    """Return a process's peak resident memory in MB from ``/proc``.

    ``VmHWM`` starts afresh at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent that forked it.
    """
    status = Path(f"/proc/{pid}/status").read_text()
    kilobytes = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return kilobytes / 1024


def _child(step: str, root: Path) -> dict[str, float]:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.manifest_scale", "--step", step, str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.monotonic() - started
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_mb": report["peak_mb"], "changed": report["changed"]}


def _write_config(root: Path) -> Path:
    config = root / "herbsync.toml"
    config.write_text(
        f'[store]\npath = "{root / "store"}"\n[manifests]\npath = "{root / "manifests"}"\n'
        f'[state]\npath = "{root / "state"}"\n[logging]\nformat = "json"\n'
        f'[source]\ntype = "local"\nbase_path = "{root / "empty-cache"}"\n',
        encoding="utf-8",
    )
    return config


def measure_startup(root: Path) -> dict[str, float]:
    """Start the daemon on the loaded state; time until it is ready (state checked, folder read)."""
    config = _write_config(root)
    log_path = root / "daemon.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "herbsync.cli", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        while "daemon.started" not in log_path.read_text(errors="replace"):
            if process.poll() is not None:
                raise SystemExit(log_path.read_text(errors="replace"))
            time.sleep(0.01)
        seconds = time.monotonic() - started
        peak_mb = _peak_rss_mb(str(process.pid))
    finally:
        process.terminate()
        process.wait()
    return {"seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    """Run every step and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000, help="hashes in the manifest")
    parser.add_argument("--step", choices=["ingest"], help=argparse.SUPPRESS)
    parser.add_argument("root", nargs="?", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.step == "ingest":
        ingest(arguments.root)
        return

    with tempfile.TemporaryDirectory(prefix="herbsync-scale-", dir=os.environ.get("TMPDIR", "/var/tmp")) as folder:
        root = Path(folder)
        (root / "manifests").mkdir()
        started = time.monotonic()
        prepare(root, arguments.count)
        print(f"prepared {arguments.count} hashes in {time.monotonic() - started:.1f} s", file=sys.stderr)
        (root / "manifest.txt").rename(root / "manifests" / "million.txt")

        first = _child("ingest", root)
        os.utime(root / "manifests" / "million.txt")
        again = _child("ingest", root)
        startup = measure_startup(root)

    print("| step | wall time (s) | peak RSS (MB) |")
    print("| --- | ---: | ---: |")
    print(f"| first ingestion of {arguments.count:,} hashes | {first['seconds']:.2f} | {first['peak_mb']:.0f} |")
    print(f"| no-op re-ingestion after touch | {again['seconds']:.2f} | {again['peak_mb']:.0f} |")
    print(f"| daemon start-up with that state | {startup['seconds']:.2f} | {startup['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
