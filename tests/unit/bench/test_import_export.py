"""The import/export benchmark's pure parts: the source file it writes and the commands it times."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hvstore.backends.rbd import RbdBackend, RbdConfig
from hvstore.bench.import_export import CHUNK, _commands, make_source_file
from hvstore.errors import InvalidArgument


def test_source_file_is_partly_sparse_and_every_chunk_differs(tmp_path):
    path = tmp_path / "src.raw"
    size = 8 * CHUNK + 4096  # a short last chunk too
    data_bytes, digest = make_source_file(path, size)
    content = path.read_bytes()
    assert len(content) == size
    assert hashlib.sha256(content).hexdigest() == digest
    chunks = [content[o:o + CHUNK] for o in range(0, size, CHUNK)]
    assert chunks[3] == bytes(CHUNK) and chunks[7] == bytes(CHUNK)  # holes
    assert chunks[2][CHUNK // 2:] == bytes(CHUNK // 2) and any(chunks[2][: CHUNK // 2])  # half data
    assert len({c for c in chunks if any(c)}) == len([c for c in chunks if any(c)])  # no duplicates
    # Of every four chunks two are full, one half and one a hole; the short last chunk (index 8) is full.
    assert data_bytes == 4 * CHUNK + 2 * (CHUNK // 2) + 4096
    assert path.stat().st_blocks * 512 < size  # the holes are holes on disk


def test_commands_use_the_stores_identity_for_every_tool(tmp_path):
    cfg = RbdConfig(pool="hv", conf="/c/ceph.conf", keyring="/c/admin.keyring")
    backend = RbdBackend("ceph", cfg)  # constructors only store: nothing connects here
    src, out = Path("/s.raw"), Path("/o.raw")
    rbd_imp, rbd_exp = _commands("rbd", backend, tmp_path / "h.toml", ["hvstore"], src, "img", out)
    assert rbd_imp == ["rbd", "--conf", "/c/ceph.conf", "--id", "admin", "--keyring", "/c/admin.keyring",
                       "--no-progress", "import", "/s.raw", "hv/img"]
    assert rbd_exp[-3:] == ["export", "hv/img", "/o.raw"]
    qemu_imp, qemu_exp = _commands("qemu-img", backend, tmp_path / "h.toml", ["hvstore"], src, "img", out)
    assert qemu_imp[-1] == "rbd:hv/img:id=admin:conf=/c/ceph.conf:keyring=/c/admin.keyring"
    assert qemu_exp[-2:] == [qemu_imp[-1], "/o.raw"]
    hv_imp, hv_exp = _commands("hvstore", backend, tmp_path / "h.toml", ["hvstore"], src, "img", out)
    assert hv_imp == ["hvstore", "--config", str(tmp_path / "h.toml"), "volume", "import", "-q", "/s.raw", "ceph/img"]
    assert hv_exp[-3:] == ["-q", "ceph/img", "/o.raw"]
    with pytest.raises(InvalidArgument):
        _commands("dd", backend, tmp_path / "h.toml", ["hvstore"], src, "img", out)
