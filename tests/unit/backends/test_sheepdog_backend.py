"""SheepdogBackend's verbs, against the FAKE Sheepdog cluster (in-process) and, when SHEEPDOG_ADDR names
one, against a real Sheepdog cluster (reported as SKIPPED otherwise: the real sheep cannot be installed
here). The fake itself is checked against a recorded real session in test_sheepdog_transcript.py.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from hvstore.backends.registry import BACKENDS
from hvstore.backends.sheepdog import CAPABILITIES, SheepdogBackend, SheepdogConfig
from hvstore.errors import (
    AlreadyExists,
    BackendUnavailable,
    Busy,
    ConfigError,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from hvstore.model import PARTIAL_PREFIX
from hvstore.protocols.sheepdog import SheepdogClient, SheepdogConnection
from hvstore.protocols.sheepdog_codec import Opcode, VdiFields, encode_name_tag
from hvstore.protocols.sheepdog_io import VdiIO
from tests.fakes.sheepdog_fake import FakeSheepdogCluster, FakeSheepdogServer

MiB = 1 << 20
OBJ = 4 * MiB  # the cluster default object size, fake and real


def pattern(seed: str, length: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(length)


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeSheepdogServer]:
    with FakeSheepdogServer(FakeSheepdogCluster(copies=3)) as server:
        yield server


@pytest.fixture(params=["FAKE-sheepdog", "real-sheepdog"])
def address(request: pytest.FixtureRequest) -> str:
    if request.param == "real-sheepdog":
        real = os.environ.get("SHEEPDOG_ADDR")
        if not real:
            pytest.skip("SHEEPDOG_ADDR is not set: no real Sheepdog cluster to test against (sheep cannot be "
                        "installed on these machines; the FAKE variant ran instead)")
        return real
    return request.getfixturevalue("fake_cluster").address


@pytest.fixture
def no_tgtd(tmp_path) -> str:
    """A control socket path no tgtd listens on: these tests do not export through tgtd."""
    return str(tmp_path / "no-tgtd" / "socket")


@pytest.fixture
def backend(address: str, no_tgtd: str) -> Iterator[SheepdogBackend]:
    config = SheepdogConfig.from_mapping("sd", {"address": address, "control_socket": no_tgtd})
    with SheepdogBackend("sd", config) as b:
        yield b


@pytest.fixture
def name(backend: SheepdogBackend) -> Iterator[str]:
    """A unique volume name; whatever exists of it (and of its renames/clones) afterwards is deleted."""
    base = f"t-{uuid.uuid4().hex[:10]}"
    yield base
    for vol in backend.list():
        if base in vol.name:
            backend.delete(vol.name, force=True)


def test_registered_with_its_capability_table():
    assert BACKENDS["sheepdog"] is SheepdogBackend
    assert SheepdogBackend.kind == "sheepdog" and CAPABILITIES.backend == "sheepdog"
    table = CAPABILITIES.to_json()["features"]
    assert not table["shrink"]["supported"] and table["fencing"]["supported"]  # at the tgt export
    assert table["clone"]["supported"] and table["rename"]["supported"]


def test_create_info_list_delete(backend, name):
    info = backend.create(name, 64 * MiB)
    assert (info.name, info.size_bytes, info.format, info.used_bytes) == (name, 64 * MiB, "raw", 0)
    assert info.details["object_size"] == OBJ
    assert name in [v.name for v in backend.list()]
    with pytest.raises(AlreadyExists):
        backend.create(name, MiB)
    backend.delete(name)
    assert not backend.exists(name)
    with pytest.raises(NotFound, match=f"volume sd/{name} does not exist"):
        backend.delete(name)
    with pytest.raises(NotFound):
        backend.info(name)


def test_write_read_across_objects_and_holes(backend, name):
    backend.create(name, 24 * MiB)
    data = pattern(name, 5 * MiB)
    with backend.open(name, writable=True) as io:
        assert io.size() == 24 * MiB
        io.write(OBJ - 1000, data)  # spans objects 0, 1 and 2
        assert io.read(OBJ - 1000, len(data)) == data
        assert io.read(20 * MiB, 4096) == bytes(4096)  # never written: a hole
        assert list(io.allocated_extents()) == [(0, 3 * OBJ)]
        with pytest.raises(InvalidArgument, match="outside"):
            io.write(24 * MiB - 1, b"xy")
    with backend.open(name) as io:
        assert io.read(OBJ - 1000, len(data)) == data
        with pytest.raises(InvalidArgument, match="read-only"):
            io.write(0, b"x")
    assert backend.info(name).used_bytes == 3 * OBJ


def test_resize(backend, name):
    backend.create(name, 8 * MiB)
    assert backend.resize(name, 40 * MiB).size_bytes == 40 * MiB
    with pytest.raises(InvalidArgument, match="cannot shrink"):
        backend.resize(name, 8 * MiB)
    with pytest.raises(Unsupported, match="sheepdog cannot shrink"):
        backend.resize(name, 8 * MiB, shrink=True)
    with pytest.raises(InvalidArgument, match="maximum"):
        backend.resize(name, (1 << 20) * OBJ + 1)
    with backend.open(name, writable=True) as io:
        io.write(39 * MiB, b"end")
        assert io.read(39 * MiB, 3) == b"end"


def test_snapshot_keeps_data_while_the_volume_changes(backend, name):
    backend.create(name, 16 * MiB)
    with backend.open(name, writable=True) as io:
        io.write(0, b"before" * 1000)
    snap = backend.snapshot(name, "s1")
    assert snap.name == "s1" and snap.size_bytes == 16 * MiB and snap.created
    with pytest.raises(AlreadyExists):
        backend.snapshot(name, "s1")
    with backend.open(name, writable=True) as io:
        io.write(0, b"after!")  # copy-on-write of object 0
        io.write(8 * MiB, b"new object")
        assert io.read(0, 12) == b"after!before"
    assert [s.name for s in backend.snapshots(name)] == ["s1"]
    backend.clone(name, "s1", f"{name}-c")
    with backend.open(f"{name}-c") as io:
        assert io.read(0, 12) == b"beforebefore"
        assert io.read(8 * MiB, 10) == bytes(10)


def test_rollback(backend, name):
    backend.create(name, 8 * MiB)
    with backend.open(name, writable=True) as io:
        io.write(100, b"original")
    backend.snapshot(name, "s1")
    with backend.open(name, writable=True) as io:
        io.write(100, b"changed!")
    backend.rollback(name, "s1")
    with backend.open(name) as io:
        assert io.read(100, 8) == b"original"
    assert [s.name for s in backend.snapshots(name)] == ["s1"]  # the replaced state is gone
    with pytest.raises(NotFound, match="@nope does not exist"):
        backend.rollback(name, "nope")


def test_clone_is_independent_and_outlives_its_snapshot(backend, name):
    backend.create(name, 8 * MiB)
    with backend.open(name, writable=True) as io:
        io.write(0, b"shared")
    backend.snapshot(name, "base")
    clone = backend.clone(name, "base", f"{name}-c")
    assert clone.parent == f"{name}@base" and clone.used_bytes == 0
    with backend.open(f"{name}-c", writable=True) as io:
        io.write(0, b"CLONE!")
    with backend.open(name) as io:
        assert io.read(0, 6) == b"shared"
    with pytest.raises(AlreadyExists):
        backend.clone(name, "base", f"{name}-c")
    backend.delete_snapshot(name, "base")
    backend.delete(name)
    with backend.open(f"{name}-c") as io:
        assert io.read(0, 6) == b"CLONE!"
        assert io.read(6, 10) == bytes(10)


def test_rename_keeps_data(backend, name):
    partial = PARTIAL_PREFIX + name
    backend.create(partial, 8 * MiB)
    with backend.open(partial, writable=True) as io:
        io.write(5, b"imported")
    renamed = backend.rename(partial, name)
    assert renamed.name == name and renamed.parent is None and not renamed.snapshots
    assert not backend.exists(partial)
    with backend.open(name, writable=True) as io:
        assert io.read(5, 8) == b"imported"
        io.write(0, b"Z")
        assert io.read(0, 13) == b"Z\0\0\0\0imported"
    backend.snapshot(name, "s1")
    with pytest.raises(Busy, match="has snapshots"):
        backend.rename(name, f"{name}-x")


def test_delete_removes_snapshots_and_frees_objects(fake_cluster, name, no_tgtd):
    config = SheepdogConfig.from_mapping("sd", {"address": fake_cluster.address, "control_socket": no_tgtd})
    with SheepdogBackend("sd", config) as backend:
        backend.create(name, 16 * MiB)
        with backend.open(name, writable=True) as io:
            io.write(0, pattern(name, 9 * MiB))
        backend.snapshot(name, "s1")
        with backend.open(name, writable=True) as io:
            io.write(0, b"cow")
        vids = {int(v.details["vid"], 16) for v in backend.list() if v.name == name}
        backend.delete(name)
    cluster = fake_cluster.cluster
    live = [vid for vid, vdi in cluster.vdis.items() if vdi.inode.name == name]
    assert live == [] and vids <= cluster.deleted
    leftovers = [oid for oid in cluster.objects if (oid >> 32) & 0xFFFFFF in cluster.deleted]
    assert leftovers == []


def test_bare_del_vdi_would_leak_objects(fake_cluster, name):
    """Why delete_vdi zeroes the index first: the fake, like sheep, leaves a half-deleted VDI otherwise."""
    with SheepdogConnection(fake_cluster.address) as conn:
        client = SheepdogClient(conn)
        vid = client.create_vdi(name, 8 * MiB)
        VdiIO(client, name, writable=True).write(0, b"data")
        rsp, _ = conn.call(Opcode.DEL_VDI, VdiFields(), payload=encode_name_tag(name))
        assert rsp.ok
        assert client.lookup(name).vid == vid  # still found
        assert vid not in client.vdi_ids()  # but hidden from listings
        assert any((oid >> 32) == vid for oid in fake_cluster.cluster.objects)  # and its object leaked


def test_write_after_someone_else_snapshotted(backend, name):
    """A READONLY answer (our cached vid became a snapshot) makes the handle re-look-up and resend."""
    backend.create(name, 8 * MiB)
    with backend.open(name, writable=True) as io:
        io.write(0, b"v1")
        backend.snapshot(name, "s1")  # through the backend's own connection
        io.write(0, b"v2")
        assert io.read(0, 2) == b"v2"
    backend.clone(name, "s1", f"{name}-c")
    with backend.open(f"{name}-c") as io:
        assert io.read(0, 2) == b"v1"


def test_vdi_lock_on_open_with_a_lock_enforcing_cluster(name, no_tgtd):
    with FakeSheepdogServer(FakeSheepdogCluster(lock_enforced=True)) as server:
        config = SheepdogConfig.from_mapping("sd", {"address": server.address, "lock_on_open": True,
                                                    "control_socket": no_tgtd})
        with SheepdogBackend("sd", config) as backend:
            backend.create(name, 4 * MiB)
            with backend.open(name, writable=True):
                with pytest.raises(Busy, match="VDI is locked"):
                    backend.open(name, writable=True)
                with backend.open(name) as reader:  # readers take no lock
                    assert reader.read(0, 1) == b"\0"
            with backend.open(name, writable=True) as io:  # released on close
                io.write(0, b"x")


def test_unreachable_cluster_is_one_clear_line():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = SheepdogConfig.from_mapping("sd", {"address": f"127.0.0.1:{port}", "timeout_s": 2})
    with pytest.raises(BackendUnavailable) as caught:
        SheepdogBackend("sd", config).connect()
    message = str(caught.value)
    assert "\n" not in message and f"sheepdog at 127.0.0.1:{port} unreachable" in message


def test_export_without_tgtd_is_one_clear_line(backend, name, no_tgtd):
    backend.create(name, 4 * MiB)
    with pytest.raises(BackendUnavailable) as caught:
        backend.uri(name)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"sheepdog store 'sd': tgtd does not answer on {no_tgtd}")
    assert message.endswith("start tgtd ('hvstore lab up tgt') to attach sheepdog volumes")
    backend.delete(name)  # nothing exported, and no tgtd to ask: delete does not need one


def test_bad_config_is_a_config_error():
    for table, match in [({"address": "host:port"}, "invalid sheepdog address"),
                         ({"block_size_shift": 12}, "block_size_shift"),
                         ({"copies": -1}, "copies"),
                         ({"adress": "x"}, "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            SheepdogBackend("sd", SheepdogConfig.from_mapping("sd", table)).connect()


def test_bad_names_are_refused_by_sheep_protocol_limits(backend):
    with pytest.raises(InvalidArgument, match="longer than 255 bytes"):
        backend.create("x" * 300, MiB)


def test_tgt_backing_store_and_iqn():
    config = SheepdogConfig.from_mapping("Lab", {"address": "10.0.0.5:7001"})
    backend = SheepdogBackend("Lab", config)
    assert backend.tgt_backing_store("vm-1") == "tcp:10.0.0.5:7001:vm-1"
    assert SheepdogBackend("s", SheepdogConfig.from_mapping("s", {"address": "unix:/sd/sock"})) \
        .tgt_backing_store("v") == "unix:/sd/sock:v"
    assert backend._iqn("vm-1") == "iqn.2026-11.org.hvstore.sheepdog:lab.vm-1"
    odd = backend._iqn("VM_1")
    assert odd.startswith("iqn.2026-11.org.hvstore.sheepdog:lab.vm-1-") and odd != backend._iqn("vm_1")
