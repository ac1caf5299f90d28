"""The watched manifest folder: which files count, and reading them into the state.

The wanted set is the union of the manifests present in the folder. A file is
read when it is complete; hidden and temporary names (``.*``, ``*.tmp``,
``*.part``, ``*~``) are ignored until renamed. Only regular files directly in
the folder count: symbolic links, FIFOs and subfolders are reported and
skipped, so no manifest can make herbsync read outside the folder.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from herbsync.digest import CHUNK_SIZE
from herbsync.manifests import Entry, Problem, read_manifest
from herbsync.manifests.source import open_regular_file
from herbsync.state import ManifestRecord, State


log = structlog.get_logger("herbsync.manifests")

IGNORED_SUFFIXES = (".tmp", ".part", "~", ".swp", ".crdownload")

# Problems kept per manifest for status; the count covers all of them.
MAX_KEPT_PROBLEMS = 1000
# Invalid lines logged one by one per manifest; the rest are summarised.
MAX_LOGGED_PROBLEMS = 20

# Each manifest's status report is "<name>.json", and Linux file systems
# allow at most 255 bytes in a file name.
MAX_NAME_BYTES = 255 - len(".json")


def is_manifest_name(name: str) -> bool:
    """Return whether a file name is one the daemon reads.

    It must not be hidden or temporary, and ``name_problem`` must find
    nothing wrong with it, so that file events for unusable names are
    dropped before they reach the state database.
    """
    return not _is_hidden_or_temporary(name) and name_problem(name) is None


def _is_hidden_or_temporary(name: str) -> bool:
    return not name or name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


def name_problem(name: str) -> str | None:
    """Return why a manifest's file name cannot be used, or None when it can.

    The name becomes a key in the state database (UTF-8 text) and the name
    of the status report, so it must be valid UTF-8 and short enough.
    """
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename the file"
    if len(encoded) > MAX_NAME_BYTES:
        return f"file name is longer than {MAX_NAME_BYTES} bytes, too long for its status report; rename the file"
    return None


def printable(name: str) -> str:
    """Return a file name with its bytes that are not UTF-8 shown as ``\\xNN`` escapes, safe to log."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class ReadResult:
    """The outcome of reading one manifest."""

    name: str
    changed: bool
    entries: int = 0
    added: int = 0
    removed: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    problem_count: int = 0


def _content_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open_regular_file(path, follow_symlinks=False) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


class ProblemCollector:
    """Splits a manifest's items into entries (passed on) and problems (kept)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries = 0
        self.problems: list[dict[str, Any]] = []
        self.problem_count = 0

    def entries_of(self, items: Iterator[Entry | Problem]) -> Iterator[Entry]:
        """Yield the entries of ``items`` and keep their problems."""
        for item in items:
            if isinstance(item, Problem):
                self.add(item)
                continue
            self.entries += 1
            yield item

    def add(self, problem: Problem) -> None:
        """Keep and log one problem, within the limits."""
        self.problem_count += 1
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append({"line": problem.line, "text": problem.text, "reason": problem.reason})
        if self.problem_count <= MAX_LOGGED_PROBLEMS:
            log.warning(
                "manifest.invalid_line",
                manifest=self.name,
                line=problem.line,
                text=problem.text,
                reason=problem.reason,
            )


class DropFolder:
    """The manifest folder and its records in the state."""

    def __init__(self, path: str | os.PathLike[str], state: State) -> None:
        self.path = Path(path)
        self.state = state

    def names(self) -> list[str]:
        """Return the names of the manifest files now in the folder."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            if _is_hidden_or_temporary(entry.name):
                continue
            if not entry.is_file(follow_symlinks=False):
                self._report_not_regular(entry.name, entry.stat(follow_symlinks=False).st_mode)
            elif self._usable_name(entry.name):
                names.append(entry.name)
        return sorted(names)

    def _report_not_regular(self, name: str, mode: int) -> None:
        log.warning(
            "manifest.skipped",
            manifest=printable(name),
            reason=f"{_file_kind(mode)}, not a regular file; move the real file into the folder",
        )

    def _usable_name(self, name: str) -> bool:
        problem = name_problem(name)
        if problem is not None:
            log.warning("manifest.skipped", manifest=printable(name), reason=problem)
        return problem is None

    def reconcile(self) -> list[ReadResult]:
        """Read new and changed manifests and withdraw deleted ones."""
        present = self.names()
        results = [self.read(name) for name in present]
        # Names that cannot be folder manifests (such as the hidden ones that
        # `herbsync fetch` registers) are not withdrawn by a rescan.
        known = {name for name in self.state.manifest_names() if is_manifest_name(name)}
        for name in sorted(known - set(present)):
            self.withdraw(name)
        return [result for result in results if result is not None]

    def read(self, name: str) -> ReadResult | None:
        """Read one manifest into the state if it changed; None if it is gone or unusable."""
        if not self._usable_name(name):
            return None
        path = self.path / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self.withdraw(name)
            return None
        if not stat.S_ISREG(info.st_mode):
            self._report_not_regular(name, info.st_mode)
            return None

        try:
            return self._read_regular(name, path, info)
        except OSError as error:
            log.error(
                "manifest.unreadable",
                manifest=name,
                path=str(path),
                error=error.strerror or str(error),
                action="make it a regular file the daemon may read; its previous entries stay wanted",
            )
            return None

    def _read_regular(self, name: str, path: Path, info: os.stat_result) -> ReadResult:
        known = self.state.manifest(name)
        if known is not None and (known.size, known.mtime_ns) == (info.st_size, info.st_mtime_ns):
            return ReadResult(name, changed=False)

        content_sha256 = _content_sha256(path)
        if known is not None and known.content_sha256 == content_sha256:
            self.state.touch_manifest(name, info.st_size, info.st_mtime_ns)
            return ReadResult(name, changed=False)

        collector = ProblemCollector(name)
        placeholder = ManifestRecord(name, info.st_size, info.st_mtime_ns, content_sha256, [], 0)
        added, removed = self.state.replace_manifest(
            placeholder, collector.entries_of(read_manifest(path, follow_symlinks=False))
        )
        record = ManifestRecord(
            name, info.st_size, info.st_mtime_ns, content_sha256, collector.problems, collector.problem_count
        )
        self.state.replace_problems(record)

        result = ReadResult(
            name, True, collector.entries, added, removed, collector.problems, collector.problem_count
        )
        log.info(
            "manifest.read",
            manifest=name,
            entries=result.entries,
            added=added,
            removed=removed,
            invalid=result.problem_count,
        )
        return result

    def withdraw(self, name: str) -> int:
        """Forget a deleted manifest; its images stay in the store."""
        removed = self.state.remove_manifest(name)
        log.info("manifest.withdrawn", manifest=name, entries=removed)
        return removed
