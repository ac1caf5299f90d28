"""Which files in the inbox count for upload, and when a file is complete.

A candidate is a regular file, reached without symbolic links, whose name is
not hidden or temporary (``.*``, ``*.tmp``, ``*.part``, ``*~`` and the other
suffixes the manifest folder ignores) and whose extension is configured.
A candidate is complete once its size, mtime and inode stay the same for the
settle period.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from herbsync.digest import split_name
from herbsync.drop_folder import IGNORED_SUFFIXES
from herbsync.upload.hashing import FileVersion


def is_candidate_name(name: str, extensions: Collection[str]) -> bool:
    """Return whether a file name is one to upload: not hidden or temporary, with a known extension."""
    if not name or name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
        return False
    _, extension = split_name(name)
    return extension is not None and extension.lower() in extensions


def _is_hidden_folder(name: str) -> bool:
    return name.startswith(".")


def iter_candidates(
    inbox: Path,
    extensions: Collection[str],
    excluded: Collection[Path] = (),
) -> Iterator[Path]:
    """Yield the candidate files under ``inbox``, in name order, without following links."""
    skipped = {Path(os.path.abspath(path)) for path in excluded}
    for folder, subfolders, names in os.walk(inbox, followlinks=False):
        # os.walk lists a link to a folder among the subfolders but does not enter it.
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not _is_hidden_folder(name) and Path(os.path.abspath(os.path.join(folder, name))) not in skipped
        )
        for name in sorted(names):
            path = Path(folder, name)
            if is_candidate_name(name, extensions) and _is_regular_file(path):
                yield path


def is_candidate_path(inbox: Path, path: Path, extensions: Collection[str]) -> bool:
    """Return whether ``path`` (from a file event) is a candidate file inside ``inbox``."""
    try:
        relative = path.relative_to(inbox)
    except ValueError:
        return False
    if not relative.parts or not is_candidate_name(path.name, extensions):
        return False
    if any(_is_hidden_folder(part) for part in relative.parts[:-1]):
        return False
    return not _has_linked_folder(inbox, relative) and _is_regular_file(path)


def _has_linked_folder(inbox: Path, relative: Path) -> bool:
    folder = inbox
    for part in relative.parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            return True
    return False


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


@dataclass(slots=True)
class Observation:
    """The version a file had when first seen unchanged, and since when."""

    version: FileVersion
    since: float


class SettleTracker:
    """Tracks each file's version over time to tell when it stopped changing."""

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._seen: dict[Path, Observation] = {}

    def observe(self, path: Path, version: FileVersion, now: float) -> float:
        """Record the version seen ``now``; return seconds left until it counts as complete (0 when it does)."""
        seen = self._seen.get(path)
        if seen is None or seen.version != version:
            self._seen[path] = Observation(version, now)
            return self.settle_seconds if self.settle_seconds > 0 else 0.0
        return max(0.0, seen.since + self.settle_seconds - now)

    def paths(self) -> list[Path]:
        """Return the files being tracked."""
        return list(self._seen)

    def forget(self, path: Path) -> None:
        """Drop what is known of a file that was uploaded or removed."""
        self._seen.pop(path, None)

    def waiting(self, now: float) -> int:
        """Return how many tracked files have not yet been unchanged for the settle period."""
        return sum(1 for seen in self._seen.values() if seen.since + self.settle_seconds > now)
