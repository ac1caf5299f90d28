"""End to end: the daemon uploads images dropped into its inbox, and ``herbsync put``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

from conftest import TEST_KEYS, wait_until

from herbsync.digest import calculate_sha256
from herbsync.testing.seaweed import image_key


def _object_exists(client, bucket, key):
    try:
        client.head_object(Bucket=bucket, Key=key)
    except client.exceptions.ClientError:
        return False
    return True


def test_inbox_uploads_and_stores(seaweed, bucket, s3_table, specimens, start_daemon, tmp_path):
    """Images dropped into the inbox reach S3 under their hash and the local store; status shows the inbox."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    daemon = start_daemon(
        s3_table, upload={"inbox": str(inbox), "settle_seconds": 0.2, "target": s3_table}
    )
    client = seaweed.client()

    for path in specimens[:3]:
        shutil.copy(path, inbox / f"station-{path.name[:8]}.JPG")
    digests = [calculate_sha256(path) for path in specimens[:3]]
    wait_until(
        lambda: all(_object_exists(client, bucket, image_key(digest)) for digest in digests), "the uploads"
    )
    wait_until(lambda: all(daemon.stored(digest).is_file() for digest in digests), "the store copies")

    for digest in digests:
        body = client.get_object(Bucket=bucket, Key=image_key(digest))["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest
    wait_until(lambda: not list(inbox.iterdir()), "the originals to move out of the inbox")
    status = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "status", "--json", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
    )
    uploads = json.loads(status.stdout)["uploads"]
    assert uploads["inbox"] == str(inbox)
    assert uploads["uploaded"] == 3
    assert uploads["failed"] == 0


def test_put_command_prints_keys_keeps_files(seaweed, bucket, s3_table, specimens, tmp_path):
    """herbsync put uploads the given files, prints hash and key, and leaves them in place."""
    from conftest import write_config

    config = write_config(
        tmp_path / "put.toml", {"upload": {"target": s3_table}, "source": s3_table}
    )
    files = [shutil.copy(path, tmp_path / path.name) for path in specimens[:2]]

    result = subprocess.run(
        [sys.executable, "-m", "herbsync.cli", "put", "--no-progress", "--config", str(config), *map(str, files)],
        capture_output=True,
        text=True,
        env={**os.environ, **TEST_KEYS},
    )

    assert result.returncode == 0, result.stderr
    for path in specimens[:2]:
        digest = calculate_sha256(path)
        assert f"{digest}  {image_key(digest)}" in result.stdout
        assert (tmp_path / path.name).is_file()
        assert _object_exists(seaweed.client(), bucket, image_key(digest))
