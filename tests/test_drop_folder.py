"""The manifest folder as a drop folder, status reports and ``herbsync wait``, end to end."""

from __future__ import annotations

import gzip
import os
import json
import subprocess
import sys
import time

from conftest import TEST_KEYS, wait_until

from herbsync.digest import calculate_sha256


MISSING = "e" * 64


def _herbsync(*arguments, config):
    return subprocess.run(
        [sys.executable, "-m", "herbsync.cli", *arguments, "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
    )


class TestFormats:
    """Manifests in the formats pipelines already have, mirrored by the daemon."""

    def test_jsonl_keeps_extension_and_label(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """A JSONL entry with a .tif key is stored as .tif; a failure shows the specimen id."""
        digest = calculate_sha256(specimens[0])
        key = f"images/{digest[0:2]}/{digest[2:4]}/{digest}.tif"
        seaweed.client().put_object(Bucket=bucket, Key=key, Body=specimens[0].read_bytes())
        lines = [
            {"sha256": digest, "path": key, "bytes": specimens[0].stat().st_size, "logical_id": "DAO 000000001"},
            {"sha256": MISSING, "logical_id": "DAO 000123456"},
        ]
        daemon = start_daemon(s3_table)

        daemon.drop_manifest("inventory.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
        report = daemon.wait_settled("inventory.jsonl", 2)

        assert daemon.stored(digest, "tif").is_file()
        assert not daemon.stored(digest, "jpg").exists()
        assert report["failures"][0]["label"] == "DAO 000123456"
        table = _herbsync("status", "inventory.jsonl", config=daemon.config)
        assert "DAO 000123456" in table.stdout
        assert "not found" in table.stdout

    def test_gzip_csv_with_catalog_numbers(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """A gzip-compressed CSV with sha256 in a later column and quoted fields is served."""
        digests = seaweed.upload_images(bucket, specimens[:3])
        rows = ["catalogNumber,notes,sha256"]
        rows += [f'"DAO {index:09d}","pressed, dried",{digest}' for index, digest in enumerate(digests)]
        daemon = start_daemon(s3_table)
        daemon.manifests.mkdir(parents=True, exist_ok=True)
        staging = daemon.manifests / ".batch.csv.gz.part"
        staging.write_bytes(gzip.compress(("\r\n".join(rows) + "\r\n").encode()))

        staging.rename(daemon.manifests / "batch.csv.gz")
        report = daemon.wait_settled("batch.csv.gz", 3)

        assert report["complete"] is True
        assert report["invalid_count"] == 0


class TestDropFolder:
    """When manifests are read, and what deleting or editing them does."""

    def test_slow_writer_read_once_complete(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """A manifest written in several chunks is read once, after it is closed."""
        digests = seaweed.upload_images(bucket, specimens[:6])
        daemon = start_daemon(s3_table)
        daemon.manifests.mkdir(parents=True, exist_ok=True)

        with open(daemon.manifests / "slow.txt", "w", encoding="utf-8") as stream:
            for start in (0, 2, 4):
                stream.write("\n".join(digests[start : start + 2]) + "\n")
                stream.flush()
                time.sleep(0.3)
        report = daemon.wait_settled("slow.txt", 6)

        reads = [event for event in daemon.events("manifest.read") if event["manifest"] == "slow.txt"]
        assert len(reads) == 1
        assert reads[0]["entries"] == 6
        assert report["complete"] is True

    def test_hidden_and_temporary_names_ignored(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """Files named .*, *.tmp, *.part or *~ are not read until renamed."""
        digests = seaweed.upload_images(bucket, specimens[:1])
        daemon = start_daemon(s3_table)
        daemon.manifests.mkdir(parents=True, exist_ok=True)
        for name in (".hidden", "list.tmp", "list.part", "list.txt~"):
            (daemon.manifests / name).write_text(digests[0] + "\n")

        daemon.drop_manifest("marker.txt", digests[0])
        daemon.wait_settled("marker.txt", 1)

        assert {event["manifest"] for event in daemon.events("manifest.read")} == {"marker.txt"}

    def test_delete_withdraws_wants_keeps_images(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """Deleting a manifest withdraws its entries; its images stay in the store."""
        digests = seaweed.upload_images(bucket, specimens[:2])
        daemon = start_daemon(s3_table)
        manifest = daemon.drop_manifest("gone.txt", "\n".join(digests))
        daemon.wait_settled("gone.txt", 2)

        manifest.unlink()
        wait_until(lambda: daemon.events("manifest.withdrawn"), "the withdrawal")

        wait_until(lambda: daemon.status("gone.txt") is None, "the status report to go")
        status = json.loads(_herbsync("status", "--json", config=daemon.config).stdout)
        assert status["totals"]["wanted"] == 0
        assert all(daemon.stored(digest).is_file() for digest in digests)

    def test_changes_while_stopped_seen_at_start(self, seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
        """Edits and deletions made while the daemon was stopped are picked up at start."""
        digests = seaweed.upload_images(bucket, specimens[:5])
        root = tmp_path / "restart"
        first = start_daemon(s3_table, root=root)
        edited = first.drop_manifest("edited.txt", "\n".join(digests[:2]))
        deleted = first.drop_manifest("deleted.txt", digests[2])
        first.wait_settled("edited.txt", 2)
        first.wait_settled("deleted.txt", 1)
        assert first.stop() == 0

        edited.write_text("\n".join(digests[:4]))
        deleted.unlink()
        second = start_daemon(s3_table, root=root)
        report = second.wait_settled("edited.txt", 4)

        assert report["complete"] is True
        assert second.status("deleted.txt") is None
        fetched = [event["digest"] for event in second.events("image.fetched")]
        # digests[2] came with the deleted manifest and stays in the store.
        assert fetched == [digests[3]]

    def test_restart_neither_refetches_nor_rehashes(self, seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
        """Images the daemon verified are trusted after a restart while size and mtime hold."""
        digests = seaweed.upload_images(bucket, specimens[:4])
        root = tmp_path / "again"
        first = start_daemon(s3_table, root=root)
        first.drop_manifest("keep.txt", "\n".join(digests))
        first.wait_settled("keep.txt", 4)
        first.stop()

        second = start_daemon(s3_table, root=root)
        second.drop_manifest("marker.txt", digests[0])
        second.wait_settled("marker.txt", 1)

        assert second.events("image.fetched") == []
        assert second.events("image.adopted") == []

    def test_files_changed_while_stopped_rechecked(self, seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
        """At start, a verified file deleted meanwhile is fetched again and a touched one is rehashed."""
        digests = seaweed.upload_images(bucket, specimens[:3])
        root = tmp_path / "audit"
        first = start_daemon(s3_table, root=root)
        first.drop_manifest("kept.txt", "\n".join(digests))
        first.wait_settled("kept.txt", 3)
        first.stop()
        first.stored(digests[0]).unlink()
        os.utime(first.stored(digests[1]), (1, 1))

        second = start_daemon(s3_table, root=root)
        wait_until(lambda: second.events("store.audited"), "the audit")
        wait_until(lambda: second.events("image.fetched"), "the refetch")
        report = second.wait_settled("kept.txt", 3)

        assert second.events("store.audited")[0]["stale"] == 2
        assert [event["digest"] for event in second.events("image.fetched")] == [digests[0]]
        assert [event["digest"] for event in second.events("image.adopted")] == [digests[1]]
        assert report["complete"] is True

    def test_unverified_store_files_hashed_first(self, seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
        """A good file copied in by hand is adopted after hashing; a wrong one is quarantined and refetched."""
        digests = seaweed.upload_images(bucket, specimens[:2])
        root = tmp_path / "preloaded"
        good = root / "store" / digests[0][0:2] / digests[0][2:4] / f"{digests[0]}.jpg"
        bad = root / "store" / digests[1][0:2] / digests[1][2:4] / f"{digests[1]}.jpg"
        for path, content in ((good, specimens[0].read_bytes()), (bad, b"truncated")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)

        daemon = start_daemon(s3_table, root=root)
        daemon.drop_manifest("both.txt", "\n".join(digests))
        report = daemon.wait_settled("both.txt", 2)

        assert report["complete"] is True
        assert [event["digest"] for event in daemon.events("image.adopted")] == [digests[0]]
        assert [event["digest"] for event in daemon.events("image.fetched")] == [digests[1]]
        assert calculate_sha256(bad) == digests[1]
        quarantined = list((root / "store" / ".quarantine").iterdir())
        assert len(quarantined) == 1
        assert quarantined[0].read_bytes() == b"truncated"


class TestWait:
    """``herbsync wait`` exit codes for pipeline steps."""

    def test_complete_manifest_exits_zero(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """wait returns 0 once every entry is present."""
        digests = seaweed.upload_images(bucket, specimens[:3])
        daemon = start_daemon(s3_table)
        manifest = daemon.drop_manifest("ready.txt", "\n".join(digests))

        result = _herbsync("wait", str(manifest), "--timeout", "120", config=daemon.config)

        assert result.returncode == 0, result.stderr
        assert "all 3 images present" in result.stdout

    def test_failing_manifest_exits_one(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """wait returns 1 and lists each failed hash with its reason."""
        digests = seaweed.upload_images(bucket, specimens[:1])
        daemon = start_daemon(s3_table)
        daemon.drop_manifest("broken.txt", f"{digests[0]}\n{MISSING}\n")

        result = _herbsync("wait", "broken.txt", "--timeout", "120", config=daemon.config)

        assert result.returncode == 1
        assert MISSING in result.stdout
        assert "not found" in result.stdout

    def test_timeout_exits_two(self, s3_table, start_daemon):
        """wait returns 2 when the manifest is still pending at the timeout."""
        daemon = start_daemon(s3_table)

        result = _herbsync("wait", "never-dropped.txt", "--timeout", "0.5", config=daemon.config)

        assert result.returncode == 2
        assert "timed out" in result.stderr

    def test_status_json_for_scripts(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """status --json gives totals and per-manifest counts, failures and invalid lines."""
        digests = seaweed.upload_images(bucket, specimens[:2])
        daemon = start_daemon(s3_table)
        daemon.drop_manifest("report.txt", f"{digests[0]}\nnot-a-hash\n{digests[1]}\n{MISSING}\n")
        daemon.wait_settled("report.txt", 3)

        result = _herbsync("status", "report.txt", "--json", config=daemon.config)

        status = json.loads(result.stdout)
        report = status["manifests"][0]
        assert (report["entries"], report["present"], report["failed"], report["pending"]) == (3, 2, 1, 0)
        assert report["complete"] is False
        assert report["failures"][0]["sha256"] == MISSING
        assert report["invalid_lines"] == [
            {"line": 2, "text": "not-a-hash", "reason": report["invalid_lines"][0]["reason"]}
        ]
        assert status["totals"]["wanted"] == 3


class TestUserReports:
    """Cases found by trying herbsync as a new user."""

    def test_manifest_moved_in_from_elsewhere_read(self, seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
        """A manifest moved in from another folder (a created event, no close) is read."""
        digests = seaweed.upload_images(bucket, specimens[:2])
        daemon = start_daemon(s3_table)
        draft = tmp_path / "drafts" / "moved.txt"
        draft.parent.mkdir()
        draft.write_text("\n".join(digests))

        draft.rename(daemon.manifests / "moved.txt")
        report = daemon.wait_settled("moved.txt", 2)

        assert report["complete"] is True

    def test_stored_images_readable_by_others(self, seaweed, bucket, s3_table, specimens, start_daemon):
        """Stored images are read-only and readable by other users (umask 022), not mode 0600."""
        digests = seaweed.upload_images(bucket, specimens[:1])
        daemon = start_daemon(s3_table)
        daemon.drop_manifest("modes.txt", digests[0])
        daemon.wait_settled("modes.txt", 1)

        mode = daemon.stored(digests[0]).stat().st_mode & 0o777
        report_mode = (daemon.state / "status" / "modes.txt.json").stat().st_mode & 0o777

        assert mode == 0o444
        assert report_mode == 0o644

    def test_status_into_closed_pipe_is_quiet(self, s3_table, start_daemon):
        """`herbsync status | head -c 1` ends without a traceback."""
        daemon = start_daemon(s3_table)
        command = f"{sys.executable} -m herbsync.cli status --config {daemon.config} | head -c 1"

        result = subprocess.run(command, shell=True, capture_output=True, text=True)

        assert "Traceback" not in result.stderr

    def test_fetch_failures_leave_daemon_schedule(self, s3_table, start_daemon):
        """A failed `herbsync fetch` reports the failure but records no retry in the shared state."""
        daemon = start_daemon(s3_table)

        result = _herbsync("fetch", "--no-progress", MISSING, config=daemon.config)

        assert result.returncode == 1
        assert MISSING in result.stderr
        status = json.loads(_herbsync("status", "--json", config=daemon.config).stdout)
        assert status["totals"]["failed"] == 0

    def test_fetch_of_empty_manifest_names_file(self, s3_table, start_daemon, tmp_path):
        """`herbsync fetch` of a manifest with no hashes names the file, with no line number."""
        daemon = start_daemon(s3_table)
        empty = tmp_path / "empty.txt"
        empty.write_text("# no hashes yet\n", encoding="utf-8")

        result = _herbsync("fetch", "--no-progress", str(empty), config=daemon.config)

        assert result.returncode == 1
        assert f"invalid input: {empty}: " in result.stderr
        assert "None" not in result.stderr

    def test_unknown_manifest_message_names_folder(self, s3_table, start_daemon):
        """status of an unknown manifest says where manifests are read from."""
        daemon = start_daemon(s3_table)

        result = _herbsync("status", "nosuch.txt", config=daemon.config)

        assert result.returncode == 1
        assert str(daemon.manifests) in result.stderr
