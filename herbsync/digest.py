"""SHA-256 digests: validation, the shared path layout, and streaming hashes.

A digest is 64 lowercase hex characters. Input may be uppercase or carry
surrounding whitespace; ``normalize_digest`` is the one place that turns such
text into a digest or rejects it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from herbsync.errors import InvalidDigest


DEFAULT_EXTENSION = "jpg"

# 1 MiB reads keep hashlib near its peak rate while the buffer stays small.
CHUNK_SIZE = 1024 * 1024

_DIGEST = re.compile(r"[0-9a-f]{64}")
_EXTENSION = re.compile(r"[a-z0-9]{1,8}")
_EXTENSION_ALIASES = {"jpeg": "jpg", "tiff": "tif"}


def shorten(text: str, limit: int = 80) -> str:
    """Return ``text`` cut to ``limit`` characters, for messages about bad input."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def is_digest(text: str) -> bool:
    """Return whether ``text`` is exactly a normalised SHA-256 digest."""
    return _DIGEST.fullmatch(text) is not None


def normalize_digest(text: str) -> str:
    """Return ``text`` as a lowercase digest, or raise ``InvalidDigest`` naming it."""
    candidate = text.strip().lower()
    if is_digest(candidate):
        return candidate

    if len(candidate) != 64:
        reason = f"has {len(candidate)} characters, a SHA-256 has 64"
    else:
        reason = "contains characters other than 0-9 and a-f"
    msg = f"invalid sha256 {shorten(text)!r}: {reason}"
    raise InvalidDigest(msg)


def normalize_extension(extension: str | None) -> str:
    """Return a file extension without its dot, lowercase, with ``jpeg`` as ``jpg``.

    Anything that is not 1 to 8 letters or digits gives the default, ``jpg``,
    so that no manifest text can put a path separator into a store path.
    """
    if not extension:
        return DEFAULT_EXTENSION

    candidate = extension.strip().lstrip(".").lower()
    candidate = _EXTENSION_ALIASES.get(candidate, candidate)
    if _EXTENSION.fullmatch(candidate) is None:
        return DEFAULT_EXTENSION
    return candidate


def relative_path(digest: str, extension: str = DEFAULT_EXTENSION) -> PurePosixPath:
    """Return the layout path ``ab/cd/abcd....ext`` shared by the store and S3 keys."""
    return PurePosixPath(digest[0:2], digest[2:4], f"{digest}.{extension}")


def calculate_sha256(file_path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    hasher = hashlib.sha256()
    with open(file_path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def split_name(name: str) -> tuple[str, str | None]:
    """Split a file name into stem and extension: ``'ab.JPG'`` gives ``('ab', 'JPG')``."""
    stem, dot, extension = name.rpartition(".")
    if not dot:
        return name, None
    return stem, extension


def _key_of(location: str) -> str:
    """Return the path part of a URL or S3 URI, or the text itself if it has none."""
    parts = urlsplit(location.strip())
    if parts.scheme in ("http", "https", "s3"):
        return unquote(parts.path)
    return location.strip()


def extract_sha256_from_url(url: str) -> str:
    """Return the digest named by an image URL, S3 URI, object key or file name.

    Accepts ``https://s3.<region>.amazonaws.com/<bucket>/images/ab/cd/<h>.jpg``,
    ``https://<bucket>.s3.<region>.amazonaws.com/images/...``,
    ``s3://<bucket>/images/...``, a bare key, a file name or the digest itself.
    Raises ``ValueError`` (an ``InvalidDigest``) naming the input when its last
    path component is not ``<sha256>`` with an optional extension.
    """
    name = PurePosixPath(_key_of(url)).name
    stem, _ = split_name(name)
    try:
        return normalize_digest(stem)
    except InvalidDigest:
        msg = f"no sha256 found in {shorten(url)!r}: expected a name like <64 hex digits>.jpg"
        raise InvalidDigest(msg) from None


def extension_from_url(url: str) -> str | None:
    """Return the extension of a URL's or key's last component, if it has one."""
    name = PurePosixPath(_key_of(url)).name
    _, extension = split_name(name)
    return extension


def file_path_of(base: Path, digest: str, extension: str = DEFAULT_EXTENSION) -> Path:
    """Return where an image lives under a local base folder."""
    return base.joinpath(*relative_path(digest, extension).parts)
