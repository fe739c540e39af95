"""FileBlockIO on a raw file: bytes survive the early writeback it starts while writing, holes stay holes."""

from __future__ import annotations

import os

import pytest

from hvstore import imagefile
from hvstore.imagefile import FileBlockIO


def test_writes_with_early_writeback_read_back_and_keep_holes(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(imagefile, "WRITEBACK_BYTES", 64 << 10)  # start writeback every 64 KiB
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    pieces = {offset: os.urandom(48 << 10) for offset in (0, 1 << 20, (1 << 20) + (48 << 10), 5 << 20)}
    with FileBlockIO(path, writable=True) as disk:
        for offset, data in pieces.items():
            disk.write(offset, data)
    data = path.read_bytes()
    for offset, written in pieces.items():
        assert data[offset:offset + len(written)] == written
    assert data[2 << 20:5 << 20] == bytes(3 << 20)
    with FileBlockIO(path, writable=False) as disk:
        extents = list(disk.allocated_extents())
    assert sum(length for _, length in extents) < 1 << 20  # three data regions, the rest still holes
