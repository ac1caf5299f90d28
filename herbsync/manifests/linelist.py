"""Line lists: plain digests, sha256sum and BSD tag lines and image URLs, mixed freely."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from herbsync.digest import is_digest, shorten
from herbsync.manifests.locations import LocationError, extension_of, is_url, parse_url
from herbsync.manifests.model import Entry, Problem
from herbsync.manifests.source import CARRIAGE_RETURN_HINT


EXPECTED = "expected a 64-character SHA-256, a sha256sum line or an image URL"
_EXPECTED_SENTENCE = "Expected a 64-character SHA-256, a sha256sum line or an image URL."

# GNU sha256sum writes "<hash>  name" (text mode) or "<hash> *name" (binary mode),
# and puts a backslash before the hash when it escaped the name.
_SHA256SUM_LINE = re.compile(r"\\?([0-9A-Fa-f]{64})[ \t]+\*?(.+)")

# BSD tools and "sha256sum --tag" write "SHA256 (name) = <hash>". OpenSSL writes
# "SHA256(name)= <hash>" (1.1) or "SHA2-256(name)= <hash>" (3.x).
_TAG_LINE = re.compile(r"SHA(?:2-)?256 ?\((.*)\) ?= ?([0-9a-f]{64})", re.IGNORECASE)

_TRAILING_COMMENT = re.compile(r"\s#")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_PARENT_COMPONENT = re.compile(r"(?:^|[/\\])\.\.(?:[/\\]|$)")


def read_line_list(lines: Iterable[tuple[int, str] | Problem]) -> Iterator[Entry | Problem]:
    """Yield an Entry for each digest, sha256sum, tag or URL line, and a Problem for each bad line."""
    for item in lines:
        if isinstance(item, Problem):
            yield item
            continue

        number, text = item
        text = text.strip()

        # Fast path for a bare digest, the common line, which skips the regular expressions.
        if len(text) == 64:
            digest = text.lower()
            if is_digest(digest):
                yield Entry(digest, number)
                continue

        result = parse_line(number, text)
        if result is not None:
            yield result


def parse_line(number: int, text: str) -> Entry | Problem | None:
    """Parse one stripped line or string, returning None for a blank or comment line."""
    text = _without_comment(text)
    if not text:
        return None

    if len(text) == 64 and is_digest(text.lower()):
        return Entry(text.lower(), number)

    if is_url(text):
        return _parse_url_line(number, text)

    match = _SHA256SUM_LINE.fullmatch(text)
    if match:
        return Entry(match[1].lower(), number, extension_of(match[2]))

    match = _TAG_LINE.fullmatch(text)
    if match:
        return Entry(match[2].lower(), number, extension_of(match[1]))

    return Problem(number, shorten(text), _reason_for(text))


def _without_comment(text: str) -> str:
    if text.startswith("#"):
        return ""
    if "#" not in text:
        return text

    match = _TRAILING_COMMENT.search(text)
    if match is None:
        return text
    return text[: match.start()].rstrip()


def _parse_url_line(number: int, text: str) -> Entry | Problem:
    try:
        digest, extension, key = parse_url(text)
    except LocationError as error:
        return Problem(number, shorten(text), str(error))
    return Entry(digest, number, extension, key=key)


def _reason_for(text: str) -> str:
    if "\r" in text:
        return CARRIAGE_RETURN_HINT

    if _PARENT_COMPONENT.search(text):
        return f"contains a '..' path component, which a manifest must not use. {_EXPECTED_SENTENCE}"

    if _HEX.fullmatch(text):
        return f"has {len(text)} hex digits, but a SHA-256 has 64. Check that the digest was copied whole"

    if len(text) == 64:
        return f"has 64 characters, but not all are hex digits 0-9 and a-f. {_EXPECTED_SENTENCE}"

    return EXPECTED
