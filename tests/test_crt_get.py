"""Image downloads through the CRT client (``copy_to``), against SeaweedFS behind the fault proxy."""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
from structlog.testing import capture_logs

from storecheck import temporary_files
from herbsync.errors import (
    AccessDenied,
    DigestMismatch,
    ObjectNotFound,
    SourceError,
    SourceUnavailable,
    TransferAborted,
)
from herbsync.sources.base import FileSink
from herbsync.sources.s3 import LARGE_IMAGE_BYTES, S3ImageSource
from herbsync.sources.s3crt import PART_SIZE, Endpoint
from herbsync.store import Store
from herbsync.testing.seaweed import image_key


@pytest.fixture
def source(proxy, bucket) -> S3ImageSource:
    created = S3ImageSource(bucket, region="us-east-1", endpoint_url=proxy.url, read_timeout=2.0)
    assert created.downloader is not None
    return created


def test_endpoint_path_style_prefix():
    endpoint = Endpoint.from_object_url("http://127.0.0.1:9000/my.bucket/images/ab/cd/x.jpg?X-Amz-Date=1", "images/ab/cd/x.jpg")

    assert endpoint.scheme == "http"
    assert endpoint.host == "127.0.0.1:9000"
    assert endpoint.path_of("images/a b.jpg") == "/my.bucket/images/a%20b.jpg"


def test_endpoint_virtual_host_prefix():
    endpoint = Endpoint.from_object_url("https://bucket.s3.ca-central-1.amazonaws.com/k/x.jpg", "k/x.jpg")

    assert endpoint.host == "bucket.s3.ca-central-1.amazonaws.com"
    assert endpoint.path_of("k/y.jpg") == "/k/y.jpg"


def test_endpoint_rejects_url_without_key():
    with pytest.raises(ValueError, match="images/x.jpg"):
        Endpoint.from_object_url("http://127.0.0.1:9000/bucket/other.jpg", "images/x.jpg")


def test_copy_stores_verified_image(seaweed, bucket, proxy, source, specimens, tmp_path):
    digests = seaweed.upload_images(bucket, specimens[:3])
    store = Store(tmp_path)

    for digest in digests:
        result = source.copy_to(digest, store)
        assert result.stored.path == store.path_for(digest)
        assert hashlib.sha256(result.stored.path.read_bytes()).hexdigest() == digest

    # The CRT client asks for the first part with a Range header, so a whole
    # small object comes back as 206 Partial Content.
    assert proxy.statuses(method="GET") == [206, 206, 206]
    assert temporary_files(store.root) == set()


def test_large_object_arrives_in_parts(seaweed, bucket, source, tmp_path):
    """An object of 2.5 parts is fetched in ranged GETs and reassembled in order."""
    body = os.urandom(PART_SIZE * 5 // 2)
    digest = hashlib.sha256(body).hexdigest()
    seaweed.client().put_object(Bucket=bucket, Key=image_key(digest), Body=body)
    store = Store(tmp_path)

    result = source.copy_to(digest, store)

    assert result.stored.size == len(body)
    assert result.stored.path.read_bytes() == body


def test_large_image_streamed_through_urllib3(seaweed, bucket, proxy, source, tmp_path):
    """Images of LARGE_IMAGE_BYTES or more leave the CRT client at its headers and stream in one GET."""
    bodies = [os.urandom(LARGE_IMAGE_BYTES + 1) for _ in range(2)]
    digests = [hashlib.sha256(body).hexdigest() for body in bodies]
    for digest, body in zip(digests, bodies):
        seaweed.client().put_object(Bucket=bucket, Key=image_key(digest), Body=body)
    store = Store(tmp_path)

    for digest, body in zip(digests, bodies):
        assert source.copy_to(digest, store).stored.path.read_bytes() == body

    # The second image is known to be large from the first, so it goes
    # straight to one whole-object GET.
    assert proxy.statuses(method="GET")[-2:] == [200, 200]
    assert temporary_files(store.root) == set()


def test_copy_without_awscrt_uses_urllib3(seaweed, bucket, proxy, specimens, tmp_path, monkeypatch):
    """Where awscrt cannot be imported, copy_to streams through urllib3 and still stores the image."""
    monkeypatch.setitem(sys.modules, "herbsync.sources.s3crt", None)
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    source = S3ImageSource(bucket, region="us-east-1", endpoint_url=proxy.url)

    result = source.copy_to(digest, Store(tmp_path))

    assert source.downloader is None
    assert result.stored.path.read_bytes() == specimens[0].read_bytes()
    assert proxy.statuses(method="GET") == [200]


def test_file_sink_written(seaweed, bucket, source, specimens, tmp_path):
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    target = tmp_path / "copy.jpg"

    source.copy_to(digest, FileSink(target))

    assert target.read_bytes() == specimens[0].read_bytes()


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (403, "AccessDenied", AccessDenied),
        (403, "SignatureDoesNotMatch", AccessDenied),
        (400, "InvalidRequest", SourceError),
    ],
)
def test_error_status_mapped(status, code, error_type, seaweed, bucket, proxy, source, specimens, tmp_path):
    """An error response raises the herbsync error for its code, without a retry."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.fail(status, code, count=1, method="GET")
    store = Store(tmp_path)

    with pytest.raises(SourceError) as caught:
        source.copy_to(digest, store)

    assert type(caught.value) is error_type
    assert code in str(caught.value)
    assert proxy.statuses(method="GET") == [status]
    assert store.find(digest) is None
    assert temporary_files(store.root) == set()


def test_server_errors_retried_then_unavailable(seaweed, bucket, proxy, source, specimens, tmp_path):
    """Five 503 responses in a row: four logged retries, then SourceUnavailable with the code."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.fail(503, "SlowDown", count=5, method="GET")

    with capture_logs() as logs, pytest.raises(SourceUnavailable) as caught:
        source.copy_to(digest, Store(tmp_path))

    assert "server returned 503" in str(caught.value)
    retries = [entry for entry in logs if entry["event"] == "s3.retrying"]
    assert [entry["attempt"] for entry in retries] == [2, 3, 4, 5]
    assert all("server returned 503" in entry["reason"] for entry in retries)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_error_retried_then_stored(status, seaweed, bucket, proxy, source, specimens, tmp_path):
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.fail(status, "InternalError", count=1, method="GET")

    with capture_logs() as logs:
        result = source.copy_to(digest, Store(tmp_path))

    assert result.stored.path.read_bytes() == specimens[0].read_bytes()
    retries = [entry for entry in logs if entry["event"] == "s3.retrying"]
    assert len(retries) == 1
    assert str(status) in retries[0]["reason"]


def test_not_found_without_body_maps_to_not_found(seaweed, bucket, proxy, source, specimens, tmp_path):
    """A 404 is ObjectNotFound even when the CRT client hands over no error code."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.fail(404, "NoSuchKey", count=2, method="GET")

    with pytest.raises(ObjectNotFound):
        source.copy_to(digest, Store(tmp_path))


def test_throttle_retried_then_stored(seaweed, bucket, proxy, source, specimens, tmp_path):
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.fail(503, "SlowDown", count=2, method="GET")
    store = Store(tmp_path)

    result = source.copy_to(digest, store)

    assert result.stored.path.read_bytes() == specimens[0].read_bytes()
    assert proxy.statuses(method="GET") == [503, 503, 206]


def test_short_body_retried(seaweed, bucket, proxy, source, specimens, tmp_path):
    """A body cut short of its Content-Length is fetched again, and only the whole one is kept."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.short_body(count=1, method="GET")
    store = Store(tmp_path)

    with capture_logs() as logs:
        result = source.copy_to(digest, store)

    assert result.stored.path.read_bytes() == specimens[0].read_bytes()
    assert len([entry for entry in logs if entry["event"] == "s3.retrying"]) == 1
    assert temporary_files(store.root) == set()


def test_short_body_every_time_unavailable(seaweed, bucket, proxy, source, specimens, tmp_path):
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.short_body(count=5, method="GET")
    store = Store(tmp_path)

    with pytest.raises(SourceUnavailable):
        source.copy_to(digest, store)

    assert store.find(digest) is None
    assert temporary_files(store.root) == set()


def test_connection_cut_retried(seaweed, bucket, proxy, source, specimens, tmp_path):
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.cut_after(1000, count=2, method="GET")
    store = Store(tmp_path)

    result = source.copy_to(digest, store)

    assert result.stored.path.read_bytes() == specimens[0].read_bytes()
    assert temporary_files(store.root) == set()


def test_stall_dropped_after_read_timeout(seaweed, bucket, proxy, source, specimens, tmp_path):
    """A response that sends nothing for longer than read_timeout is cancelled and tried again."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.stall(30, count=1, method="GET")
    store = Store(tmp_path)

    with capture_logs() as logs:
        result = source.copy_to(digest, store)

    assert result.stored.path.read_bytes() == specimens[0].read_bytes()
    retries = [entry for entry in logs if entry["event"] == "s3.retrying"]
    assert len(retries) == 1
    assert "read timeout" in retries[0]["reason"]
    proxy.clear()


def test_flipped_byte_never_stored(seaweed, bucket, proxy, source, specimens, tmp_path):
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    proxy.flip_byte(count=1, method="GET")
    store = Store(tmp_path)

    with pytest.raises(DigestMismatch):
        source.copy_to(digest, store)

    assert store.find(digest) is None
    assert temporary_files(store.root) == set()


def test_missing_key_falls_back_to_listing(seaweed, bucket, source, specimens, tmp_path):
    """An image stored as .png is found by listing after the .jpg GET returns 404."""
    digest = specimens[0].stem
    key = image_key(digest, "png")
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=specimens[0].read_bytes())

    result = source.copy_to(digest, Store(tmp_path))

    assert result.stored.extension == "png"
    assert result.origin == f"s3://{bucket}/{key}"
    assert result.stored.path.read_bytes() == specimens[0].read_bytes()


def test_absent_image_not_found(bucket, source, tmp_path):
    with pytest.raises(ObjectNotFound):
        source.copy_to("b" * 64, Store(tmp_path))


def test_empty_object_verified(seaweed, bucket, source, tmp_path):
    digest = hashlib.sha256(b"").hexdigest()
    seaweed.client().put_object(Bucket=bucket, Key=image_key(digest), Body=b"")

    result = source.copy_to(digest, Store(tmp_path))

    assert result.stored.size == 0
    assert result.stored.path.read_bytes() == b""


def test_missing_credentials_access_denied(seaweed, bucket, proxy, no_credentials, tmp_path):
    source = S3ImageSource(bucket, region="us-east-1", endpoint_url=proxy.url)

    with pytest.raises(AccessDenied, match="no AWS credentials found"):
        source.copy_to("c" * 64, Store(tmp_path / "store"))

    assert proxy.statuses(method="GET") == []


def test_shutdown_abort_leaves_nothing(seaweed, bucket, source, specimens, tmp_path):
    """A store that is aborting stops the download at the first chunk and keeps no file."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    store = Store(tmp_path)
    store.aborting.set()

    with pytest.raises(TransferAborted):
        source.copy_to(digest, store)

    assert store.find(digest) is None
    assert temporary_files(store.root) == set()
