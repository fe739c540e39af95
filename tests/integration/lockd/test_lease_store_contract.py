"""The LeaseStore contract, run against every store: the file store (a temporary directory), RADOS
(the lab's real Ceph, in a namespace of its own per test session) and Gluster (the lab's replica-3
volume through libgfapi, in a directory of its own per test) and iSCSI (a fresh LUN on the lab's tgtd,
guarded by persistent reservations)."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockd.errors import FenceFailed, LeaseLost, StoreUnavailable, VersionConflict
from lockd.lease import Heartbeat, Mode, Owner, Resource, Versioned
from lockd.stores.base import LeaseStore
from lockd.stores.file import FileLeaseStore
from lockd.stores.gluster import GlusterLeaseStore, GlusterStoreConfig
from lockd.stores.iscsi import IscsiLeaseStore, IscsiStoreConfig
from lockd.stores.rados import RadosLeaseStore, RadosStoreConfig
from tests.integration.conftest import lab_store

LS = "hvstore-test"


def rados_config(lab: object) -> RadosStoreConfig:
    entry = lab_store(lab, "ceph")  # type: ignore[arg-type]
    cfg = entry.config
    return RadosStoreConfig(conf=cfg.conf, pool=cfg.pool, keyring=cfg.keyring, user=cfg.user,
                            namespace=f"lockd-test-{uuid.uuid4().hex[:8]}")


def gluster_config(lab: object) -> GlusterStoreConfig:
    cfg = lab_store(lab, "gluster").config  # type: ignore[arg-type]  # the replica-3, quorum-auto volume
    return GlusterStoreConfig(volume=cfg.volume, server=cfg.server, port=cfg.port,  # type: ignore[attr-defined]
                              root=f"/lockd-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def lease_lun(lab: object) -> Iterator[tuple[Any, str]]:
    """A fresh 8 MiB LUN on the lab's tgtd for the iSCSI lease store: (iscsi backend, volume name)."""
    with lab_store(lab, "iscsi").backend() as backend:  # type: ignore[arg-type]
        name = f"lockd-pr-{uuid.uuid4().hex[:8]}"
        backend.create(name, 8 << 20)
        try:
            yield backend, name
        finally:
            backend.delete(name, force=True)


def iscsi_config(lun: tuple[Any, str], host: str, **overrides: Any) -> IscsiStoreConfig:
    backend, name = lun
    initiator = backend.initiator_for(host, "lockd")
    backend.allow(name, initiator)
    return IscsiStoreConfig(portal=backend.config.portal, target=backend.info(name).details["iqn"],
                            initiator=initiator, **overrides)


@pytest.fixture(params=["file", "rados", "gluster", "iscsi"])
def lease_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseStore]:
    if request.param == "file":
        store: LeaseStore = FileLeaseStore(tmp_path / "leases")
    elif request.param == "gluster":
        store = GlusterLeaseStore(gluster_config(request.getfixturevalue("lab")))
    elif request.param == "iscsi":
        store = IscsiLeaseStore(iscsi_config(request.getfixturevalue("lease_lun"), "hosta"))
    else:
        store = RadosLeaseStore(rados_config(request.getfixturevalue("lab")))
    with store:
        yield store
    if isinstance(store, GlusterLeaseStore):  # through the lab's FUSE mount: gfapi has no recursive delete
        fuse = lab_store(request.getfixturevalue("lab"), "gluster").config.fuse_mount  # type: ignore[attr-defined]
        shutil.rmtree(Path(fuse) / store.config.root.lstrip("/"), ignore_errors=True)


def beat(host: str, counter: int, **kw: object) -> Heartbeat:
    return Heartbeat(host, f"inc-{host}", counter, 8.0, **kw)  # type: ignore[arg-type]


def test_empty_lockspace(lease_store: LeaseStore) -> None:
    assert lease_store.read_heartbeats(LS) == {}
    assert lease_store.read_resource(LS, "disk") is None
    assert lease_store.list_resources(LS) == []


def test_heartbeat_create_then_compare_and_swap(lease_store: LeaseStore) -> None:
    lease_store.write_heartbeat(LS, beat("hosta", 0), expected=None)
    with pytest.raises(VersionConflict):
        lease_store.write_heartbeat(LS, beat("hosta", 5), expected=None)
    lease_store.write_heartbeat(LS, beat("hosta", 1), expected=beat("hosta", 0))
    with pytest.raises(VersionConflict):
        lease_store.write_heartbeat(LS, beat("hosta", 2), expected=beat("hosta", 0))
    assert lease_store.read_heartbeats(LS) == {"hosta": beat("hosta", 1)}


def test_eviction_beats_a_stale_renewal(lease_store: LeaseStore) -> None:
    lease_store.write_heartbeat(LS, beat("hosta", 3), expected=None)
    evicted = beat("hosta", 3).evicted(Owner("hostb", "x"))
    lease_store.write_heartbeat(LS, evicted, expected=beat("hosta", 3))
    with pytest.raises(VersionConflict):
        lease_store.write_heartbeat(LS, beat("hosta", 4), expected=beat("hosta", 3))
    assert lease_store.read_heartbeats(LS)["hosta"].evicted_by == "hostb/x"


def test_one_read_sees_every_host(lease_store: LeaseStore) -> None:
    for host in ("hosta", "hostb", "hostc"):
        lease_store.write_heartbeat(LS, beat(host, 0, client="127.0.0.1:0/1"), expected=None)
    beats = lease_store.read_heartbeats(LS)
    assert sorted(beats) == ["hosta", "hostb", "hostc"]
    assert beats["hostb"].client == "127.0.0.1:0/1"
    assert LS in lease_store.lockspaces()


@pytest.mark.parametrize("key", ["disk", "vm-1/disk 0", "f" * 64])
def test_resource_versions(lease_store: LeaseStore, key: str) -> None:
    first = Resource(key, Mode.EXCLUSIVE, (Owner("hosta", "1"),), 1)
    v1 = lease_store.write_resource(LS, first, expected_version=None)
    with pytest.raises(VersionConflict):
        lease_store.write_resource(LS, first, expected_version=None)
    assert lease_store.read_resource(LS, key).value == first
    assert lease_store.read_resource(LS, key).version == v1
    second = first.without(Owner("hosta", "1"))
    v2 = lease_store.write_resource(LS, second, expected_version=v1)
    assert v2 > v1
    with pytest.raises(VersionConflict):
        lease_store.write_resource(LS, first, expected_version=v1)
    got = lease_store.read_resource(LS, key)
    assert (got.value, got.version) == (second, v2)
    assert [r.value for r in lease_store.list_resources(LS)] == [second]


def test_lockspaces_are_separate(lease_store: LeaseStore) -> None:
    lease_store.write_resource("ls-one", Resource("k"), expected_version=None)
    lease_store.write_heartbeat("ls-two", beat("hosta", 0), expected=None)
    assert lease_store.read_resource("ls-two", "k") is None
    assert lease_store.read_heartbeats("ls-one") == {}
    assert {"ls-one", "ls-two"} <= set(lease_store.lockspaces())


def test_concurrent_compare_and_swap_loses_no_update(lease_store: LeaseStore) -> None:
    """Four threads each add 15 to a shared token by read + CAS, retrying on conflict: none is lost,
    and of four exclusive creates of one record exactly one wins."""
    lease_store.write_resource(LS, Resource("counter"), expected_version=None)
    winners: list[int] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            try:
                lease_store.write_resource(LS, Resource("once", token=n), expected_version=None)
                winners.append(n)
            except VersionConflict:
                pass
            done = 0
            while done < 15:
                current = lease_store.read_resource(LS, "counter")
                assert current is not None
                try:
                    lease_store.write_resource(LS, Resource("counter", token=current.value.token + 1),
                                               expected_version=current.version)
                    done += 1
                except VersionConflict:
                    continue
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert lease_store.read_resource(LS, "counter").value.token == 60
    assert len(winners) == 1
    assert lease_store.read_resource(LS, "once").value.token == winners[0]


def test_rados_fence_client_cuts_off_a_dead_hosts_lockd(lab: object) -> None:
    """The taker blocklists the client named in the victim's heartbeat and returns only once every OSD
    has the new osdmap: the victim's very next store operation fails, and nothing it writes lands."""
    config = rados_config(lab)
    with RadosLeaseStore(config) as taker, RadosLeaseStore(config) as victim:
        victim_beat = beat("hostv", 0, client=victim.client_id())
        victim.write_heartbeat(LS, victim_beat, expected=None)
        with pytest.raises(FenceFailed):
            taker.fence_client(LS, beat("hostt", 0, client=taker.client_id()))  # never itself
        done = taker.fence_client(LS, victim_beat)
        assert "blocklisted" in done
        with pytest.raises(LeaseLost, match="blocklisted"):
            victim.write_heartbeat(LS, victim_beat.renewed(), expected=victim_beat)
        assert taker.read_heartbeats(LS)["hostv"] == victim_beat


def test_iscsi_stores_of_two_hosts_lose_no_update(lease_lun: tuple[Any, str]) -> None:
    """Two hosts (two initiators, two I_T nexuses) add to one token by read + CAS from two threads each:
    the reservation mutex serializes them across the target, none is lost."""
    stores = [IscsiLeaseStore(iscsi_config(lease_lun, host)) for host in ("hosta", "hostb")]
    errors: list[BaseException] = []

    def work(store: IscsiLeaseStore) -> None:
        try:
            done = 0
            while done < 10:
                current = store.read_resource(LS, "counter")
                assert current is not None
                try:
                    store.write_resource(LS, Resource("counter", token=current.value.token + 1),
                                         expected_version=current.version)
                    done += 1
                except VersionConflict:
                    continue
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    with stores[0], stores[1]:
        stores[0].write_resource(LS, Resource("counter"), expected_version=None)
        threads = [threading.Thread(target=work, args=(s,)) for s in stores for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert stores[1].read_resource(LS, "counter").value.token == 40  # type: ignore[union-attr]


def test_iscsi_a_stalled_critical_section_is_preempted_and_its_write_refused(lease_lun: tuple[Any, str]) -> None:
    """hosta stalls inside its critical section (holding the reservation); hostb preempts it after the
    lock timeout and writes; hosta's late write is refused by the target and nothing of it lands."""
    a = IscsiLeaseStore(iscsi_config(lease_lun, "hosta", lock_timeout_s=0.3))
    b = IscsiLeaseStore(iscsi_config(lease_lun, "hostb", lock_timeout_s=0.3))
    with a, b:
        a.write_resource(LS, Resource("k", token=1), expected_version=None)
        with a._exclusive():
            slot, doc = a._locate(a._name("res", LS, "k"))
            assert doc is not None
            b.write_resource(LS, Resource("k", token=2), expected_version=1)
            with pytest.raises(StoreUnavailable, match="preempted"):
                a._write(slot, {**doc, "version": 2, "data": Resource("k", token=3).encode()})
        assert b.read_resource(LS, "k") == Versioned(Resource("k", token=2), 2)
        a.write_resource(LS, Resource("k", token=4), expected_version=2)  # a re-registers and goes on
        assert b.read_resource(LS, "k") == Versioned(Resource("k", token=4), 3)
