"""Staged writes and batched commits of the store, on the local filesystem."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

import herbsync.store
from herbsync.errors import DigestMismatch, StoreError
from herbsync.store import Store


def _blob(number: int) -> tuple[str, bytes]:
    data = f"image {number} ".encode() * 500
    return hashlib.sha256(data).hexdigest(), data


def test_stage_writes_only_temporary(tmp_path):
    store = Store(tmp_path)
    digest, data = _blob(1)

    staged = store.stage(digest, "jpg", [data], "test")

    assert staged.temporary.parent == store.temporary_folder
    assert staged.temporary.read_bytes() == data
    assert staged.path == store.path_for(digest, "jpg")
    assert not staged.path.exists()


def test_stage_rejects_wrong_bytes(tmp_path):
    store = Store(tmp_path)
    digest, _ = _blob(1)

    with pytest.raises(DigestMismatch):
        store.stage(digest, "jpg", [b"other bytes"], "test")

    assert list(store.temporary_folder.iterdir()) == []


@pytest.mark.parametrize("syncfs_available", [True, False])
def test_commit_places_every_file(tmp_path, monkeypatch, syncfs_available):
    """Committed files reach their final paths with their bytes, with syncfs or with per-file fsync."""
    if not syncfs_available:
        monkeypatch.setattr(herbsync.store, "_syncfs", None)
    store = Store(tmp_path)
    blobs = [_blob(number) for number in range(5)]
    staged = [store.stage(digest, "jpg", [data], "test") for digest, data in blobs]

    results = store.commit(staged)

    assert [result.error for result in results] == [None] * 5
    for (digest, data), result in zip(blobs, results, strict=True):
        assert result.stored is not None
        assert result.stored.path.read_bytes() == data
        assert result.stored.digest == digest
    assert list(store.temporary_folder.iterdir()) == []


def test_commit_reports_failed_rename(tmp_path):
    """A file whose folder cannot be made gets a StoreError, and the other file is placed."""
    store = Store(tmp_path)
    (good_digest, good_data), (bad_digest, bad_data) = _blob(1), _blob(2)
    good = store.stage(good_digest, "jpg", [good_data], "test")
    bad = store.stage(bad_digest, "jpg", [bad_data], "test")
    # A plain file where the first-level folder should be makes the rename fail.
    shutil.rmtree(bad.path.parent.parent)
    bad.path.parent.parent.write_bytes(b"")

    results = store.commit([good, bad])

    assert results[0].stored is not None
    assert results[0].stored.path.read_bytes() == good_data
    assert results[1].stored is None
    assert isinstance(results[1].error, StoreError)
    assert not bad.temporary.exists()
    assert os.listdir(store.temporary_folder) == []


def test_stage_makes_image_folder(tmp_path):
    """Staging makes the image's ab/cd folder, so commit only renames."""
    store = Store(tmp_path)
    digest, data = _blob(1)

    staged = store.stage(digest, "jpg", [data], "test")

    assert staged.path.parent.is_dir()
    assert not staged.path.exists()


def test_stage_reports_folder_it_cannot_make(tmp_path):
    """A plain file where the ab folder belongs fails the stage, naming the folder, with nothing left in .tmp."""
    store = Store(tmp_path)
    digest, data = _blob(1)
    store.path_for(digest, "jpg").parent.parent.write_bytes(b"")

    with pytest.raises(StoreError, match=digest[0:2]):
        store.stage(digest, "jpg", [data], "test")

    assert os.listdir(store.temporary_folder) == []


def test_commit_of_nothing(tmp_path):
    assert Store(tmp_path).commit([]) == []
