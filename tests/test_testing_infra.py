"""The test infrastructure itself: a real SeaweedFS server and the fault proxy in front of it."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    FlexibleChecksumError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from herbsync.testing import seaweed
from herbsync.testing.seaweed import SeaweedServer, image_key
from faultproxy import FaultProxy

SPECIMENS = sorted((Path(__file__).resolve().parent.parent / "samples" / "specimens").glob("*.jpg"))
BUCKET = "devvyn.aafc-srdc.herbarium"
NO_RETRIES = {"total_max_attempts": 1}
# Uploads without a checksum: a body corrupted on the way is then stored as it arrives.
NO_CHECKSUM = {"request_checksum_calculation": "when_required"}

MakeClient = Callable[..., Any]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    with SeaweedServer(tmp_path_factory.mktemp("seaweed")) as running:
        yield running


@pytest.fixture(scope="module")
def bucket(server: SeaweedServer) -> str:
    server.create_bucket(BUCKET)
    return BUCKET


@pytest.fixture
def proxy(server: SeaweedServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", server.s3_port) as running:
        yield running


@pytest.fixture
def make_client(server: SeaweedServer) -> Iterator[MakeClient]:
    """Return a factory of boto3 clients for the server (or ``endpoint_url``), closed after."""
    made: list[Any] = []

    def make(endpoint_url: str | None = None, **config: Any) -> Any:
        config.setdefault("retries", NO_RETRIES)
        client = server.client(endpoint_url=endpoint_url, **config)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def specimen() -> tuple[str, bytes]:
    """A real specimen image: its SHA-256 (its file name) and its bytes."""
    path = SPECIMENS[0]
    return path.stem, path.read_bytes()


def put_direct(make_client: MakeClient, bucket: str, key: str, body: bytes, **put: Any) -> None:
    make_client(**NO_CHECKSUM).put_object(Bucket=bucket, Key=key, Body=body, **put)


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


# -- the server --------------------------------------------------------------------


def test_server_runs_on_its_own_ports(server: SeaweedServer) -> None:
    assert server.endpoint_url == f"http://127.0.0.1:{server.s3_port}"
    assert len(set(server.ports)) == 10
    assert server.running
    assert server.pid is not None
    os.kill(server.pid, 0)
    assert os.getpgid(server.pid) == server.pid
    assert seaweed.healthz_ok(f"{server.endpoint_url}/healthz")
    assert server.log_path.is_file()


def test_create_bucket_with_dots_is_idempotent(
    server: SeaweedServer, bucket: str, make_client: MakeClient
) -> None:
    server.create_bucket(bucket)
    s3 = make_client()
    assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    # In open mode SeaweedFS 4.48 lists no buckets at all, so look the bucket up instead.
    assert s3.list_buckets()["Buckets"] == []
    assert s3.list_objects_v2(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_upload_images_uses_content_addressed_keys(
    server: SeaweedServer, bucket: str, make_client: MakeClient
) -> None:
    files = SPECIMENS[:3]
    digests = server.upload_images(bucket, files, prefix="images")
    assert digests == [path.stem for path in files]
    s3 = make_client()
    for path, digest in zip(files, digests):
        key = f"images/{digest[0:2]}/{digest[2:4]}/{digest}.jpg"
        assert image_key(digest) == key
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ContentLength"] == path.stat().st_size
        assert head["ContentType"] == "image/jpeg"
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == digest


def test_stop_ends_the_process_and_is_idempotent(tmp_path: Path) -> None:
    config = tmp_path / "s3.json"
    config.write_text(json.dumps(IDENTITIES), encoding="utf-8")
    server = SeaweedServer(tmp_path / "data", s3_config=config).start()
    pid, ports = server.pid, list(server.ports)
    try:
        check_identities(server)
    finally:
        server.stop()
    assert pid is not None
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    leftovers = [p for port in ports for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    assert leftovers == []
    server.stop()


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


def check_identities(server: SeaweedServer) -> None:
    """With ``-s3.config`` the helpers use the Admin keys and the reader cannot write."""
    server.create_bucket("auth-bucket")
    [digest] = server.upload_images("auth-bucket", SPECIMENS[:1])
    reader = server.client("test-ro-ak", "test-ro-sk", retries=NO_RETRIES)
    try:
        assert get_bytes(reader, "auth-bucket", image_key(digest)) == SPECIMENS[0].read_bytes()
        with pytest.raises(ClientError) as denied:
            reader.put_object(Bucket="auth-bucket", Key="x", Body=b"x")
    finally:
        reader.close()
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_start_raises_with_log_tail_when_weed_exits_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = seaweed.free_ports(10)
    with socket.socket() as blocker:  # holds the master port, answers nothing
        blocker.bind(("127.0.0.1", ports[0]))
        blocker.listen()
        monkeypatch.setattr(seaweed, "free_ports", lambda count: ports[:count])
        doomed = SeaweedServer(tmp_path)
        with pytest.raises(RuntimeError, match="exited early") as error:
            doomed.start()
    assert "command log" in str(error.value)
    assert f"port {ports[0]}" in str(error.value)
    assert not doomed.running
    doomed.stop()


# -- the proxy, no faults ----------------------------------------------------------


def test_put_and_get_specimen_through_proxy(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    digest, body = specimen
    key = image_key(digest, prefix="via-proxy")
    s3 = make_client(proxy.url)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(body)
    got = get_bytes(s3, bucket, key)
    assert hashlib.sha256(got).hexdigest() == digest
    assert get_bytes(make_client(), bucket, key) == body
    assert [(entry.method, entry.status) for entry in proxy.log] == [
        ("PUT", 200),
        ("HEAD", 200),
        ("GET", 200),
    ]
    assert all(entry.path.startswith(f"/{bucket}/via-proxy/") for entry in proxy.log)


def test_multipart_upload_of_large_object_streams_through_proxy(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, tmp_path: Path
) -> None:
    source = tmp_path / "large.bin"
    source.write_bytes(os.urandom(20 * 1024 * 1024))
    s3 = make_client(proxy.url)
    transfer = TransferConfig(multipart_threshold=8 * 1024 * 1024, max_concurrency=2)
    s3.upload_file(str(source), bucket, "large.bin", Config=transfer)
    target = tmp_path / "back.bin"
    s3.download_file(bucket, "large.bin", str(target), Config=transfer)
    assert target.read_bytes() == source.read_bytes()
    assert "POST" in {entry.method for entry in proxy.log}
    assert set(proxy.statuses()) <= {200, 206}


def test_chunked_request_body_is_forwarded(
    proxy: FaultProxy, bucket: str, make_client: MakeClient
) -> None:
    pieces = [b"chunk-one;", b"chunk-two;" * 1000, b"end"]
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request("PUT", f"/{bucket}/chunked.txt", body=iter(pieces), encode_chunked=True)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 200
    assert get_bytes(make_client(), bucket, "chunked.txt") == b"".join(pieces)


# -- the proxy, with faults --------------------------------------------------------


def test_slowdown_is_retried_by_boto3(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    digest, body = specimen
    put_direct(make_client, bucket, "retry.jpg", body)
    proxy.fail(503, "SlowDown", count=2, method="GET")
    s3 = make_client(proxy.url, retries={"mode": "standard", "max_attempts": 3})
    assert hashlib.sha256(get_bytes(s3, bucket, "retry.jpg")).hexdigest() == digest
    assert proxy.statuses("GET") == [503, 503, 200]
    assert proxy.pending() == 0


def test_internal_error_surfaces_when_retries_run_out(
    proxy: FaultProxy, bucket: str, make_client: MakeClient
) -> None:
    put_direct(make_client, bucket, "error.txt", b"x")
    proxy.fail(500, "InternalError", count=5, path="/error.txt")
    s3 = make_client(proxy.url, retries={"mode": "standard", "total_max_attempts": 2})
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="error.txt")
    assert error.value.response["Error"]["Code"] == "InternalError"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert proxy.statuses() == [500, 500]
    assert proxy.pending() == 3
    with pytest.raises(ClientError) as head_error:  # HEAD has no body: the code is the status
        s3.head_object(Bucket=bucket, Key="error.txt")
    assert head_error.value.response["Error"]["Code"] == "500"
    proxy.clear()
    assert get_bytes(s3, bucket, "error.txt") == b"x"


def test_faults_only_hit_matching_requests(
    proxy: FaultProxy, bucket: str, make_client: MakeClient
) -> None:
    put_direct(make_client, bucket, "match.txt", b"m")
    proxy.fail(503, "SlowDown", count=1, path="/other.txt")
    proxy.fail(503, "SlowDown", count=1, method="PUT")
    s3 = make_client(proxy.url)
    assert get_bytes(s3, bucket, "match.txt") == b"m"
    assert proxy.pending() == 2
    with pytest.raises(ClientError, match="SlowDown"):
        s3.put_object(Bucket=bucket, Key="match.txt", Body=b"new")
    assert proxy.pending() == 1
    assert get_bytes(s3, bucket, "match.txt") == b"m"


def test_cut_after_breaks_the_body_stream(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    _, body = specimen
    put_direct(make_client, bucket, "cut.jpg", body)
    proxy.cut_after(1000, count=1, method="GET")
    s3 = make_client(proxy.url)
    response = s3.get_object(Bucket=bucket, Key="cut.jpg")
    assert response["ContentLength"] == len(body)
    with pytest.raises(ResponseStreamingError):
        response["Body"].read()
    assert get_bytes(s3, bucket, "cut.jpg") == body


def test_short_body_breaks_the_body_stream(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    _, body = specimen
    put_direct(make_client, bucket, "short.jpg", body)
    proxy.short_body(count=1, method="GET")
    s3 = make_client(proxy.url)
    with pytest.raises(ResponseStreamingError):
        get_bytes(s3, bucket, "short.jpg")
    assert get_bytes(s3, bucket, "short.jpg") == body


def test_flipped_response_byte_passes_when_no_checksum_is_stored(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    _, body = specimen
    put_direct(make_client, bucket, "flip-get.jpg", body)
    proxy.flip_byte(count=1, offset=100, method="GET")
    got = get_bytes(make_client(proxy.url), bucket, "flip-get.jpg")
    assert len(got) == len(body)
    assert [i for i, (a, b) in enumerate(zip(got, body)) if a != b] == [100]
    assert got[100] == body[100] ^ 0xFF


def test_flipped_response_byte_fails_boto3_check_when_checksum_is_stored(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    _, body = specimen
    put_direct(make_client, bucket, "flip-sum.jpg", body, ChecksumAlgorithm="SHA256")
    proxy.flip_byte(count=1, method="GET")
    with pytest.raises(FlexibleChecksumError):
        get_bytes(make_client(proxy.url), bucket, "flip-sum.jpg")


def test_flipped_request_byte_is_stored_when_put_has_no_checksum(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    _, body = specimen
    proxy.flip_byte(count=1, offset=7, method="PUT")
    make_client(proxy.url, **NO_CHECKSUM).put_object(Bucket=bucket, Key="flip-put.jpg", Body=body)
    stored = get_bytes(make_client(), bucket, "flip-put.jpg")
    assert [i for i, (a, b) in enumerate(zip(stored, body)) if a != b] == [7]


def test_flipped_request_byte_is_rejected_when_put_has_a_checksum(
    proxy: FaultProxy, bucket: str, make_client: MakeClient, specimen: tuple[str, bytes]
) -> None:
    _, body = specimen
    proxy.flip_byte(count=1, method="PUT")
    s3 = make_client(proxy.url)
    with pytest.raises(ClientError) as error:
        s3.put_object(Bucket=bucket, Key="flip-bad.jpg", Body=body, ChecksumAlgorithm="SHA256")
    assert error.value.response["Error"]["Code"] == "BadDigest"
    with pytest.raises(ClientError, match="404"):
        make_client().head_object(Bucket=bucket, Key="flip-bad.jpg")


def test_refuse_gives_a_connection_error(
    proxy: FaultProxy, bucket: str, make_client: MakeClient
) -> None:
    put_direct(make_client, bucket, "refuse.txt", b"r")
    s3 = make_client(proxy.url)
    assert get_bytes(s3, bucket, "refuse.txt") == b"r"  # leaves a kept-alive connection
    proxy.refuse(True)
    for _ in range(2):  # the kept-alive connection, then a new one
        # Accepted then closed: ConnectionClosedError, not EndpointConnectionError.
        with pytest.raises(ConnectionClosedError):
            s3.get_object(Bucket=bucket, Key="refuse.txt")
    assert proxy.refused_connections >= 2
    proxy.refuse(False)
    assert get_bytes(s3, bucket, "refuse.txt") == b"r"


def test_stall_beyond_read_timeout_raises_read_timeout(
    proxy: FaultProxy, bucket: str, make_client: MakeClient
) -> None:
    put_direct(make_client, bucket, "stall.txt", b"s")
    proxy.stall(5, count=1, method="GET")
    s3 = make_client(proxy.url, read_timeout=1, connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        s3.get_object(Bucket=bucket, Key="stall.txt")
    assert 0.9 < time.monotonic() - started < 4
    proxy.clear()
    assert get_bytes(s3, bucket, "stall.txt") == b"s"
