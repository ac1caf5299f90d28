"""Downloads over HTTPS, through a TLS relay in front of SeaweedFS, with the CA given in AWS_CA_BUNDLE."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import trustme

from herbsync.errors import SourceError
from herbsync.sources.s3 import S3ImageSource
from herbsync.store import Store
from tlsproxy import TlsRelay


@pytest.fixture
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def relay(seaweed, authority) -> Iterator[TlsRelay]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    with TlsRelay(server_context, seaweed.s3_port) as running:
        yield running


@pytest.fixture
def keys(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")


def test_https_download_with_ca_bundle(
    seaweed, bucket, relay, authority, keys, specimens, tmp_path, monkeypatch
):
    """The CRT client trusts the CA named in AWS_CA_BUNDLE and stores a verified image."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    source = S3ImageSource(bucket, region="us-east-1", endpoint_url=relay.url)

    result = source.copy_to(digest, Store(tmp_path / "store"))

    assert source.downloader is not None
    assert source.downloader.endpoint.scheme == "https"
    assert result.stored.path.read_bytes() == specimens[0].read_bytes()


def test_https_untrusted_certificate_rejected(
    seaweed, bucket, relay, keys, specimens, tmp_path, monkeypatch
):
    """Without the CA, the CRT client rejects the relay's certificate at once, naming the fix."""
    digest = seaweed.upload_images(bucket, specimens[:1])[0]
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    source = S3ImageSource(bucket, region="us-east-1", endpoint_url=relay.url)
    store = Store(tmp_path / "store")

    with pytest.raises(SourceError, match="AWS_CA_BUNDLE") as caught:
        source.copy_to(digest, store)

    assert type(caught.value) is SourceError
    assert "TLS connection to 127.0.0.1" in str(caught.value)
    assert store.find(digest) is None
