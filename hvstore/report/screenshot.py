"""A PNG of the report, taken by headless Chromium (Debian's ``chromium``), and a blankness check of it.

Chromium runs with everything that would reach the network switched off and a throw-away profile;
the report needs no network anyway (inline CSS and SVG). ``distinct_rows`` decodes the PNG with the
standard library (zlib) far enough to count different pixel rows: a blank page has one.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import zlib
from pathlib import Path

from hvstore.errors import InvalidArgument
from hvstore.run import run

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    raise InvalidArgument("chromium is not installed (Debian: apt-get install chromium)")


def screenshot(html_file: Path, png: Path, *, width: int = 1280, height: int = 2000) -> Path:
    with tempfile.TemporaryDirectory(prefix="hvstore-chromium-") as profile:
        run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
             f"--window-size={width},{height}", html_file.resolve().as_uri()], timeout_s=120)
    if not png.exists():
        raise InvalidArgument(f"chromium wrote no screenshot {png}")
    return png


def distinct_rows(png: Path) -> tuple[int, int, int]:
    """(width, height, number of distinct raw rows) of an 8-bit, non-interlaced PNG."""
    data = png.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise InvalidArgument(f"{png} is not a PNG")
    offset, idat, width = 8, b"", 0
    height = colour = depth = 0
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    stride = 1 + width * channels * depth // 8
    raw = zlib.decompress(idat)
    # Rows keep their filter byte; identical pixels under identical filters give identical rows, which
    # is all a blankness check needs (a blank page is one row repeated).
    rows = {raw[i + 1:i + stride] for i in range(0, len(raw), stride)}
    return width, height, len(rows)
