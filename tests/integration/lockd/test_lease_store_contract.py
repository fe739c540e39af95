"""The LeaseStore contract, run against every store: the file store (a temporary directory) and RADOS
(the lab's real Ceph, in a namespace of its own per test session)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockd.errors import FenceFailed, LeaseLost, VersionConflict
from lockd.lease import Heartbeat, Mode, Owner, Resource
from lockd.stores.base import LeaseStore
from lockd.stores.file import FileLeaseStore
from lockd.stores.rados import RadosLeaseStore, RadosStoreConfig
from tests.integration.conftest import lab_store

LS = "hvstore-test"


def rados_config(lab: object) -> RadosStoreConfig:
    entry = lab_store(lab, "ceph")  # type: ignore[arg-type]
    cfg = entry.config
    return RadosStoreConfig(conf=cfg.conf, pool=cfg.pool, keyring=cfg.keyring, user=cfg.user,
                            namespace=f"lockd-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["file", "rados"])
def lease_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LeaseStore]:
    if request.param == "file":
        store: LeaseStore = FileLeaseStore(tmp_path / "leases")
    else:
        store = RadosLeaseStore(rados_config(request.getfixturevalue("lab")))
    with store:
        yield store


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
