"""Target folders: emptied before each run and checked after it."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from herbsync.digest import CHUNK_SIZE, file_path_of


@dataclass(frozen=True)
class Check:
    """Counts of listed objects missing from a target, and of those present with wrong bytes."""

    missing: int
    wrong: int

    @property
    def complete(self) -> bool:
        """Whether every object is present with the expected size (and hash, when checked)."""
        return self.missing == 0 and self.wrong == 0


def reset_folder(folder: Path) -> None:
    """Remove ``folder`` with everything in it and create it again, empty."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def flush_to_disk() -> float:
    """Write every dirty page to disk (``sync``); return the seconds it took.

    Called between runs, outside the timed part, so no run pays for the
    write-back of the one before it.
    """
    started = time.monotonic()
    os.sync()
    return time.monotonic() - started


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_target(target: Path, digests: list[str], size: int, hashes: bool) -> Check:
    """Check that every digest is at ``ab/cd/<digest>.jpg`` with ``size`` bytes (and its hash)."""
    missing = 0
    wrong = 0
    for digest in digests:
        path = file_path_of(target, digest)
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            missing += 1
            continue
        if actual_size != size or (hashes and _sha256_of(path) != digest):
            wrong += 1
    return Check(missing, wrong)
