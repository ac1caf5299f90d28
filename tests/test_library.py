"""The library API, as scripts use it, against a real SeaweedFS server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from herbsync.testing.seaweed import image_key


if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLE_HASH = "000e426d6ed12c347a937c47f568088a8daa32cdea3127d90f1eca5653831c84"
PRODUCTION_BUCKET = "devvyn.aafc-srdc.herbarium"


@pytest.fixture
def production_bucket(seaweed, specimens, monkeypatch):
    """The production bucket name on the test server, reached through boto3's endpoint variable."""
    seaweed.create_bucket(PRODUCTION_BUCKET)
    seaweed.upload_images(PRODUCTION_BUCKET, specimens)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweed.endpoint_url)
    return PRODUCTION_BUCKET


class TestOriginalExamples:
    """The examples of the original image-source documentation, with only the import changed."""

    def test_basic_usage(self, production_bucket, tmp_path, monkeypatch):
        """exists, get_image_path and download_image work with DEFAULT_S3_CONFIG."""
        monkeypatch.chdir(tmp_path)
        from herbsync.image_source import DEFAULT_S3_CONFIG, ImageSourceConfig

        source = ImageSourceConfig.from_config(DEFAULT_S3_CONFIG)
        hash_value = EXAMPLE_HASH
        exists = source.exists(hash_value)
        image_path = source.get_image_path(hash_value)
        local_path = Path("./downloaded_image.jpg")
        success = source.download_image(hash_value, local_path)

        assert exists is True
        assert image_path.endswith(f"/{PRODUCTION_BUCKET}/images/00/0e/{EXAMPLE_HASH}.jpg")
        assert success is True
        from herbsync.image_source import calculate_sha256

        assert calculate_sha256(local_path) == EXAMPLE_HASH

    def test_development_workflow_fills_cache(self, production_bucket, seaweed, specimens, tmp_path, monkeypatch):
        """The first download fills ./dev_cache; later calls are served from it."""
        monkeypatch.chdir(tmp_path)
        from herbsync.image_source import ImageSourceConfig

        dev_config = {
            "type": "multi",
            "sources": [
                {"type": "local", "base_path": "./dev_cache"},
                {"type": "s3", "bucket": "devvyn.aafc-srdc.herbarium", "region": "ca-central-1"},
            ],
        }
        source = ImageSourceConfig.from_config(dev_config)
        image_hashes = [path.stem for path in specimens[:3]]
        for hash_value in image_hashes:
            local_path = Path(f"./processing/{hash_value}.jpg")
            assert source.download_image(hash_value, local_path) is True

        cached = tmp_path / "dev_cache" / EXAMPLE_HASH[0:2] / EXAMPLE_HASH[2:4] / f"{EXAMPLE_HASH}.jpg"
        assert cached.is_file()
        seaweed.client().delete_object(Bucket=production_bucket, Key=image_key(EXAMPLE_HASH))
        again = tmp_path / "again.jpg"
        assert source.download_image(EXAMPLE_HASH, again) is True
        assert again.read_bytes() == cached.read_bytes()

    def test_url_extraction_migration(self, production_bucket, tmp_path):
        """extract_sha256_from_url feeds download_image, as in the migration guide."""
        from herbsync.image_source import DEFAULT_S3_CONFIG, ImageSourceConfig, extract_sha256_from_url

        url = f"https://s3.ca-central-1.amazonaws.com/{PRODUCTION_BUCKET}/images/00/0e/{EXAMPLE_HASH}.jpg"
        hash_value = extract_sha256_from_url(url)
        source = ImageSourceConfig.from_config(DEFAULT_S3_CONFIG)

        assert source.download_image(hash_value, tmp_path / "x.jpg") is True


class TestExtractSha256:
    """extract_sha256_from_url reads every URL form in use."""

    @pytest.mark.parametrize(
        "url",
        [
            f"https://s3.ca-central-1.amazonaws.com/{PRODUCTION_BUCKET}/images/00/0e/{EXAMPLE_HASH}.jpg",
            f"https://{PRODUCTION_BUCKET}.s3.ca-central-1.amazonaws.com/images/00/0e/{EXAMPLE_HASH}.jpg",
            f"s3://{PRODUCTION_BUCKET}/images/00/0e/{EXAMPLE_HASH}.jpg",
            f"images/00/0e/{EXAMPLE_HASH}.jpg",
            f"{EXAMPLE_HASH}.jpg",
            f"  {EXAMPLE_HASH.upper()}.JPG  ",
            f"https://example.org/x/{EXAMPLE_HASH}.tif?versionId=3",
        ],
    )
    def test_accepts_form(self, url):
        """Each form gives the lowercase hash."""
        from herbsync import extract_sha256_from_url

        assert extract_sha256_from_url(url) == EXAMPLE_HASH

    @pytest.mark.parametrize("url", ["https://s3.amazonaws.com/b/images/readme.txt", "", "abc.jpg"])
    def test_rejects_input_without_hash(self, url):
        """Input without a hash raises ValueError naming the input."""
        from herbsync import extract_sha256_from_url

        with pytest.raises(ValueError) as raised:
            extract_sha256_from_url(url)

        assert repr(url) in str(raised.value)


class TestSources:
    """Behaviour the original module promised or got wrong."""

    def test_from_config_creates_no_folders(self, tmp_path):
        """Building sources touches nothing on disk."""
        from herbsync import ImageSourceConfig

        config = {
            "type": "multi",
            "sources": [
                {"type": "local", "base_path": str(tmp_path / "cache")},
                {"type": "s3", "bucket": "b", "region": "ca-central-1"},
            ],
        }

        ImageSourceConfig.from_config(config)

        assert list(tmp_path.iterdir()) == []

    def test_download_rejects_wrong_bytes(self, seaweed, bucket, specimens, tmp_path):
        """An object whose bytes do not match its key gives False, a logged reason, and no file."""
        from herbsync import ImageSourceConfig

        claimed = specimens[0].stem
        seaweed.client().put_object(Bucket=bucket, Key=image_key(claimed), Body=specimens[1].read_bytes())
        source = ImageSourceConfig.from_config(
            {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": seaweed.endpoint_url}
        )
        target = tmp_path / "out.jpg"

        with capture_logs() as logs:
            success = source.download_image(claimed, target)

        assert success is False
        assert not target.exists()
        assert list(tmp_path.iterdir()) == []
        failures = [entry for entry in logs if entry["event"] == "download.failed"]
        assert len(failures) == 1
        assert failures[0]["kind"] == "DigestMismatch"
        assert f"expected sha256 {claimed}" in failures[0]["error"]

    def test_download_missing_returns_false(self, seaweed, bucket, tmp_path):
        """A hash absent from the bucket gives False and a not-found reason."""
        from herbsync import ImageSourceConfig

        source = ImageSourceConfig.from_config(
            {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": seaweed.endpoint_url}
        )

        with capture_logs() as logs:
            success = source.download_image("a" * 64, tmp_path / "out.jpg")

        assert success is False
        assert logs[-1]["kind"] == "ObjectNotFound"

    def test_anonymous_read(self, seaweed, bucket, specimens, tmp_path):
        """anonymous = true reads a public bucket without credentials."""
        from herbsync import ImageSourceConfig

        digest = seaweed.upload_images(bucket, specimens[:1])[0]
        source = ImageSourceConfig.from_config(
            {
                "type": "s3",
                "bucket": bucket,
                "region": "us-east-1",
                "endpoint_url": seaweed.endpoint_url,
                "anonymous": True,
            }
        )

        assert source.download_image(digest, tmp_path / "a.jpg") is True

    def test_multi_falls_back_after_corrupt_cache(self, seaweed, bucket, specimens, tmp_path):
        """A cache file with wrong bytes is skipped and S3's good copy is delivered."""
        from herbsync import ImageSourceConfig

        digest = seaweed.upload_images(bucket, specimens[:1])[0]
        cache = tmp_path / "cache"
        rotten = cache / digest[0:2] / digest[2:4] / f"{digest}.jpg"
        rotten.parent.mkdir(parents=True)
        rotten.write_bytes(b"not the image")
        source = ImageSourceConfig.from_config(
            {
                "type": "multi",
                "sources": [
                    {"type": "local", "base_path": str(cache)},
                    {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": seaweed.endpoint_url},
                ],
            }
        )
        target = tmp_path / "out.jpg"

        assert source.download_image(digest, target) is True

        assert target.read_bytes() == specimens[0].read_bytes()
        assert rotten.read_bytes() == specimens[0].read_bytes()

    def test_unknown_type_names_value(self):
        """An unknown source type is rejected naming the value."""
        from herbsync import ConfigError, ImageSourceConfig

        with pytest.raises(ConfigError, match="'ftp'"):
            ImageSourceConfig.from_config({"type": "ftp"})


def test_example_setups_load():
    """Each named setup in config/image_source_examples.toml loads with from_config."""
    from herbsync import ImageSourceConfig, LocalImageSource, MultiImageSource, S3ImageSource

    with open(REPOSITORY / "config" / "image_source_examples.toml", "rb") as stream:
        examples = tomllib.load(stream)

    assert sorted(examples) == ["development", "local_first", "local_only", "production", "s3_only", "testing"]
    assert isinstance(ImageSourceConfig.from_config(examples["s3_only"]), S3ImageSource)
    assert isinstance(ImageSourceConfig.from_config(examples["local_only"]), LocalImageSource)
    for name in ("local_first", "development", "production", "testing"):
        assert isinstance(ImageSourceConfig.from_config(examples[name]), MultiImageSource)
