"""Checks of a store's files that fault tests share: wrong files, digests present, leftovers."""

from __future__ import annotations

import hashlib
from pathlib import Path

from herbsync.digest import is_digest


def unexpected_store_files(store: Path) -> list[str]:
    """Return every file in the store that is not at its layout path with matching bytes.

    Hidden entries at the top (``.tmp``, ``.quarantine``, the lock file) are skipped.
    """
    wrong = []
    for path in sorted(store.rglob("*")):
        relative = path.relative_to(store)
        if relative.parts[0].startswith(".") or not path.is_file():
            continue
        digest, _, extension = path.name.partition(".")
        at_layout_path = (
            len(relative.parts) == 3
            and is_digest(digest)
            and bool(extension)
            and relative.parts[:2] == (digest[0:2], digest[2:4])
        )
        if not at_layout_path:
            wrong.append(f"{relative}: not a layout path")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            wrong.append(f"{relative}: bytes do not hash to the name")
    return wrong


def stored_digests(store: Path) -> set[str]:
    """Return the digests named by the files at layout paths."""
    return {path.name.partition(".")[0] for path in store.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*")}


def temporary_files(store: Path) -> set[str]:
    """Return the names in the store's temporary folder."""
    folder = store / ".tmp"
    return {entry.name for entry in folder.iterdir()} if folder.is_dir() else set()
