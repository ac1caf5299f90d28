"""Detect when the first complete file of a list appears in a store folder.

herbsync writes into ``<store>/.tmp/`` and renames each verified file to
``ab/cd/<sha256>.jpg``, so a file at its final name is complete. The scan
polls every millisecond, which is the resolution of the result.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


POLL_SECONDS = 0.001


class FirstFileWatcher:
    """A thread that records when any of the expected file names appears under a store."""

    def __init__(self, root: Path, names: set[str]) -> None:
        self.root = root
        self.names = names
        self._origin = 0.0
        self._found_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="first-file", daemon=True)

    def start(self, origin: float) -> None:
        """Start polling, measuring from ``origin`` (a ``time.monotonic`` value)."""
        self._origin = origin
        self._thread.start()

    def stop(self) -> float | None:
        """Stop polling; return seconds from the origin to the first file, or None if none appeared."""
        self._stop.set()
        self._thread.join()
        return None if self._found_at is None else self._found_at - self._origin

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self._any_present():
                self._found_at = time.monotonic()
                return
            time.sleep(POLL_SECONDS)

    def _any_present(self) -> bool:
        for first in _layout_folders(self.root):
            for second in _layout_folders(first):
                try:
                    entries = os.listdir(second)
                except FileNotFoundError:
                    continue
                if not self.names.isdisjoint(entries):
                    return True
        return False


def _layout_folders(folder: Path) -> list[Path]:
    """Return the two-character subfolders of ``folder`` (the ``ab`` and ``cd`` levels)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [folder / name for name in names if len(name) == 2]
