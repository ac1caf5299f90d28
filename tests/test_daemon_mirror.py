"""End to end: ``herbsync run`` mirrors manifests from a real SeaweedFS server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import wait_until

from herbsync.digest import calculate_sha256
from herbsync.testing.seaweed import image_key


MISSING = "f" * 64


def test_manifest_brings_specimens_into_store(seaweed, bucket, s3_table, specimens, start_daemon):
    """Every listed specimen lands in the store and hashes to its name."""
    digests = seaweed.upload_images(bucket, specimens)
    daemon = start_daemon(s3_table)

    daemon.drop_manifest("batch-1.txt", "\n".join(digests[:10]) + "\n")
    report = daemon.wait_settled("batch-1.txt", 10)

    assert report["complete"] is True
    assert report["present"] == 10
    for digest in digests[:10]:
        stored = daemon.stored(digest)
        assert stored.is_file()
        assert calculate_sha256(stored) == digest
    fetched = daemon.events("image.fetched")
    assert {event["digest"] for event in fetched} == set(digests[:10])
    assert all(event["bytes"] > 0 and "seconds" in event for event in fetched)


def test_overlapping_manifest_fetches_only_new(seaweed, bucket, s3_table, specimens, start_daemon):
    """A second manifest that overlaps the first fetches only the images not yet present."""
    digests = seaweed.upload_images(bucket, specimens)
    daemon = start_daemon(s3_table)
    daemon.drop_manifest("first.txt", "\n".join(digests[:8]))
    daemon.wait_settled("first.txt", 8)

    daemon.drop_manifest("second.txt", "\n".join(digests[4:]))
    report = daemon.wait_settled("second.txt", len(digests) - 4)

    assert report["complete"] is True
    fetched = [event["digest"] for event in daemon.events("image.fetched")]
    assert sorted(fetched) == sorted(digests)
    assert len(fetched) == len(set(fetched))


def test_wrong_bytes_never_stored(seaweed, bucket, s3_table, specimens, start_daemon):
    """An object whose bytes do not match its key is reported as failed and never stored."""
    good = seaweed.upload_images(bucket, specimens[:2])
    impostor = calculate_sha256(specimens[3])
    client = seaweed.client()
    client.put_object(Bucket=bucket, Key=image_key(impostor), Body=specimens[4].read_bytes())
    daemon = start_daemon(s3_table)

    daemon.drop_manifest("mixed.txt", "\n".join([good[0], impostor, MISSING, good[1]]))
    report = daemon.wait_settled("mixed.txt", 4)

    assert report["present"] == 2
    assert report["failed"] == 2
    reasons = {failure["sha256"]: failure for failure in report["failures"]}
    assert reasons[impostor]["kind"] == "mismatch"
    assert f"expected sha256 {impostor}" in reasons[impostor]["reason"]
    assert reasons[MISSING]["kind"] == "not_found"
    assert not list(daemon.store.rglob(f"{impostor}.*"))
    assert not list(daemon.store.rglob(f"{MISSING}.*"))
    assert daemon.stored(good[0]).is_file()
    assert daemon.stored(good[1]).is_file()


def test_invalid_lines_reported_valid_served(seaweed, bucket, s3_table, specimens, start_daemon):
    """Invalid lines are reported with file and line; the valid lines are still served."""
    digests = seaweed.upload_images(bucket, specimens[:2])
    daemon = start_daemon(s3_table)
    lines = [
        "# a comment",
        digests[0],
        "abc123",
        "z" * 64,
        "../../etc/passwd",
        digests[1].upper(),
    ]

    daemon.drop_manifest("dirty.txt", "\n".join(lines) + "\n")
    report = daemon.wait_settled("dirty.txt", 2)

    assert report["complete"] is True
    invalid = {problem["line"]: problem for problem in report["invalid_lines"]}
    assert sorted(invalid) == [3, 4, 5]
    assert invalid[3]["text"] == "abc123"
    assert invalid[5]["text"] == "../../etc/passwd"
    logged = daemon.events("manifest.invalid_line")
    assert {(event["manifest"], event["line"]) for event in logged} == {
        ("dirty.txt", 3),
        ("dirty.txt", 4),
        ("dirty.txt", 5),
    }


def test_local_first_skips_s3(seaweed, bucket, specimens, start_daemon, tmp_path):
    """An image in the local cache is taken from there; S3 is asked only for the rest."""
    digests = seaweed.upload_images(bucket, specimens[:4])
    cache = tmp_path / "cache"
    cached = specimens[0]
    target = cache / digests[0][0:2] / digests[0][2:4] / cached.name
    target.parent.mkdir(parents=True)
    target.write_bytes(cached.read_bytes())
    source = {
        "type": "multi",
        "sources": [
            {"type": "local", "base_path": str(cache)},
            {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": seaweed.endpoint_url},
        ],
    }
    daemon = start_daemon(source)

    daemon.drop_manifest("cache.txt", "\n".join(digests))
    daemon.wait_settled("cache.txt", 4)

    origins = {event["digest"]: event["source"] for event in daemon.events("image.fetched")}
    assert origins[digests[0]] == str(target)
    for digest in digests[1:]:
        assert origins[digest].startswith(f"s3://{bucket}/")
        assert (cache / digest[0:2] / digest[2:4] / f"{digest}.jpg").is_file()


def test_sigterm_leaves_no_temporary_files(seaweed, bucket, s3_table, specimens, start_daemon):
    """SIGTERM stops the daemon with exit status 0 and no temporary files left."""
    digests = seaweed.upload_images(bucket, specimens)
    daemon = start_daemon(s3_table)
    daemon.drop_manifest("all.txt", "\n".join(digests))
    wait_until(lambda: daemon.events("image.fetched"), "the first fetch")

    status = daemon.stop()

    assert status == 0
    temporary = daemon.store / ".tmp"
    assert not temporary.exists() or not list(temporary.iterdir())
    assert "daemon.stopped" in daemon.log()


def test_stale_temporary_files_removed_at_start(s3_table, start_daemon, tmp_path):
    """Temporary files left by a crash are removed when the daemon starts."""
    root = tmp_path / "crashed"
    leftover = root / "store" / ".tmp" / ".part-abc"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an image")

    start_daemon(s3_table, root=root)

    assert not leftover.exists()


def test_invalid_config_rejected_naming_key(tmp_path: Path):
    """A bad value stops the daemon at start with a message naming the key and value."""
    config = tmp_path / "bad.toml"
    config.write_text('[transfers]\nworkers = "eight"\n', encoding="utf-8")

    result = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
    )

    assert result.returncode != 0
    assert "transfers.workers" in result.stderr
    assert "'eight'" in result.stderr
