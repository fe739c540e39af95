"""RBD-specific behaviour against the lab's real Ceph (mon + OSD started by the lab fixture).

The volume contract suite covers what every backend shares; this covers what only RBD has: clone
chains with automatic protect/unprotect, flatten, refusal to delete with clones or open clients (and
what --force does instead), per-host cephx identities, fencing by blocklisting watchers, and failing
fast when the cluster is unreachable.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from hvstore.backends.rbd import RbdBackend, RbdConfig
from hvstore.config import StoreEntry
from hvstore.errors import AlreadyExists, BackendUnavailable, Busy, InvalidArgument, NotFound
from hvstore.lab import LabController
from tests.integration.conftest import lab_store

MiB = 1 << 20
OBJECT = 4 * MiB


def pattern(seed: str, length: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(length)


@pytest.fixture(scope="module")
def ceph(lab: LabController) -> StoreEntry:
    return lab_store(lab, "ceph")


@pytest.fixture
def rbd(ceph: StoreEntry) -> Iterator[RbdBackend]:
    with ceph.backend() as backend:
        assert isinstance(backend, RbdBackend)
        yield backend


@pytest.fixture
def names(rbd: RbdBackend) -> Iterator[Callable[[str], str]]:
    """Unique image names for one test; whatever exists of them at the end is force-deleted."""
    made: list[str] = []

    def new(prefix: str = "t") -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield new
    for name in reversed(made):
        try:
            rbd.delete(name, force=True)
        except NotFound:
            pass


def write(backend: RbdBackend, name: str, offset: int, data: bytes) -> None:
    with backend.open(name, writable=True) as io:
        io.write(offset, data)
        io.flush()


def read(backend: RbdBackend, name: str, offset: int, length: int) -> bytes:
    with backend.open(name) as io:
        return io.read(offset, length)


def test_snapshot_clone_flatten_delete_chain(rbd, names):
    base, clone = names("base"), names("clone")
    rbd.create(base, 16 * MiB)
    original = pattern("base", 2 * MiB)
    write(rbd, base, 3 * MiB, original)
    rbd.snapshot(base, "gold")

    info = rbd.clone(base, "gold", clone)
    assert info.parent == f"{base}@gold"
    assert [s.protected for s in rbd.snapshots(base)] == [True]  # protected for the clone, automatically
    assert read(rbd, clone, 3 * MiB, 2 * MiB) == original

    write(rbd, clone, 3 * MiB, pattern("clone", MiB))  # copy-on-write: the parent keeps its bytes
    assert read(rbd, base, 3 * MiB, 2 * MiB) == original

    with pytest.raises(Busy, match=clone):
        rbd.delete(base)
    with pytest.raises(Busy, match="clones"):
        rbd.delete_snapshot(base, "gold")

    assert rbd.flatten(clone).parent is None
    rbd.delete_snapshot(base, "gold")  # no clone left: unprotected and removed
    assert rbd.snapshots(base) == []
    rbd.delete(base)
    assert not rbd.exists(base)
    assert read(rbd, clone, 3 * MiB, 2 * MiB) == pattern("clone", MiB) + original[MiB:]


def test_clone_of_a_clone_and_delete_order(rbd, names):
    a, b, c = names("a"), names("b"), names("c")
    rbd.create(a, 8 * MiB)
    write(rbd, a, 0, pattern("a", MiB))
    rbd.snapshot(a, "s")
    rbd.clone(a, "s", b)
    rbd.snapshot(b, "s")
    rbd.clone(b, "s", c)
    assert rbd.info(c).parent == f"{b}@s"
    assert read(rbd, c, 0, MiB) == pattern("a", MiB)
    with pytest.raises(Busy):
        rbd.delete(b)
    rbd.delete(c)
    rbd.delete(b)  # its snapshot is unprotected and removed with it
    rbd.delete(a)
    assert not any(rbd.exists(n) for n in (a, b, c))


def test_clone_errors_leave_nothing_behind(rbd, names):
    base, other = names("base"), names("other")
    rbd.create(base, 4 * MiB)
    rbd.create(other, 4 * MiB)
    with pytest.raises(NotFound, match="@nosuch"):
        rbd.clone(base, "nosuch", names("x"))
    rbd.snapshot(base, "s")
    with pytest.raises(AlreadyExists):
        rbd.clone(base, "s", other)
    assert [s.protected for s in rbd.snapshots(base)] == [False]  # the failed clone undid its protect
    with pytest.raises(AlreadyExists):
        rbd.snapshot(base, "s")


def test_delete_refused_while_another_client_has_it_open(rbd, ceph, names):
    name = names("open")
    rbd.create(name, 4 * MiB)
    with ceph.backend() as other_client, other_client.open(name, writable=True) as io:
        io.write(0, b"x" * 4096)
        io.flush()
        assert len(rbd.watchers(name)) == 1
        with pytest.raises(Busy, match="open by 1 client"):
            rbd.delete(name)
        with pytest.raises(Busy, match="open"):
            rbd.rename(name, names("renamed"))
        rbd.snapshot(name, "s")
        with pytest.raises(Busy, match="open"):
            rbd.rollback(name, "s")
    assert rbd.watchers(name) == []
    rbd.delete(name)
    assert not rbd.exists(name)


def qemu_io_holding(uri: str) -> subprocess.Popen[str]:
    """A qemu-io that opened ``uri`` and keeps it open until its stdin closes (a stand-in for a VM)."""
    proc = subprocess.Popen(["qemu-io", "-f", "raw", uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdin is not None
    proc.stdin.write("write -P 0x5a 0 64k\n")
    proc.stdin.flush()
    return proc


def wait_for(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_force_delete_flattens_clones_and_fences_open_clients(rbd, names):
    base, clone = names("base"), names("clone")
    rbd.create(base, 8 * MiB)
    write(rbd, base, OBJECT, pattern("base", MiB))
    rbd.snapshot(base, "s")
    rbd.clone(base, "s", clone)
    vm = qemu_io_holding(rbd.uri(base, host="hostb"))
    try:
        wait_for(lambda: len(rbd.watchers(base)) == 1)
        # With one cephx user per host, the watcher maps to the host that has the image open.
        assert [w.entity for w in rbd.identify_watchers(rbd.watchers(base))] == ["client.hostb"]
        with pytest.raises(Busy):
            rbd.delete(base)
        rbd.delete(base, force=True)
        assert not rbd.exists(base)
        assert rbd.info(clone).parent is None  # flattened, not deleted
        assert read(rbd, clone, OBJECT, MiB) == pattern("base", MiB)
        # The fenced client is cut off: its next write fails instead of reaching the cluster.
        out, _ = vm.communicate("write -P 0x11 0 4k\n", timeout=60)
        assert "failed" in out.lower() or "error" in out.lower()
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()


def test_qemu_writes_with_a_host_identity_and_hvstore_reads_them(rbd, ceph, names):
    name = names("qemu")
    rbd.create(name, 8 * MiB)
    uri = rbd.uri(name, host="hostc")
    assert ":id=hostc:" in uri and "ceph.client.hostc.keyring" in uri
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 512k", uri], check=True,
                   capture_output=True, timeout=60)
    assert read(rbd, name, MiB, 512 * 1024) == b"\xab" * (512 * 1024)
    assert read(rbd, name, 0, 4096) == bytes(4096)
    with pytest.raises(NotFound, match="nohost"):
        rbd.uri(name, host="nohost")


def test_disk_xml_names_a_secret_and_never_a_key(rbd, ceph, names):
    name = names("xml")
    rbd.create(name, MiB)
    xml = rbd.disk_xml(name, target="vdc", host="hostb")
    disk = ElementTree.fromstring(xml)
    assert disk.get("type") == "network"
    assert disk.find("source").get("name") == f"{ceph.config.pool}/{name}"
    assert disk.find("source/host").attrib == {"name": "127.0.0.1", "port": "6789"}
    assert disk.find("auth").get("username") == "hostb"
    assert disk.find("auth/secret").get("type") == "ceph"
    assert disk.find("target").attrib == {"dev": "vdc", "bus": "virtio"}
    keyring = Path(ceph.config.host_keyring_dir) / "ceph.client.hostb.keyring"
    key = keyring.read_text().split("key = ")[1].split()[0]
    assert key not in xml
    pool = ElementTree.fromstring(rbd.pool_xml())
    assert pool.get("type") == "rbd" and pool.find("source/name").text == ceph.config.pool


def test_rename(rbd, names):
    old, new, taken = names("old"), names("new"), names("taken")
    rbd.create(old, 4 * MiB)
    rbd.create(taken, 4 * MiB)
    write(rbd, old, 0, pattern("rename", 4096))
    assert rbd.rename(old, new).name == new
    assert not rbd.exists(old)
    assert read(rbd, new, 0, 4096) == pattern("rename", 4096)
    with pytest.raises(AlreadyExists):
        rbd.rename(new, taken)
    with pytest.raises(NotFound):
        rbd.rename(old, names("x"))


def test_grow_and_shrink_rules(rbd, names):
    name = names("size")
    rbd.create(name, 8 * MiB)
    write(rbd, name, 6 * MiB, pattern("tail", MiB))
    assert rbd.resize(name, 16 * MiB).size_bytes == 16 * MiB
    assert read(rbd, name, 6 * MiB, MiB) == pattern("tail", MiB)
    with pytest.raises(InvalidArgument, match="--shrink"):
        rbd.resize(name, 4 * MiB)
    assert rbd.info(name).size_bytes == 16 * MiB
    assert rbd.resize(name, 4 * MiB, shrink=True).size_bytes == 4 * MiB
    rbd.resize(name, 8 * MiB)
    assert read(rbd, name, 6 * MiB, MiB) == bytes(MiB)  # what the shrink cut off is gone


def test_rollback_restores_snapshot_contents(rbd, names):
    name = names("rb")
    rbd.create(name, 4 * MiB)
    write(rbd, name, 0, pattern("v1", MiB))
    rbd.snapshot(name, "v1")
    write(rbd, name, 0, pattern("v2", MiB))
    rbd.rollback(name, "v1")
    assert read(rbd, name, 0, MiB) == pattern("v1", MiB)
    with pytest.raises(NotFound):
        rbd.rollback(name, "nosuch")


def test_allocated_extents_skip_holes_and_zero_writes_land(rbd, names):
    name = names("sparse")
    rbd.create(name, 64 * MiB)
    with rbd.open(name, writable=True) as io:
        io.write(0, pattern("head", MiB))
        io.write(40 * MiB, bytes(4 * MiB))  # zeros over a hole: nothing needs allocating
        io.write(32 * MiB, pattern("mid", MiB))
        io.write(32 * MiB, bytes(MiB))  # zeros over what this handle wrote: must land
    with rbd.open(name) as io:
        extents = list(io.allocated_extents())
        assert sum(length for _, length in extents) < 64 * MiB
        covered = {off // OBJECT for off, length in extents for off in range(off, off + length, OBJECT)}
        assert 0 in covered and 10 not in covered
        assert io.read(32 * MiB, MiB) == bytes(MiB)
        assert io.read(0, MiB) == pattern("head", MiB)
    write(rbd, name, 0, bytes(MiB))  # zeros over data written by an earlier handle must land too
    assert read(rbd, name, 0, MiB) == bytes(MiB)


def test_export_reads_what_was_written_across_extents(rbd, names):
    name = names("seq")
    rbd.create(name, 48 * MiB)
    chunks = {off: pattern(f"c{off}", 4 * MiB) for off in (0, 8 * MiB, 12 * MiB, 40 * MiB)}
    with rbd.open(name, writable=True) as io:
        for off, data in chunks.items():
            io.write(off, data)
    with rbd.open(name) as io:  # a sequential reader along the extents, as export is (read-ahead path)
        seen = {}
        for start, length in io.allocated_extents():
            for off in range(start, start + length, 4 * MiB):
                seen[off] = io.read(off, min(4 * MiB, start + length - off))
        assert {off: seen[off] for off in chunks} == chunks
        assert io.read(4 * MiB, 4 * MiB) == bytes(4 * MiB)  # a jump back still reads correctly


@pytest.mark.timeout(60)  # a hang guard, not a timing assertion
def test_unreachable_cluster_fails_with_backend_unavailable(ceph, tmp_path):
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\nmon_host = 127.0.0.1:1\n")  # nothing listens there
    config = RbdConfig(pool=ceph.config.pool, conf=str(conf), keyring=ceph.config.keyring, connect_timeout_s=2)
    with pytest.raises(BackendUnavailable, match=r"cannot reach Ceph monitors 127\.0\.0\.1:1 "):
        RbdBackend("dead", config).connect()


def test_missing_pool_and_bad_key_are_clear_errors(ceph, tmp_path):
    from hvstore.errors import ConfigError

    with pytest.raises(ConfigError, match="pool 'nosuchpool'"):
        RbdBackend("x", RbdConfig(pool="nosuchpool", conf=ceph.config.conf, keyring=ceph.config.keyring)).connect()
    bad = tmp_path / "bad.keyring"
    bad.write_text("[client.admin]\n\tkey = AQBvb2Zvb2Zvb2Zvb2Zvb2Zvb2Zvb2Zvb2Zvb2Zvbw==\n")
    with pytest.raises(BackendUnavailable):
        RbdBackend("x", RbdConfig(pool=ceph.config.pool, conf=ceph.config.conf, keyring=str(bad),
                                  connect_timeout_s=2)).connect()


def test_lab_ceph_survives_sigkill_without_losing_acknowledged_writes(lab, ceph, rbd, names):
    name = names("crash")
    rbd.create(name, 8 * MiB)
    write(rbd, name, MiB, pattern("durable", 2 * MiB))  # flushed: acknowledged by the OSD
    rbd.close()
    (service,) = lab.services(["ceph"])
    processes = service.process_names  # the mon and every OSD: the whole cluster dies at once
    for process in processes:
        pid = lab.lab.daemon_pid(process)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(lab.lab.running(process) for process in processes))
    assert not lab.status(["ceph"])[0].healthy
    lab.up(["ceph"])  # recovers from the existing state, no new bootstrap
    assert lab.status(["ceph"])[0].healthy
    with ceph.backend() as fresh:
        assert read(fresh, name, MiB, 2 * MiB) == pattern("durable", 2 * MiB)
    lab.up(["ceph"])  # idempotent on a healthy cluster
    assert lab.status(["ceph"])[0].healthy


def test_fence_watchers_cuts_a_hosts_writer_off_the_image(rbd, names):
    name = names("fence")
    rbd.create(name, 4 * MiB)
    vm = qemu_io_holding(rbd.uri(name, host="hosta"))  # writes 0x5a at 0..64k
    try:
        wait_for(lambda: len(rbd.watchers(name)) == 1)
        wait_for(lambda: read(rbd, name, 0, 4096) == b"\x5a" * 4096)
        victims = rbd.identify_watchers(rbd.watchers(name))
        assert [w.entity for w in victims] == ["client.hosta"]
        rbd.fence_watchers(name, victims)
        assert rbd.watchers(name) == []
        out, _ = vm.communicate("write -P 0x11 0 4k\nflush\n", timeout=60)
        assert "failed" in out.lower() or "error" in out.lower()
        assert read(rbd, name, 0, 4096) == b"\x5a" * 4096  # nothing of the fenced write landed
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
