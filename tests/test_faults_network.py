"""Network faults between the daemon and S3, and wrong credentials, end to end.

Every test runs ``herbsync run`` against a real SeaweedFS server behind the
fault proxy, so the daemon meets throttling, server errors, dropped and short
bodies, flipped bytes, stalls and refused connections as it would on a real
network. After each fault clears, every image must arrive and every file in
the store must hash to its name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import TEST_KEYS, wait_until
from storecheck import temporary_files, unexpected_store_files

from faultproxy import FaultProxy
from herbsync.testing.seaweed import SeaweedServer, image_key


# Tries of one GET: botocore's client makes up to 5 (4 retries), and the
# mirror makes up to 3 of those in one pass (the daemon's default attempts).
TRIES_PER_PASS = 5 * 3

# Longer than any fault a test arms: the fault lasts until the test clears it.
UNTIL_CLEARED = 1_000_000

READER_SECRET = "reader-secret-0f4e2a"
STRANGER_SECRET = "stranger-secret-7b91c3"
S3_IDENTITIES = {
    "identities": [
        {
            "name": "admin",
            "credentials": [{"accessKey": "admin-key", "secretKey": "admin-secret-5d07aa"}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        },
        {
            "name": "reader",
            "credentials": [{"accessKey": "reader-key", "secretKey": READER_SECRET}],
            "actions": ["Read", "List"],
        },
        {
            "name": "stranger",
            "credentials": [{"accessKey": "stranger-key", "secretKey": STRANGER_SECRET}],
            "actions": ["Read:some-other-bucket", "List:some-other-bucket"],
        },
    ]
}
PRIVATE_BUCKET = "herbsync.private"


def _gets_of(proxy: FaultProxy, digest: str) -> int:
    return sum(1 for entry in proxy.log if entry.method == "GET" and digest in entry.path)


def _failed_everything(daemon: Any, name: str, count: int) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        report = daemon.status(name)
        if report is None or report["failed"] != count:
            return None
        return report

    return check


def _complete(daemon: Any, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        report = daemon.status(name)
        return report if report is not None and report["complete"] else None

    return check


@pytest.fixture
def proxied_table(proxy: FaultProxy, bucket: str) -> dict[str, Any]:
    """A ``[source]`` table that reaches the test bucket through the fault proxy."""
    return {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": proxy.url}


# Each case arms a fault that lasts until cleared, and names the failure kind it causes.
OUTAGES = {
    "internal_error_500": (lambda proxy: proxy.fail(500, "InternalError", UNTIL_CLEARED, "GET"), "unavailable"),
    "unavailable_503": (lambda proxy: proxy.fail(503, "ServiceUnavailable", UNTIL_CLEARED, "GET"), "unavailable"),
    "connection_refused": (lambda proxy: proxy.refuse(), "unavailable"),
    "cut_after_1000_bytes": (lambda proxy: proxy.cut_after(1000, UNTIL_CLEARED, "GET"), "unavailable"),
    "body_short_of_length": (lambda proxy: proxy.short_body(UNTIL_CLEARED, "GET"), "unavailable"),
    "flipped_byte": (lambda proxy: proxy.flip_byte(UNTIL_CLEARED, method="GET"), "mismatch"),
}


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_outage_reported_then_mirrored(outage, seaweed, bucket, proxy, proxied_table, specimens, start_daemon):
    """While a fault lasts, status shows it and nothing lands; once cleared, all arrive verified."""
    arm, kind = OUTAGES[outage]
    digests = seaweed.upload_images(bucket, specimens[:3])
    arm(proxy)
    daemon = start_daemon(proxied_table)

    daemon.drop_manifest("outage.txt", "\n".join(digests))
    wait_until(_failed_everything(daemon, "outage.txt", 3), f"3 failures; log:\n{daemon.log()[-3000:]}")
    # GETs first, then the report: every GET counted belongs to a pass the
    # report already counts in ``attempts``, or to the one pass running now.
    gets = {digest: _gets_of(proxy, digest) for digest in digests}
    report = daemon.status("outage.txt")

    assert {failure["kind"] for failure in report["failures"]} == {kind}
    assert report["present"] == 0
    for failure in report["failures"]:
        assert gets[failure["sha256"]] <= TRIES_PER_PASS * (failure["attempts"] + 1), failure
    retried = daemon.events("fetch.retrying")
    assert {event["digest"] for event in retried} == set(digests)
    assert {event["kind"] for event in retried} == {kind}
    failed = daemon.events("image.failed")
    assert {event["digest"] for event in failed} == set(digests)
    assert unexpected_store_files(daemon.store) == []
    assert not any(daemon.stored(digest).exists() for digest in digests)

    proxy.clear()
    report = wait_until(_complete(daemon, "outage.txt"), f"recovery; log:\n{daemon.log()[-3000:]}")

    assert report["present"] == 3
    assert unexpected_store_files(daemon.store) == []
    assert all(daemon.stored(digest).is_file() for digest in digests)


def test_throttling_absorbed_by_client_retries(seaweed, bucket, proxy, proxied_table, specimens, start_daemon):
    """Three 503 SlowDown responses are retried; each image is still fetched once and verified."""
    digests = seaweed.upload_images(bucket, specimens[:4])
    proxy.fail(503, "SlowDown", count=3, method="GET")
    daemon = start_daemon(proxied_table)

    daemon.drop_manifest("throttled.txt", "\n".join(digests))
    report = daemon.wait_settled("throttled.txt", 4)

    assert report["complete"] is True
    assert proxy.statuses(method="GET").count(503) == 3
    assert len(proxy.statuses(method="GET")) == len(digests) + 3
    fetched = [event["digest"] for event in daemon.events("image.fetched")]
    assert sorted(fetched) == sorted(digests)
    retries = daemon.events("s3.retrying")
    assert len(retries) == 3
    assert all("server returned 503" in event["reason"] for event in retries)
    assert unexpected_store_files(daemon.store) == []


def test_stall_beyond_read_timeout_retried(seaweed, bucket, proxy, proxied_table, specimens, start_daemon):
    """Responses stalled past the read timeout are dropped and retried; the image arrives verified."""
    digests = seaweed.upload_images(bucket, specimens[:1])
    proxy.stall(60, count=2, method="GET")
    # A short read timeout lets a stalled response fail in seconds, not 30.
    daemon = start_daemon({**proxied_table, "read_timeout": 1.5, "connect_timeout": 1.5})

    daemon.drop_manifest("stalled.txt", digests[0])
    report = daemon.wait_settled("stalled.txt", 1)

    assert report["complete"] is True
    # 206: the CRT client asks for the first part of each object with a Range header.
    assert proxy.statuses(method="GET")[-1] == 206
    retries = daemon.events("s3.retrying")
    assert len(retries) == 2
    assert all("timeout" in event["reason"].lower() for event in retries)
    assert unexpected_store_files(daemon.store) == []


def test_flipped_byte_never_stored(seaweed, bucket, proxy, proxied_table, specimens, start_daemon):
    """A single flipped byte is caught by the SHA-256 check and the next try stores the right bytes."""
    digests = seaweed.upload_images(bucket, specimens[:1])
    proxy.flip_byte(count=1, method="GET")
    daemon = start_daemon(proxied_table)

    daemon.drop_manifest("flipped.txt", digests[0])
    report = daemon.wait_settled("flipped.txt", 1)

    assert report["complete"] is True
    retried = daemon.events("fetch.retrying")
    assert [event["kind"] for event in retried] == ["mismatch"]
    assert f"expected sha256 {digests[0]}" in retried[0]["error"]
    assert unexpected_store_files(daemon.store) == []
    assert temporary_files(daemon.store) == set()


# Wrong credentials and access denied ---------------------------------------


@pytest.fixture(scope="module")
def private_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS server that checks credentials, with one bucket holding two specimens."""
    folder = tmp_path_factory.mktemp("private-seaweed")
    config = folder / "identities.json"
    config.write_text(json.dumps(S3_IDENTITIES), encoding="utf-8")
    with SeaweedServer(folder / "data", s3_config=config) as server:
        server.create_bucket(PRIVATE_BUCKET)
        yield server


@pytest.fixture
def private_proxy(private_seaweed: SeaweedServer) -> Iterator[FaultProxy]:
    """A proxy in front of the private server; it injects nothing and counts requests."""
    with FaultProxy("127.0.0.1", private_seaweed.s3_port) as running:
        yield running


CREDENTIALS = {
    "unknown_access_key": ("no-such-key", "no-such-secret-93ad1e", "InvalidAccessKeyId"),
    "wrong_secret": ("reader-key", "wrong-secret-4c62f0", "SignatureDoesNotMatch"),
    "no_read_permission": ("stranger-key", STRANGER_SECRET, "AccessDenied"),
}


@pytest.mark.parametrize("case", sorted(CREDENTIALS))
def test_denied_access_reported_without_retry_loop(
    case, private_seaweed, private_proxy, specimens, start_daemon, monkeypatch
):
    """Denied requests give a clear status reason, are not retried at once, and never show the secret."""
    access_key, secret_key, code = CREDENTIALS[case]
    digests = private_seaweed.upload_images(PRIVATE_BUCKET, specimens[:2])
    monkeypatch.setitem(TEST_KEYS, "AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setitem(TEST_KEYS, "AWS_SECRET_ACCESS_KEY", secret_key)
    source = {"type": "s3", "bucket": PRIVATE_BUCKET, "region": "us-east-1", "endpoint_url": private_proxy.url}
    daemon = start_daemon(source)

    daemon.drop_manifest("private.txt", "\n".join(digests))
    report = wait_until(_failed_everything(daemon, "private.txt", 2), f"2 failures; log:\n{daemon.log()[-3000:]}")
    requests_when_failed = private_proxy.request_count
    time.sleep(2.0)  # a window to count retries in, not a check on timing
    requests_after_window = private_proxy.request_count

    for failure in report["failures"]:
        assert failure["kind"] == "access_denied"
        assert code in failure["reason"]
        assert "check the credentials" in failure["reason"]
    # The first retry of a denied image waits 8 times first_retry (4 s here),
    # so a tight loop would show up as new requests in the window.
    assert requests_when_failed <= len(digests) * 2
    assert requests_after_window - requests_when_failed <= len(digests)
    assert daemon.events("fetch.retrying") == []
    status = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "status", "--json", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
        check=False,
    )
    assert status.returncode == 0, status.stderr
    for text in (daemon.log(), status.stdout, status.stderr, json.dumps(report)):
        assert secret_key not in text
    assert not any(daemon.stored(digest).exists() for digest in digests)


def test_reader_credentials_mirror_private_bucket(private_seaweed, private_proxy, specimens, start_daemon, monkeypatch):
    """The same server and bucket serve the daemon once it has keys with read access."""
    digests = private_seaweed.upload_images(PRIVATE_BUCKET, specimens[:2])
    monkeypatch.setitem(TEST_KEYS, "AWS_ACCESS_KEY_ID", "reader-key")
    monkeypatch.setitem(TEST_KEYS, "AWS_SECRET_ACCESS_KEY", READER_SECRET)
    source = {"type": "s3", "bucket": PRIVATE_BUCKET, "region": "us-east-1", "endpoint_url": private_proxy.url}
    daemon = start_daemon(source)

    daemon.drop_manifest("private.txt", "\n".join(digests))
    report = daemon.wait_settled("private.txt", 2)

    assert report["complete"] is True
    assert READER_SECRET not in daemon.log()
    assert unexpected_store_files(daemon.store) == []


# Hostile object keys ---------------------------------------------------------


def test_key_with_path_after_digest_not_stored(seaweed, bucket, specimens, s3_table, start_daemon):
    """An object under ``<digest>.x/y`` is not taken for the image, so no file lands outside the layout."""
    digest = specimens[0].stem
    hostile_key = image_key(digest, "x") + "/y"
    seaweed.client().put_object(Bucket=bucket, Key=hostile_key, Body=specimens[0].read_bytes())
    daemon = start_daemon(s3_table)

    daemon.drop_manifest("hostile.txt", digest)
    report = daemon.wait_settled("hostile.txt", 1)

    assert report["failed"] == 1
    assert report["failures"][0]["kind"] == "not_found"
    assert "not a plain extension" in report["failures"][0]["reason"]
    assert unexpected_store_files(daemon.store) == []
    assert not list(daemon.store.rglob("y"))


def test_restart_retries_denied_images_at_once(
    private_seaweed, private_proxy, specimens, start_daemon, monkeypatch, tmp_path
):
    """After the credentials are fixed, a restart fetches denied images without waiting for their schedule."""
    digests = private_seaweed.upload_images(PRIVATE_BUCKET, specimens[:2])
    access_key, secret_key, _ = CREDENTIALS["wrong_secret"]
    monkeypatch.setitem(TEST_KEYS, "AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setitem(TEST_KEYS, "AWS_SECRET_ACCESS_KEY", secret_key)
    source = {"type": "s3", "bucket": PRIVATE_BUCKET, "region": "us-east-1", "endpoint_url": private_proxy.url}
    # A denied image would wait 8 times first_retry, 80 minutes here.
    transfers = {"workers": 4, "backoff": 0.05, "first_retry": 600}
    root = tmp_path / "restarted"
    denied = start_daemon(source, root=root, transfers=transfers)
    denied.drop_manifest("private.txt", "\n".join(digests))
    wait_until(_failed_everything(denied, "private.txt", 2), f"2 failures; log:\n{denied.log()[-3000:]}")
    assert denied.stop() == 0

    monkeypatch.setitem(TEST_KEYS, "AWS_ACCESS_KEY_ID", "reader-key")
    monkeypatch.setitem(TEST_KEYS, "AWS_SECRET_ACCESS_KEY", READER_SECRET)
    fixed = start_daemon(source, root=root, transfers=transfers)

    report = wait_until(_complete(fixed, "private.txt"), f"both images; log:\n{fixed.log()[-3000:]}")

    assert report["present"] == 2
    assert [event["images"] for event in fixed.events("failures.retrying_now")] == [2]
    assert all(fixed.stored(digest).is_file() for digest in digests)


def test_daemon_without_credentials_starts_and_reports(
    private_seaweed, private_proxy, specimens, start_daemon, no_credentials
):
    """With no credentials at all, the daemon still starts and reports each image as denied."""
    digests = private_seaweed.upload_images(PRIVATE_BUCKET, specimens[:1])
    source = {"type": "s3", "bucket": PRIVATE_BUCKET, "region": "us-east-1", "endpoint_url": private_proxy.url}
    daemon = start_daemon(source)

    daemon.drop_manifest("private.txt", digests[0])
    report = wait_until(_failed_everything(daemon, "private.txt", 1), f"1 failure; log:\n{daemon.log()[-3000:]}")

    assert report["failures"][0]["kind"] == "access_denied"
    assert "no AWS credentials found" in report["failures"][0]["reason"]
    assert len(daemon.events("s3.no_credentials")) == 1


def test_fetch_with_partial_credentials_explains(
    private_seaweed, private_proxy, specimens, no_credentials, tmp_path
):
    """An access key without its secret ends `herbsync fetch` with a message, not a traceback."""
    digests = private_seaweed.upload_images(PRIVATE_BUCKET, specimens[:1])
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": "reader-key"}
    config = tmp_path / "herbsync.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path / "store"}"\n[state]\npath = "{tmp_path / "state"}"\n'
        f'[source]\ntype = "s3"\nbucket = "{PRIVATE_BUCKET}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{private_proxy.url}"\n',
        encoding="utf-8",
    )

    fetched = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "fetch", "--config", str(config), "--no-progress", digests[0]],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )

    assert fetched.returncode == 1
    assert "missing: AWS_SECRET_ACCESS_KEY" in fetched.stderr
    assert "set both the access key ID and the secret access key" in fetched.stderr
    assert "Traceback" not in fetched.stderr
