"""Results of reading a manifest: the images it requests and the problems in it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """One image that a manifest requests by its SHA-256."""

    #: Normalised digest, 64 lowercase hex characters.
    digest: str
    #: 1-based line of the manifest, or 0 when a TOML value could not be located.
    line: int
    #: Extension without dot from a file name, key or URL, or None when unknown.
    extension: str | None = None
    #: Expected size in bytes, if the manifest gives one.
    size: int | None = None
    #: Object key from a path or key column or from a URL path, if any.
    key: str | None = None
    #: Specimen identifier such as a catalog number, if any.
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Invalid content found in a manifest, with the reason and the fix."""

    #: 1-based line, or None for a problem with the whole file.
    line: int | None
    #: The offending text, shortened, or the file name for a whole-file problem.
    text: str
    #: Plain sentence saying what is wrong and what to do.
    reason: str
