"""The volume contract: the same suite on every store of the lab (LAB_STORES in conftest.py).

Every test goes through VolumeService, as the CLI does; a feature the store's capability table declares
unsupported must raise Unsupported, and a declared one must work.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from xml.etree import ElementTree

import pytest

from hvstore.config import StoreEntry, load_config
from hvstore.errors import AlreadyExists, InvalidArgument, NotFound, Unsupported
from hvstore.model import PARTIAL_PREFIX, Feature, VolumeRef
from hvstore.service import VolumeService

MiB = 1 << 20


@pytest.fixture
def service(store: StoreEntry) -> Iterator[VolumeService]:
    config = load_config(os.environ.get("HVSTORE_CONFIG") or None)
    with VolumeService(config) as svc:
        yield svc


@pytest.fixture
def names(service: VolumeService, store: StoreEntry) -> Iterator[callable]:
    """Unique volume refs for one test; whatever exists of them at the end is deleted."""
    made: list[VolumeRef] = []

    def new(prefix: str = "t") -> VolumeRef:
        ref = VolumeRef(store.name, f"{prefix}-{uuid.uuid4().hex[:10]}")
        made.append(ref)
        return ref

    yield new
    for ref in reversed(made):
        for name in (ref.name, PARTIAL_PREFIX + ref.name):
            try:
                service.delete(VolumeRef(ref.store, name), force=True)
            except NotFound:
                pass


def pattern(seed: str, length: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(length)


def supports(service: VolumeService, store: StoreEntry, feature: Feature) -> bool:
    return service.capabilities(store.name).supports(feature)


def test_create_info_list_delete(service, store, names):
    ref = names()
    created = service.create(ref, 64 * MiB)
    assert created.size_bytes == 64 * MiB
    assert created.name == ref.name
    assert service.info(ref).size_bytes == 64 * MiB
    assert ref.name in [v.name for v in service.list(store.name)]
    service.delete(ref)
    assert ref.name not in [v.name for v in service.list(store.name)]
    with pytest.raises(NotFound):
        service.info(ref)


def test_create_existing_and_missing_volume_errors(service, names):
    ref = names()
    service.create(ref, 16 * MiB)
    with pytest.raises(AlreadyExists):
        service.create(ref, 16 * MiB)
    missing = names()
    with pytest.raises(NotFound):
        service.info(missing)
    with pytest.raises(NotFound):
        service.delete(missing)


def test_size_is_rounded_to_sectors_and_zero_refused(service, names):
    ref = names()
    assert service.create(ref, 1000).size_bytes == 1024
    with pytest.raises(InvalidArgument):
        service.create(names(), 0)


def test_grow_and_shrink_rules(service, store, names):
    ref = names()
    service.create(ref, 32 * MiB)
    if not supports(service, store, Feature.GROW):
        with pytest.raises(Unsupported):
            service.resize(ref, 64 * MiB)
        return
    assert service.resize(ref, 64 * MiB).size_bytes == 64 * MiB
    if supports(service, store, Feature.SHRINK):
        with pytest.raises(InvalidArgument):
            service.resize(ref, 16 * MiB)  # shrinking needs shrink=True
        assert service.resize(ref, 16 * MiB, shrink=True).size_bytes == 16 * MiB
    else:
        with pytest.raises(Unsupported):
            service.resize(ref, 16 * MiB, shrink=True)


def test_block_io_round_trip(service, names):
    ref = names()
    service.create(ref, 32 * MiB)
    data = pattern(ref.name, 3 * MiB)
    with service.open(ref, writable=True) as io:
        assert io.size() == 32 * MiB
        io.write(5 * MiB, data)
        io.flush()
    with service.open(ref) as io:
        assert io.read(5 * MiB, len(data)) == data
        assert io.read(0, MiB) == bytes(MiB)


def test_snapshot_rollback_and_delete_snapshot(service, store, names):
    ref = names()
    service.create(ref, 16 * MiB)
    if not supports(service, store, Feature.SNAPSHOT):
        with pytest.raises(Unsupported):
            service.snapshot(ref, "s1")
        return
    before = pattern("before", MiB)
    with service.open(ref, writable=True) as io:
        io.write(0, before)
    service.snapshot(ref, "s1")
    assert [s.name for s in service.snapshots(ref)] == ["s1"]
    with pytest.raises(AlreadyExists):
        service.snapshot(ref, "s1")
    with service.open(ref, writable=True) as io:
        io.write(0, pattern("after", MiB))
    if supports(service, store, Feature.ROLLBACK):
        service.rollback(ref, "s1")
        with service.open(ref) as io:
            assert io.read(0, MiB) == before
    with pytest.raises(NotFound):
        service.rollback(ref, "nope") if supports(service, store, Feature.ROLLBACK) else service.delete_snapshot(
            ref, "nope")
    service.delete_snapshot(ref, "s1")
    assert service.snapshots(ref) == []


def test_clone_from_snapshot(service, store, names):
    ref, copy = names(), names("clone")
    service.create(ref, 16 * MiB)
    if not supports(service, store, Feature.CLONE):
        with pytest.raises(Unsupported):
            service.clone(VolumeRef(ref.store, ref.name, "s1"), copy)
        return
    data = pattern(ref.name, 2 * MiB)
    with service.open(ref, writable=True) as io:
        io.write(MiB, data)
    service.snapshot(ref, "s1")
    with service.open(ref, writable=True) as io:
        io.write(MiB, bytes(2 * MiB))  # the origin changes; the clone keeps the snapshot's bytes
    cloned = service.clone(VolumeRef(ref.store, ref.name, "s1"), copy)
    assert cloned.name == copy.name
    with service.open(copy) as io:
        assert io.read(MiB, len(data)) == data
    if supports(service, store, Feature.FLATTEN):
        service.flatten(copy)
        assert service.info(copy).parent is None
    names_now = [v.name for v in service.list(store.name, include_partial=True)]
    assert not any(n.startswith(PARTIAL_PREFIX) for n in names_now)


def test_rename(service, store, names):
    ref, new = names(), names("renamed")
    service.create(ref, 16 * MiB)
    if not supports(service, store, Feature.RENAME):
        with pytest.raises(Unsupported):
            service.rename(ref, new)
        return
    other = names()
    service.create(other, 16 * MiB)
    with pytest.raises(AlreadyExists):
        service.rename(ref, other)
    service.rename(ref, new)
    assert service.info(new).size_bytes == 16 * MiB
    with pytest.raises(NotFound):
        service.info(ref)


def test_import_export_round_trip_is_sparse_and_qemu_identical(service, names, tmp_path):
    source = tmp_path / "source.raw"
    with source.open("wb") as f:  # data, a hole, data at an odd offset, trailing hole
        f.truncate(48 * MiB + 4096)
        f.write(pattern("a", 3 * MiB))
        f.seek(20 * MiB + 512)
        f.write(pattern("b", MiB))
    ref = names()
    imported = service.import_file(source, ref)
    assert imported.size_bytes == 48 * MiB + 4096
    out = tmp_path / "export.raw"
    assert service.export_file(ref, out) == source.stat().st_size
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", str(source), str(out)], check=True)
    assert out.stat().st_blocks * 512 < 16 * MiB  # holes stayed holes
    backend = service.backend(ref.store)
    subprocess.run(["qemu-img", "compare", "-q", "-U", "-f", "raw", "-F", backend.qemu_format(ref.name),
                    str(source), backend.uri(ref.name)], check=True)


def test_import_of_a_qcow2_file(service, names, tmp_path):
    raw, qcow2 = tmp_path / "a.raw", tmp_path / "a.qcow2"
    raw.write_bytes(pattern("q", 2 * MiB) + bytes(2 * MiB))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    ref = names()
    service.import_file(qcow2, ref)
    out = tmp_path / "out.raw"
    service.export_file(ref, out)
    assert out.read_bytes() == raw.read_bytes()


def test_export_refuses_to_overwrite(service, names, tmp_path):
    ref = names()
    service.create(ref, MiB)
    out = tmp_path / "exists.raw"
    out.write_bytes(b"keep")
    with pytest.raises(AlreadyExists):
        service.export_file(ref, out)
    assert out.read_bytes() == b"keep"


def test_bytes_written_by_qemu_io_are_exported(service, names, tmp_path):
    ref = names()
    service.create(ref, 16 * MiB)
    backend = service.backend(ref.store)
    subprocess.run(["qemu-io", "-f", backend.qemu_format(ref.name), "-c", "write -P 0xa5 1M 2M",
                    backend.uri(ref.name)], check=True, capture_output=True)
    out = tmp_path / "out.raw"
    service.export_file(ref, out)
    data = out.read_bytes()
    assert data[MiB : 3 * MiB] == b"\xa5" * (2 * MiB)
    assert data[: MiB] == bytes(MiB) and data[3 * MiB :] == bytes(13 * MiB)


def test_disk_xml_names_the_volume(service, names):
    ref = names()
    service.create(ref, MiB)
    xml = service.backend(ref.store).disk_xml(ref.name, target="vdb")
    disk = ElementTree.fromstring(xml)
    assert disk.tag == "disk" and disk.find("target").get("dev") == "vdb"
    assert ref.name in xml


def test_capability_table_is_complete(service, store):
    caps = service.capabilities(store.name)
    assert set(caps.features) == set(Feature)
    for support in caps.features.values():
        assert support.supported or support.note, "every 'no' must say why"


def test_unreadable_import_source_leaves_nothing(service, store, names, tmp_path):
    ref = names()
    with pytest.raises(NotFound):
        service.import_file(tmp_path / "missing.raw", ref)
    assert ref.name not in [v.name for v in service.list(store.name, include_partial=True)]
    assert PARTIAL_PREFIX + ref.name not in [v.name for v in service.list(store.name, include_partial=True)]
