"""Image GETs through urllib3 on presigned URLs, against SeaweedFS behind the fault proxy."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from herbsync.errors import AccessDenied, ObjectNotFound, SourceError, SourceUnavailable
from herbsync.sources.s3 import S3ImageSource
from herbsync.sources.s3http import redact
from herbsync.store import Store


@pytest.fixture
def source(proxy, bucket, monkeypatch) -> S3ImageSource:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    return S3ImageSource(bucket, region="us-east-1", endpoint_url=proxy.url, read_timeout=2.0, use_crt=False)


def test_redact_removes_query():
    text = "failed: /b/k.jpg?X-Amz-Signature=abc123&X-Amz-Credential=k (Caused by x)"

    assert redact(text) == "failed: /b/k.jpg?<query removed> (Caused by x)"


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (403, "AccessDenied", AccessDenied),
        (403, "SignatureDoesNotMatch", AccessDenied),
        (400, "InvalidRequest", SourceError),
    ],
)
def test_error_status_mapped(status, code, error_type, seaweed, bucket, proxy, source, specimens):
    """An error response raises the same herbsync error as botocore's would, naming the code."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.fail(status, code, count=1, method="GET")

    with capture_logs() as logs, pytest.raises(SourceError) as caught:
        source.open_image(digest)

    assert type(caught.value) is error_type
    assert code in str(caught.value)
    assert "X-Amz-" not in str(caught.value)
    assert "X-Amz-" not in json.dumps(logs)
    assert proxy.statuses(method="GET") == [status]


def test_server_errors_retried_then_unavailable(seaweed, bucket, proxy, source, specimens):
    """Five 503 responses in a row: four logged retries, then SourceUnavailable with the code."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.fail(503, "SlowDown", count=5, method="GET")

    with capture_logs() as logs, pytest.raises(SourceUnavailable) as caught:
        source.open_image(digest)

    assert "SlowDown" in str(caught.value)
    retries = [entry for entry in logs if entry["event"] == "s3.retrying"]
    assert [entry["attempt"] for entry in retries] == [2, 3, 4, 5]
    assert all("503 SlowDown" in entry["reason"] for entry in retries)
    assert all("?" not in entry["path"] for entry in retries)
    assert "X-Amz-" not in json.dumps(logs)


def test_missing_key_falls_back_to_listing(seaweed, bucket, source, specimens, tmp_path):
    """An image stored as .png is found by listing after the .jpg GET returns 404."""
    digest = specimens[0].stem
    key = f"images/{digest[:2]}/{digest[2:4]}/{digest}.png"
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=specimens[0].read_bytes())

    result = source.copy_to(digest, Store(tmp_path))

    assert result.stored.extension == "png"
    assert result.stored.path.read_bytes() == specimens[0].read_bytes()


def test_absent_image_not_found(bucket, source):
    with pytest.raises(ObjectNotFound):
        source.open_image("b" * 64)


def test_short_body_unavailable(seaweed, bucket, proxy, source, specimens, tmp_path):
    """A body cut short of its Content-Length raises SourceUnavailable and leaves no file."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.short_body(count=1, method="GET")
    store = Store(tmp_path)

    with pytest.raises(SourceUnavailable):
        source.copy_to(digest, store)

    assert store.find(digest) is None
    assert list(store.temporary_folder.iterdir()) == []


def test_sequential_gets_all_verified(seaweed, bucket, proxy, source, specimens, tmp_path):
    """Three GETs in a row on the pooled connections all arrive verified."""
    digests = seaweed.upload_images(bucket, specimens[:3])
    store = Store(tmp_path)

    for digest in digests:
        source.copy_to(digest, store)

    assert all(store.find(digest) is not None for digest in digests)
    assert proxy.statuses(method="GET") == [200, 200, 200]


def test_unopened_stream_closes(seaweed, bucket, source, specimens):
    """Closing a stream before reading it releases the response without error."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]

    with source.open_image(digest) as image:
        assert image.size == specimens[0].stat().st_size
