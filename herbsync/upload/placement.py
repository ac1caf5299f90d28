"""Placing an uploaded file in the local store under its SHA-256, verified.

``copy_into_store`` streams the file through ``Store.place``, which writes a
temporary copy, checks its digest and renames it into place.
``link_into_store`` makes a hard link in the store's temporary folder
instead, hashes it, and renames it into place. It copies instead when the
inbox and the store are on different filesystems or linking fails.
Either way a file already in the store that hashes right is kept as it is.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

import structlog

from herbsync.digest import calculate_sha256
from herbsync.errors import DigestMismatch, FileChanged, StoreError, StoreFull
from herbsync.store import STORED_FILE_MODE, Store, copy_chunks, fsync_directory


log = structlog.get_logger("herbsync.upload")


def find_verified(store: Store, digest: str, extension: str) -> Path | None:
    """Return the stored file for ``digest`` if it hashes right; quarantine it if it does not."""
    path = store.find(digest, extension)
    if path is None:
        return None

    actual = store.check(path)
    if actual is None:
        return path
    moved = store.quarantine(path)
    log.error("store.corrupt", digest=digest, actual=actual, path=str(path), quarantine=str(moved))
    return None


def copy_into_store(store: Store, path: Path, digest: str, extension: str) -> Path:
    """Copy ``path`` into the store, verified; raise ``FileChanged`` if it no longer hashes to ``digest``."""
    existing = find_verified(store, digest, extension)
    if existing is not None:
        return existing

    try:
        stored = store.place(digest, extension, copy_chunks(path), str(path))
    except DigestMismatch as error:
        msg = f"{path} changed after it was uploaded; it is uploaded again once it stays unchanged"
        raise FileChanged(msg) from error
    return stored.path


def link_into_store(store: Store, path: Path, digest: str, extension: str) -> Path:
    """Hard-link ``path`` into the store, verified; copy instead when linking is not possible.

    NOTE: the stored file shares its inode with ``path`` until the caller
    removes ``path``, so a writer that still has the file open can change
    the stored bytes after the check. The settle period is what guards
    against that.
    """
    existing = find_verified(store, digest, extension)
    if existing is not None:
        return existing

    link = _temporary_link(store, path)
    if link is None:
        return copy_into_store(store, path, digest, extension)

    target = store.path_for(digest, extension)
    try:
        actual = calculate_sha256(link)
        if actual != digest:
            msg = f"{path} changed after it was uploaded; it is uploaded again once it stays unchanged"
            raise FileChanged(msg)
        os.chmod(link, STORED_FILE_MODE)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(link, target)
        fsync_directory(target.parent)
    except OSError as error:
        link.unlink(missing_ok=True)
        raise _store_error(error, target) from error
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    return target


def _temporary_link(store: Store, path: Path) -> Path | None:
    """Link ``path`` into the store's temporary folder; return None if this filesystem cannot."""
    try:
        store.temporary_folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _store_error(error, store.temporary_folder) from error

    link = store.temporary_folder / f".link-{uuid.uuid4().hex}"
    try:
        os.link(path, link, follow_symlinks=False)
    except OSError as error:
        # Another filesystem (EXDEV), protected links (EPERM), too many links
        # (EMLINK) or no hard links at all: a copy works in every case.
        log.debug("store.link_failed", path=str(path), error=error.strerror)
        return None
    return link


def _store_error(error: OSError, path: Path) -> StoreError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"no space left on the filesystem of {path}; free space and the upload is retried")
    return StoreError(f"cannot write {path}: {error.strerror or error}")
