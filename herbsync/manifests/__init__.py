"""Manifest parsing: files that list the SHA-256 digests of images to mirror.

``read_manifest`` streams ``Entry`` and ``Problem`` items from a line list
(digests, sha256sum or BSD tag lines, image URLs), JSONL, CSV/TSV or TOML
manifest, plain or gzip-compressed.
"""

from herbsync.manifests.model import Entry, Problem
from herbsync.manifests.reader import MAX_PROBLEMS, read_manifest


__all__ = ["MAX_PROBLEMS", "Entry", "Problem", "read_manifest"]
