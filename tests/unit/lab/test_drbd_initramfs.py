"""The DRBD node initramfs: module dependency order and the newc cpio the kernel unpacks."""

from __future__ import annotations

import gzip
from pathlib import Path

from hvstore.lab.drbd import module_order, write_initramfs


def fake_module(root: Path, rel: str, depends: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1\0")


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, contents) of a newc archive."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + name_size - 1].decode()
        body = (name_start + name_size + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[body:body + size])
        pos = (body + size + 3) & ~3


def test_dependencies_come_first(tmp_path: Path) -> None:
    fake_module(tmp_path, "kernel/lib/lru_cache.ko", "")
    fake_module(tmp_path, "kernel/lib/libcrc32c.ko", "")
    fake_module(tmp_path, "kernel/drivers/block/drbd/drbd.ko", "lru_cache,libcrc32c")
    fake_module(tmp_path, "kernel/drivers/virtio/virtio.ko", "")
    fake_module(tmp_path, "kernel/drivers/block/virtio_blk.ko", "virtio")
    order = [p.name for p in module_order(tmp_path, ("virtio_blk", "drbd"))]
    assert order == ["virtio.ko", "virtio_blk.ko", "lru_cache.ko", "libcrc32c.ko", "drbd.ko"]


def test_initramfs_holds_init_agent_tools_and_modules(tmp_path: Path) -> None:
    modules = tmp_path / "modules"
    for name, deps in {"virtio_pci": "", "virtio_blk": "", "virtio_net": "", "virtio_console": "",
                       "loop": "", "lru_cache": "", "drbd": "lru_cache"}.items():
        fake_module(modules, f"kernel/{name}.ko", deps)
    target = tmp_path / "initrd.gz"
    write_initramfs(target, module_root=modules)
    entries = read_newc(gzip.decompress(target.read_bytes()))
    for path in ("init", "agent", "bin/busybox", "usr/sbin/drbdadm", "usr/lib/drbd/drbdadm-84",
                 "usr/lib/drbd/drbdsetup-84", "usr/sbin/drbdmeta", "modules/drbd.ko"):
        assert path in entries, path
    assert entries["init"][0] & 0o111 and entries["init"][1].startswith(b"#!/bin/busybox sh")
    assert entries["sbin/drbdadm"][1] == b"/usr/sbin/drbdadm"  # the kernel's usermode helper
    order = entries["modules.order"][1].decode().split()
    assert order.index("lru_cache") < order.index("drbd")
