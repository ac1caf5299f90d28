"""Byte sizes in configuration and messages: ``"500 GB"``, ``"1.5 TiB"`` or an integer.

Decimal units (kB, MB, GB, TB, PB) are powers of 1000 and binary units (KiB,
MiB, GiB, TiB, PiB) are powers of 1024, as in IEC 80000-13. Units are matched
without regard to case, so ``"500 gb"`` is 500 GB. Bits are not supported.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from herbsync.errors import ConfigError


BYTE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}

_SIZE_TEXT = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[A-Za-z]*)")
_DISPLAY_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
_EXPECTED = (
    'expected a number of bytes or a size with a unit, such as "500 GB" or "1.5 TiB" '
    "(units: B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)"
)


def parse_size(value: str | int | float, key: str, minimum: int = 0) -> int:
    """Return ``value`` in bytes, rounded down to a whole byte.

    ``value`` is an integer or a whole float of bytes, or text such as
    ``"500 GB"``, ``"1.5 TiB"`` or ``"1048576"``. ``key`` is the configuration
    key, such as ``store.max_size``, that ``ConfigError`` names together with
    the value when the value is invalid or below ``minimum``.
    """
    if isinstance(value, bool):
        raise _invalid(value, key, _EXPECTED)

    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise _invalid(value, key, _EXPECTED)
        size = int(value)
    elif isinstance(value, str):
        size = _parse_size_text(value, key)
    else:
        raise _invalid(value, key, _EXPECTED)

    if size < minimum:
        raise _invalid(value, key, f"expected a size of at least {minimum} bytes")
    return size


def _parse_size_text(text: str, key: str) -> int:
    match = _SIZE_TEXT.fullmatch(text.strip())
    if match is None:
        raise _invalid(text, key, _EXPECTED)

    unit = match["unit"].lower() or "b"
    multiplier = BYTE_UNITS.get(unit)
    if multiplier is None:
        raise _invalid(text, key, f"unknown unit {match['unit']!r}; {_EXPECTED}")

    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        raise _invalid(text, key, _EXPECTED) from None
    return int(number * multiplier)


def _invalid(value: object, key: str, expected: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is invalid: {expected}")


def format_size(size: float) -> str:
    """Return a byte count in decimal units with three significant digits, such as ``1.23 GB``."""
    if size < 1000:
        return f"{int(size)} B"

    scaled = float(size)
    unit_index = 0
    while scaled >= 999.5 and unit_index < len(_DISPLAY_UNITS) - 1:
        scaled /= 1000
        unit_index += 1
    return f"{scaled:.3g} {_DISPLAY_UNITS[unit_index]}"
