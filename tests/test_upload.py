"""Uploads against a real SeaweedFS server: the inbox, multipart, faults, access denied, put."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from faultproxy import FaultProxy
from structlog.testing import capture_logs

from herbsync.errors import ConfigError, FileChanged
from herbsync.manifests import Entry, read_manifest
from herbsync.sources.factory import build_source
from herbsync.sources.s3 import S3ImageSource
from herbsync.store import Store
from herbsync.testing.seaweed import SeaweedServer, image_key
from herbsync.upload import (
    Inbox,
    UploadSettings,
    parse_size,
    put_files,
    read_report,
    upload_settings_from_dict,
)
from herbsync.upload.candidates import is_candidate_name, iter_candidates


MIB = 1024 * 1024
SETTLE = 0.2
READER_KEYS = {"AWS_ACCESS_KEY_ID": "test-ro-ak", "AWS_SECRET_ACCESS_KEY": "test-ro-sk"}
IDENTITIES = {
    "identities": [
        {
            "name": "admin",
            "credentials": [{"accessKey": "test-admin-ak", "secretKey": "test-admin-sk"}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        },
        {
            "name": "reader",
            "credentials": [{"accessKey": "test-ro-ak", "secretKey": "test-ro-sk"}],
            "actions": ["Read", "List"],
        },
    ]
}


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Helpers ------------------------------------------------------------------


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_settings(tmp_path: Path, table: dict[str, Any], **keys: Any) -> UploadSettings:
    document = {"inbox": "inbox", "target": table, "settle_seconds": SETTLE, **keys}
    return upload_settings_from_dict(document, tmp_path)


def make_inbox(
    tmp_path: Path,
    table: dict[str, Any],
    clock: Any = time.time,
    max_retry: float = 600.0,
    **keys: Any,
) -> Inbox:
    settings = make_settings(tmp_path, table, **keys)
    assert settings.inbox is not None
    settings.inbox.mkdir(parents=True, exist_ok=True)
    store = Store(tmp_path / "store")
    return Inbox(
        settings,
        settings.build_target(),
        store,
        tmp_path / "state",
        first_retry=0.1,
        max_retry=max_retry,
        rescan_interval=3600.0,
        clock=clock,
    )


def settle_and_scan(inbox: Inbox, clock: FakeClock) -> list[Any]:
    """Scan once to observe the files, let the settle period pass on the fake clock, scan again."""
    first = inbox.scan()
    assert first == []
    clock.advance(SETTLE)
    return inbox.scan()


def drop(inbox: Inbox, source: Path, name: str | None = None) -> Path:
    """Copy an image into the inbox through a hidden name, then rename it, as a scanner would."""
    assert inbox.settings.inbox is not None
    target = inbox.settings.inbox / (name or source.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp"
    shutil.copyfile(source, staging)
    staging.rename(target)
    return target


def object_bytes(server: SeaweedServer, bucket: str, key: str) -> bytes:
    s3 = server.client()
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    finally:
        s3.close()


def object_keys(server: SeaweedServer, bucket: str) -> list[str]:
    s3 = server.client()
    try:
        answer = s3.list_objects_v2(Bucket=bucket)
    finally:
        s3.close()
    return sorted(item["Key"] for item in answer.get("Contents", []))


def journal_lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "uploads.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A second SeaweedFS server with an admin and a read-only identity."""
    folder = tmp_path_factory.mktemp("secured-seaweed")
    config = folder / "identities.json"
    config.write_text(json.dumps(IDENTITIES), encoding="utf-8")
    server = SeaweedServer(folder / "data", s3_config=config)
    server.start()
    yield server
    server.stop()


# Settings -----------------------------------------------------------------


def test_settings_defaults(tmp_path: Path, s3_table: dict[str, Any]) -> None:
    settings = upload_settings_from_dict({"inbox": "in", "target": s3_table}, tmp_path)

    assert settings.inbox == tmp_path / "in"
    assert settings.after == "move"
    assert settings.extensions == {"jpg", "jpeg", "tif", "tiff", "png", "jp2", "dng"}
    assert settings.settle_seconds == 2.0
    assert settings.multipart_threshold == 5 * 1024**3
    assert settings.part_size == 64 * MIB
    assert isinstance(settings.build_target(), S3ImageSource)


def test_settings_parse_sizes_and_extensions(tmp_path: Path, s3_table: dict[str, Any]) -> None:
    settings = upload_settings_from_dict(
        {
            "target": s3_table,
            "multipart_threshold": "64 MB",
            "part_size": "8 MiB",
            "extensions": [".JPG", "Tiff"],
            "after": "keep",
        },
        tmp_path,
    )

    assert settings.inbox is None
    assert settings.multipart_threshold == 64_000_000
    assert settings.part_size == 8 * MIB
    assert settings.extensions == {"jpg", "tiff"}
    assert settings.after == "keep"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("64 MB", 64_000_000), ("64MiB", 64 * MIB), ("1.5 kB", 1500), ("5 gib", 5 * 1024**3)],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text, "part_size") == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("after", "archive"),
        ("settle_seconds", -1),
        ("settle_seconds", "soon"),
        ("multipart_threshold", "64 bananas"),
        ("multipart_threshold", "6 GiB"),
        ("part_size", "1 MiB"),
        ("part_size", True),
        ("extensions", []),
        ("extensions", ["jp/g"]),
        ("inbox", 42),
        ("colour", "green"),
    ],
)
def test_settings_reject_invalid_value(tmp_path: Path, s3_table: dict[str, Any], key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        upload_settings_from_dict({"inbox": "in", "target": s3_table, key: value}, tmp_path)

    message = str(raised.value)
    assert f"upload.{key}" in message
    assert repr(value) in message


@pytest.mark.parametrize(
    "target",
    [
        {"type": "local", "base_path": "images"},
        {"type": "s3", "bucket": "b", "anonymous": True},
        {"type": "multi", "sources": [{"type": "local", "base_path": "images"}]},
    ],
)
def test_settings_reject_target_without_uploads(tmp_path: Path, target: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="upload.target"):
        upload_settings_from_dict({"inbox": "in", "target": target}, tmp_path)


def test_settings_require_target(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="upload.target is missing"):
        upload_settings_from_dict({"inbox": "in"}, tmp_path)


def test_settings_resolve_multi_cache_path(tmp_path: Path, s3_table: dict[str, Any]) -> None:
    target = {"type": "multi", "sources": [{"type": "local", "base_path": "cache"}, s3_table]}

    settings = upload_settings_from_dict({"target": target}, tmp_path)

    assert settings.target["sources"][0]["base_path"] == str(tmp_path / "cache")


# Candidates ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sheet.jpg", True),
        ("SHEET.JPEG", True),
        ("scan.Tif", True),
        ("raw.dng", True),
        (".sheet.jpg", False),
        ("sheet.jpg.tmp", False),
        ("sheet.jpg.part", False),
        ("sheet.jpg~", False),
        ("notes.txt", False),
        ("jpg", False),
    ],
)
def test_candidate_names(name: str, expected: bool) -> None:
    extensions = {"jpg", "jpeg", "tif", "tiff", "png", "jp2", "dng"}
    assert is_candidate_name(name, extensions) is expected


def test_candidates_skip_links_and_hidden_folders(tmp_path: Path, specimens: list[Path]) -> None:
    inbox = tmp_path / "inbox"
    outside = tmp_path / "outside"
    (inbox / "batch").mkdir(parents=True)
    (inbox / ".cache").mkdir()
    outside.mkdir()
    shutil.copyfile(specimens[0], inbox / "batch" / "a.jpg")
    shutil.copyfile(specimens[1], inbox / ".cache" / "b.jpg")
    shutil.copyfile(specimens[2], outside / "c.jpg")
    (inbox / "link.jpg").symlink_to(outside / "c.jpg")
    (inbox / "linked-folder").symlink_to(outside)

    found = list(iter_candidates(inbox, {"jpg"}))

    assert found == [inbox / "batch" / "a.jpg"]


# The inbox against a real server -------------------------------------------


def test_inbox_uploads_specimens(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    inbox = make_inbox(tmp_path, s3_table)
    inbox.start()
    try:
        dropped = [drop(inbox, path, f"batch/{index:02d}.jpg") for index, path in enumerate(specimens)]
        wait_until(lambda: inbox.status()["uploaded"] == len(specimens), f"uploads; status {inbox.status()}")
        status = inbox.status()
    finally:
        inbox.stop()

    assert status["failed"] == 0
    assert status["already_present"] == 0
    digests = sorted(path.stem for path in specimens)
    assert object_keys(seaweed, bucket) == sorted(image_key(digest) for digest in digests)
    for digest in digests:
        assert sha256_of(object_bytes(seaweed, bucket, image_key(digest))) == digest
        assert inbox.store.path_for(digest).is_file()
        assert inbox.store.check(inbox.store.path_for(digest)) is None
    for path in dropped:
        assert not path.exists()


def test_inbox_journal_reads_as_manifest(
    tmp_path: Path, seaweed: SeaweedServer, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    clock = FakeClock()
    inbox = make_inbox(tmp_path, s3_table, clock)
    drop(inbox, specimens[0], "first.JPEG")
    drop(inbox, specimens[1], "second.jpg")

    outcomes = settle_and_scan(inbox, clock)

    assert [outcome.succeeded for outcome in outcomes] == [True, True]
    lines = journal_lines(tmp_path)
    assert [line["original_name"] for line in lines] == ["first.JPEG", "second.jpg"]
    assert [line["path"] for line in lines] == [image_key(specimens[0].stem), image_key(specimens[1].stem)]
    assert lines[0]["bytes"] == specimens[0].stat().st_size
    assert lines[0]["content_type"] == "image/jpeg"
    assert lines[0]["new_object"] is True
    assert "uploaded_at" in lines[0]
    entries = [item for item in read_manifest(tmp_path / "state" / "uploads.jsonl") if isinstance(item, Entry)]
    assert [entry.digest for entry in entries] == [specimens[0].stem, specimens[1].stem]
    assert [entry.extension for entry in entries] == ["jpg", "jpg"]


def test_second_drop_already_present(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    clock = FakeClock()
    inbox = make_inbox(tmp_path, s3_table, clock)
    digest = specimens[0].stem
    drop(inbox, specimens[0], "sheet.jpg")
    first = settle_and_scan(inbox, clock)
    again = drop(inbox, specimens[0], "again/sheet-copy.jpeg")

    second = settle_and_scan(inbox, clock)

    assert first[0].result is not None
    assert first[0].result.created is True
    assert len(second) == 1
    assert second[0].succeeded
    assert second[0].result is not None
    assert second[0].result.created is False
    assert second[0].result.key == image_key(digest)
    assert object_keys(seaweed, bucket) == [image_key(digest)]
    assert not again.exists()
    status = inbox.status()
    assert status["uploaded"] == 2
    assert status["already_present"] == 1
    assert [line["new_object"] for line in journal_lines(tmp_path)] == [True, False]


def test_slow_writer_uploaded_once(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any]
) -> None:
    # A longer settle period than elsewhere, so the short pauses between writes never look complete.
    inbox = make_inbox(tmp_path, s3_table, settle_seconds=1.0)
    data = os.urandom(2 * MIB)
    chunk = 64 * 1024
    assert inbox.settings.inbox is not None

    inbox.start()
    try:
        with open(inbox.settings.inbox / "slow.png", "wb") as stream:
            for offset in range(0, len(data), chunk):
                stream.write(data[offset : offset + chunk])
                stream.flush()
                time.sleep(0.02)
        wait_until(lambda: inbox.status()["uploaded"] >= 1, f"the upload; status {inbox.status()}")
        status = inbox.status()
    finally:
        inbox.stop()

    digest = sha256_of(data)
    assert status["uploaded"] == 1
    assert status["failed"] == 0
    assert object_keys(seaweed, bucket) == [image_key(digest, "png")]
    assert sha256_of(object_bytes(seaweed, bucket, image_key(digest, "png"))) == digest
    assert len(journal_lines(tmp_path)) == 1


def test_multipart_upload_hashes_right(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any]
) -> None:
    clock = FakeClock()
    inbox = make_inbox(tmp_path, s3_table, clock, multipart_threshold="5 MiB", part_size="5 MiB")
    data = os.urandom(12 * MIB)
    digest = sha256_of(data)
    assert inbox.settings.inbox is not None
    (inbox.settings.inbox / "large.TIFF").write_bytes(data)

    with capture_logs() as logs:
        outcomes = settle_and_scan(inbox, clock)

    assert len(outcomes) == 1
    result = outcomes[0].result
    assert result is not None
    assert result.multipart is True
    assert result.key == image_key(digest, "tif")
    s3 = seaweed.client()
    try:
        head = s3.head_object(Bucket=bucket, Key=result.key, PartNumber=1)
        content_type = s3.head_object(Bucket=bucket, Key=result.key)["ContentType"]
    finally:
        s3.close()
    assert head["PartsCount"] == 3
    assert content_type == "image/tiff"
    assert sha256_of(object_bytes(seaweed, bucket, result.key)) == digest
    assert inbox.store.path_for(digest, "tif").is_file()
    uploaded = [entry for entry in logs if entry["event"] == "image.uploaded"]
    assert len(uploaded) == 1
    assert uploaded[0]["digest"] == digest
    assert uploaded[0]["key"] == result.key
    assert uploaded[0]["bytes"] == len(data)
    assert "seconds" in uploaded[0]


def test_files_present_before_start_uploaded(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    inbox = make_inbox(tmp_path, s3_table)
    original = drop(inbox, specimens[13], "waiting/sheet.jpg")

    inbox.start()
    try:
        wait_until(lambda: inbox.status()["uploaded"] == 1, f"the upload; status {inbox.status()}")
    finally:
        inbox.stop()

    assert not original.exists()
    assert object_keys(seaweed, bucket) == [image_key(specimens[13].stem)]


def test_stop_aborts_multipart_upload(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any]
) -> None:
    data = os.urandom(30 * MIB)
    with FaultProxy("127.0.0.1", seaweed.s3_port) as proxy:
        table = {**s3_table, "endpoint_url": proxy.url}
        inbox = make_inbox(tmp_path, table, multipart_threshold="5 MiB", part_size="5 MiB")
        assert inbox.settings.inbox is not None
        original = inbox.settings.inbox / "large.tif"
        original.write_bytes(data)
        # Parts wait in the proxy, so six parts on four threads are still being sent at stop.
        proxy.stall(3.0, count=10, method="PUT")

        inbox.start()
        try:
            wait_until(
                lambda: any(entry.path.endswith("?uploads") for entry in proxy.log),
                "the multipart upload to start",
            )
        finally:
            inbox.stop(grace=0)
        aborted = [entry for entry in proxy.log if entry.method == "DELETE" and "uploadId=" in entry.path]

    assert original.read_bytes() == data
    assert inbox.status()["uploaded"] == 0
    assert inbox.status()["failed"] == 0
    assert [entry.status for entry in aborted] == [204]
    assert object_keys(seaweed, bucket) == []
    s3 = seaweed.client()
    try:
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        s3.close()


def test_stop_waits_for_upload_in_progress(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    digest = specimens[14].stem
    with FaultProxy("127.0.0.1", seaweed.s3_port) as proxy:
        inbox = make_inbox(tmp_path, {**s3_table, "endpoint_url": proxy.url})
        original = drop(inbox, specimens[14])
        proxy.stall(1.0, count=1, method="PUT")

        inbox.start()
        try:
            wait_until(lambda: proxy.pending() == 0, "the PUT to reach the proxy")
        finally:
            inbox.stop()

    assert inbox.status()["uploaded"] == 1
    assert not original.exists()
    assert object_keys(seaweed, bucket) == [image_key(digest)]


def test_flipped_byte_rejected_then_retried(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    clock = FakeClock()
    digest = specimens[3].stem
    with FaultProxy("127.0.0.1", seaweed.s3_port) as proxy:
        inbox = make_inbox(tmp_path, {**s3_table, "endpoint_url": proxy.url}, clock)
        original = drop(inbox, specimens[3])
        proxy.flip_byte(count=1, method="PUT")

        with capture_logs() as logs:
            failed = settle_and_scan(inbox, clock)
        status = inbox.status()
        clock.advance(status["failures"][0]["next_attempt_in"] + 0.01)
        retried = inbox.scan()
        statuses = proxy.statuses(method="PUT")

    assert failed[0].kind == "unavailable"
    assert "BadDigest" in str(failed[0].error)
    assert status["failures"][0]["kind"] == "unavailable"
    assert [entry["event"] for entry in logs if entry["event"] == "upload.failed"] == ["upload.failed"]
    assert statuses == [400, 200]
    assert retried[0].succeeded
    assert not original.exists()
    assert sha256_of(object_bytes(seaweed, bucket, image_key(digest))) == digest
    assert inbox.status()["failed"] == 0


def test_read_only_identity_access_denied(
    tmp_path: Path,
    secured_server: SeaweedServer,
    specimens: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = "herbsync.read-only"
    secured_server.create_bucket(bucket)
    for name, value in READER_KEYS.items():
        monkeypatch.setenv(name, value)
    table = {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": secured_server.endpoint_url}
    clock = FakeClock()
    inbox = make_inbox(tmp_path, table, clock, max_retry=3600.0)
    original = drop(inbox, specimens[4])

    with capture_logs() as logs:
        outcomes = settle_and_scan(inbox, clock)
        clock.advance(60.0)
        soon = inbox.scan()
    status = inbox.status()

    assert outcomes[0].kind == "access_denied"
    assert soon == []
    assert status["failed"] == 1
    failure = status["failures"][0]
    assert failure["path"] == original.name
    assert failure["kind"] == "access_denied"
    assert "access denied" in failure["reason"]
    assert failure["attempts"] == 1
    assert failure["next_attempt_in"] == pytest.approx(3600.0 - 60.0)
    assert original.read_bytes() == specimens[4].read_bytes()
    assert object_keys(secured_server, bucket) == []
    failures = [entry for entry in logs if entry["event"] == "upload.failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "error"
    assert failures[0]["path"] == str(original)
    report = read_report(tmp_path / "state")
    assert report is not None
    assert report["failed"] == 1
    assert report["failures"][0]["kind"] == "access_denied"


def test_access_denied_retried_at_max_delay(
    tmp_path: Path,
    secured_server: SeaweedServer,
    specimens: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = "herbsync.read-only-retry"
    secured_server.create_bucket(bucket)
    for name, value in READER_KEYS.items():
        monkeypatch.setenv(name, value)
    table = {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": secured_server.endpoint_url}
    clock = FakeClock()
    inbox = make_inbox(tmp_path, table, clock, max_retry=3600.0)
    original = drop(inbox, specimens[5])
    settle_and_scan(inbox, clock)

    clock.advance(3600.0)
    with capture_logs() as logs:
        retried = inbox.scan()

    assert retried[0].kind == "access_denied"
    assert inbox.status()["failures"][0]["attempts"] == 2
    assert [entry["log_level"] for entry in logs if entry["event"] == "upload.failed"] == ["info"]
    assert original.exists()


def test_existing_object_with_other_size_fails(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    digest = specimens[6].stem
    s3 = seaweed.client()
    try:
        s3.put_object(Bucket=bucket, Key=image_key(digest), Body=b"not the image")
    finally:
        s3.close()
    clock = FakeClock()
    inbox = make_inbox(tmp_path, s3_table, clock)
    original = drop(inbox, specimens[6])

    outcomes = settle_and_scan(inbox, clock)

    assert outcomes[0].kind == "error"
    assert "already exists with 13 bytes" in str(outcomes[0].error)
    assert original.exists()


def test_after_keep_leaves_file_and_skips_it(
    tmp_path: Path, seaweed: SeaweedServer, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    clock = FakeClock()
    inbox = make_inbox(tmp_path, s3_table, clock, after="keep")
    original = drop(inbox, specimens[7])
    digest = specimens[7].stem

    outcomes = settle_and_scan(inbox, clock)
    clock.advance(SETTLE)
    later = inbox.scan()
    restarted = make_inbox(tmp_path, s3_table, clock, after="keep")
    after_restart = settle_and_scan(restarted, clock)

    assert outcomes[0].succeeded
    assert later == []
    assert after_restart == []
    assert original.read_bytes() == specimens[7].read_bytes()
    stored = inbox.store.path_for(digest)
    assert stored.is_file()
    assert os.stat(stored).st_ino != os.stat(original).st_ino


def test_after_delete_removes_without_storing(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    clock = FakeClock()
    inbox = make_inbox(tmp_path, s3_table, clock, after="delete")
    original = drop(inbox, specimens[8])
    digest = specimens[8].stem

    outcomes = settle_and_scan(inbox, clock)

    assert outcomes[0].succeeded
    assert outcomes[0].stored is None
    assert not original.exists()
    assert inbox.store.find(digest) is None
    assert object_keys(seaweed, bucket) == [image_key(digest)]


def test_inbox_ignores_temporary_and_linked_files(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    clock = FakeClock()
    inbox = make_inbox(tmp_path, s3_table, clock)
    folder = inbox.settings.inbox
    assert folder is not None
    outside = tmp_path / "outside.jpg"
    shutil.copyfile(specimens[9], outside)
    for name in (".hidden.jpg", "scan.jpg.tmp", "scan.jpg.part", "scan.jpg~", "notes.txt"):
        shutil.copyfile(specimens[9], folder / name)
    (folder / "linked.jpg").symlink_to(outside)

    outcomes = settle_and_scan(inbox, clock)

    assert outcomes == []
    assert object_keys(seaweed, bucket) == []
    assert inbox.process(folder / "linked.jpg") is None


def test_file_changed_during_upload(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any]
) -> None:
    path = tmp_path / "changing.jpg"
    data = os.urandom(3 * MIB)
    path.write_bytes(data)
    source = build_source(s3_table)
    changed = False

    def change_once(count: int) -> None:
        nonlocal changed
        if changed:
            return
        changed = True
        with open(path, "r+b") as stream:
            stream.seek(len(data) // 2)
            stream.write(b"\x00" * 16)

    with pytest.raises(FileChanged) as raised:
        source.upload(path, progress=change_once)

    assert raised.value.transient is True
    assert object_keys(seaweed, bucket) == []


def test_multi_source_uploads_through_s3(
    tmp_path: Path, seaweed: SeaweedServer, bucket: str, s3_table: dict[str, Any], specimens: list[Path]
) -> None:
    source = build_source({"type": "multi", "sources": [{"type": "local", "base_path": str(tmp_path)}, s3_table]})

    digest = source.upload_image(specimens[10])

    assert digest == specimens[10].stem
    assert sha256_of(object_bytes(seaweed, bucket, image_key(digest))) == digest


# herbsync put ---------------------------------------------------------------


def test_put_files_prints_hash_and_key(
    tmp_path: Path,
    seaweed: SeaweedServer,
    bucket: str,
    s3_table: dict[str, Any],
    specimens: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = tmp_path / "first.jpg"
    second = tmp_path / "second.JPEG"
    shutil.copyfile(specimens[11], first)
    second.symlink_to(specimens[12])
    missing = tmp_path / "missing.jpg"
    source = build_source(s3_table)

    results = put_files([first, missing, second], source, progress=True)

    printed = capsys.readouterr()
    expected = [
        (first, specimens[11].stem, image_key(specimens[11].stem)),
        (second, specimens[12].stem, image_key(specimens[12].stem)),
    ]
    assert results == expected, printed.err
    for path, digest, key in expected:
        assert f"{digest}  {key}" in printed.out
        assert path.read_bytes() == (specimens[11] if path == first else specimens[12]).read_bytes()
    assert "missing.jpg" in printed.err
    assert second.is_symlink()
    assert object_keys(seaweed, bucket) == sorted(key for _, _, key in expected)
