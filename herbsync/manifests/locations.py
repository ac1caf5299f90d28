"""Object keys, image URLs and file-name extensions as they appear in manifests."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from herbsync.digest import is_digest, normalize_extension, split_name


URL_PREFIXES = ("http://", "https://", "s3://")

_EXTENSION_SHAPE = re.compile(r"[A-Za-z0-9]{1,8}")
_PATH_SEPARATOR = re.compile(r"[/\\]")
_FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_AMAZON_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")


class LocationError(ValueError):
    """Raised when a URL or object key names no image. The message is the reason."""


def extension_of(name: str) -> str | None:
    """Return the normalised extension of a file name, key or URL path, or None if it has no valid one."""
    _, extension = split_name(name.rpartition("/")[2])
    return valid_extension(extension)


def split_image_name(key: str) -> tuple[str | None, str | None]:
    """Return the digest and normalised extension named by a key's last component ``<sha256>[.ext]``.

    Either part is None when the name does not give it.
    """
    stem, extension = split_name(key.rpartition("/")[2])
    digest = stem.lower()
    return (digest if is_digest(digest) else None), valid_extension(extension)


def valid_extension(extension: str | None) -> str | None:
    """Return the extension normalised, or None when it is missing or not 1 to 8 letters and digits."""
    if not extension or _EXTENSION_SHAPE.fullmatch(extension) is None:
        return None
    return normalize_extension(extension)


def is_url(text: str) -> bool:
    """Return whether text starts with one of the accepted URL schemes."""
    return text[:8].lower().startswith(URL_PREFIXES)


def check_key(key: str) -> None:
    """Raise LocationError if an object key is empty, has a '..' component or has control characters."""
    if not key:
        raise LocationError("the object key is empty. Give the full key of the image")

    if ".." in key and ".." in _PATH_SEPARATOR.split(key):
        raise LocationError("the object key contains a '..' path component, which a manifest must not use")

    check_text(key)


def check_text(text: str) -> None:
    """Raise LocationError if text contains control characters or lone surrogates."""
    if _FORBIDDEN_CHARACTERS.search(text):
        raise LocationError("contains control characters or invalid Unicode. Remove them")


def parse_url(url: str) -> tuple[str, str | None, str]:
    """Return the digest, extension and object key named by an image URL.

    The key excludes the bucket for ``s3://`` URIs and path-style AWS hosts
    (``s3.<region>.amazonaws.com/<bucket>/<key>``), and virtual-host style
    (``<bucket>.s3.<region>.amazonaws.com/<key>``) keeps the whole path.
    Raises LocationError with the reason when the URL names no image.

    NOTE: For any other host the key is the whole URL path, because the URL
    does not show whether the endpoint is path-style. A path-style URL of a
    MinIO or SeaweedFS endpoint therefore gives a key that starts with the bucket.
    """
    try:
        key = _key_of(url)
    except ValueError:
        raise LocationError("is not a valid URL. Check its host and brackets") from None

    check_key(key)

    digest, extension = split_image_name(key)
    if digest is None:
        reason = "is a URL whose file name is not <sha256>.<extension>. Link each image by its SHA-256 name"
        raise LocationError(reason)

    return digest, extension, key


def _key_of(url: str) -> str:
    parts = urlsplit(url)
    path = unquote(parts.path).lstrip("/")

    if parts.scheme.lower() == "s3" or not _is_path_style_host(parts.hostname or ""):
        return path

    _, _, key = path.partition("/")
    return key


@lru_cache(maxsize=256)
def _is_path_style_host(host: str) -> bool:
    """Return whether an AWS host puts the bucket in the path (``s3.<region>.amazonaws.com``)."""
    if not host.endswith(_AMAZON_SUFFIXES):
        return False

    first, *rest = host.split(".")
    return _is_s3_label(first) and not any(_is_s3_label(label) for label in rest)


def _is_s3_label(label: str) -> bool:
    return label == "s3" or label.startswith("s3-")
