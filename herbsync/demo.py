"""``make demo``: mirror the bundled specimen images from a local SeaweedFS server.

Starts SeaweedFS on 127.0.0.1, uploads the sample images under their SHA-256
keys, runs the daemon on a temporary store, drops a manifest, waits until
every image is present and verified, prints what happened, and stops
everything it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from herbsync.digest import calculate_sha256
from herbsync.testing.seaweed import SeaweedServer


SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "specimens"
BUCKET = "devvyn.aafc-srdc.herbarium"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}


def _write_config(root: Path, endpoint_url: str) -> Path:
    config = root / "herbsync.toml"
    config.write_text(
        f"""[store]
path = "{root / 'store'}"
[manifests]
path = "{root / 'manifests'}"
[state]
path = "{root / 'state'}"
[logging]
format = "json"
[source]
type = "s3"
bucket = "{BUCKET}"
region = "us-east-1"
endpoint_url = "{endpoint_url}"
""",
        encoding="utf-8",
    )
    return config


def _start_daemon(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    environment = {**os.environ, **CREDENTIALS}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "herbsync.cli", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )


def _events(log_path: Path) -> list[dict[str, Any]]:
    events = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _wait_for_report(status_file: Path, process: subprocess.Popen[bytes], seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the daemon exited early; see its log above")
        try:
            report: dict[str, Any] = json.loads(status_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            report = {}
        if report.get("settled"):
            return report
        time.sleep(0.1)
    raise SystemExit(f"timed out after {seconds:.0f} s waiting for {status_file}")


def _print_fetches(log_path: Path) -> None:
    for event in _events(log_path):
        if event.get("event") == "image.fetched":
            print(f"  fetched {event['digest'][:16]}…  {event['bytes']:>7} bytes  {event['seconds'] * 1000:6.1f} ms")
        elif event.get("event") == "image.failed":
            print(f"  FAILED  {event['digest'][:16]}…  {event['reason']}")


def _verify_store(store: Path, digests: list[str]) -> int:
    good = 0
    for digest in digests:
        path = store / digest[0:2] / digest[2:4] / f"{digest}.jpg"
        if path.is_file() and calculate_sha256(path) == digest:
            good += 1
    return good


def run_demo(root: Path) -> int:
    """Run the whole demo in ``root``; return the exit status."""
    samples = sorted(SAMPLES.glob("*.jpg"))
    print(f"1. Starting SeaweedFS on 127.0.0.1 (data in {root / 'seaweed'})")
    with SeaweedServer(root / "seaweed") as server:
        server.create_bucket(BUCKET)
        digests = server.upload_images(BUCKET, samples)
        print(f"   uploaded {len(digests)} specimen images to s3://{BUCKET}/images/ at {server.endpoint_url}")

        config = _write_config(root, server.endpoint_url)
        log_path = root / "daemon.log"
        print(f"2. Starting `herbsync run --config {config}`")
        daemon = _start_daemon(config, log_path)
        try:
            manifest = root / "manifests" / "demo.txt"
            manifest.parent.mkdir(parents=True, exist_ok=True)
            staging = manifest.with_name(".demo.txt.tmp")
            staging.write_text("# demo manifest: every bundled specimen\n" + "\n".join(digests) + "\n")
            started = time.monotonic()
            staging.rename(manifest)
            print(f"3. Dropped manifest {manifest} listing {len(digests)} images")

            report = _wait_for_report(root / "state" / "status" / "demo.txt.json", daemon)
            elapsed = time.monotonic() - started
        finally:
            daemon.send_signal(signal.SIGTERM)
            status = daemon.wait(timeout=60)

    print("4. What the daemon did:")
    _print_fetches(log_path)
    good = _verify_store(root / "store", digests)
    print(
        f"5. Manifest settled in {elapsed:.2f} s: {report['present']} present, "
        f"{report['failed']} failed; {good}/{len(digests)} stored files hash to their names"
    )
    print(f"6. Daemon stopped on SIGTERM with exit status {status}; SeaweedFS stopped")
    return 0 if good == len(digests) and status == 0 else 1


def main() -> int:
    """Run the demo in a temporary folder that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="herbsync-demo-") as folder:
        return run_demo(Path(folder))


if __name__ == "__main__":
    sys.exit(main())
