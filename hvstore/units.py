"""Sizes as people write them (512M, 10G, 1T) and back. Binary units: 1K = 1024 bytes."""

from __future__ import annotations

import re

from hvstore.errors import InvalidArgument

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse ``512M``/``10G``/``1T``/``1.5G``/``4096`` into bytes; raise InvalidArgument otherwise."""
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgument(f"invalid size {text}: must not be negative")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise InvalidArgument(f"invalid size {text!r}: use a number with an optional unit K, M, G, T (e.g. 10G)")
    number, unit = match.groups()
    size = float(number) * _UNITS[unit.upper()]
    if size != int(size):
        raise InvalidArgument(f"invalid size {text!r}: not a whole number of bytes")
    return int(size)


def format_size(size_bytes: int | None) -> str:
    """Render bytes with the largest binary unit that keeps three significant digits (``1.5 GiB``)."""
    if size_bytes is None:
        return "-"
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
