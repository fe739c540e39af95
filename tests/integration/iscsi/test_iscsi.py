"""The iSCSI backend against the lab's real tgtd: targets, ACL, CHAP, QEMU interop, re-apply, PR helpers.

The shared volume contract (tests/integration/test_volume_contract.py) covers the generic verbs; these
tests cover what is particular to iSCSI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from hvstore.backends.iscsi import IscsiBackend, IscsiConfig
from hvstore.config import StoreEntry
from hvstore.errors import AlreadyExists, BackendUnavailable, Busy, Unsupported
from hvstore.lab import LabController
from hvstore.lab.procs import alive
from hvstore.lab.service import wait_until
from hvstore.protocols.libiscsi import (
    Chap,
    IscsiConnectionLost,
    IscsiSession,
    LoginFailed,
    PrType,
    ReservationConflict,
    Target,
)
from hvstore.tools import tgtadm
from tests.integration.conftest import lab_store

MiB = 1 << 20


@pytest.fixture(scope="module")
def entry(lab: LabController) -> StoreEntry:
    return lab_store(lab, "iscsi")


@pytest.fixture
def backend(entry: StoreEntry) -> Iterator[IscsiBackend]:
    with entry.backend() as b:
        assert isinstance(b, IscsiBackend)
        yield b


@pytest.fixture
def volume(backend: IscsiBackend) -> Iterator[str]:
    name = f"i-{uuid.uuid4().hex[:10]}"
    backend.create(name, 16 * MiB)
    yield name
    if backend.exists(name):
        backend.delete(name, force=True)


def pattern(seed: str, length: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(length)


def session(backend: IscsiBackend, name: str, initiator: str, chap: Chap | None = None) -> IscsiSession:
    target = Target(backend.config.portal, backend.info(name).details["iqn"], 1)
    return IscsiSession(target, initiator=initiator, chap=chap, timeout_s=5, reconnect_retries=1)


def live_target(backend: IscsiBackend, name: str) -> tgtadm.TargetInfo:
    target = backend.tgtd.find(backend.info(name).details["iqn"])
    assert target is not None
    return target


def qemu_io_argv(backend: IscsiBackend, name: str, initiator: str, *commands: str) -> list[str]:
    portal = backend.config.portal
    iqn = backend.info(name).details["iqn"]
    opts = (f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={portal},file.target={iqn},"
            f"file.lun=1,file.initiator-name={initiator}")
    return ["qemu-io", "--image-opts", opts, *[arg for c in commands for arg in ("-c", c)]]


# -- target lifecycle -----------------------------------------------------------------------------
def test_create_makes_a_tuned_target_with_lun_1_on_a_sparse_file(backend, volume):
    info = backend.info(volume)
    assert info.details["iqn"] == f"iqn.2026-11.org.hvstore:{backend.store}.{volume}"
    assert info.used_bytes == 0  # sparse
    target = live_target(backend, volume)
    disk = next(lun for lun in target.luns if lun.lun == 1)
    assert disk.backing_path == info.details["file"]
    assert disk.block_size == 512
    assert set(target.acl) == {backend.config.initiator, *backend.config.allowed_initiators}
    params = backend.tgtd.parameters(target.tid)
    assert {k: params[k] for k in tgtadm.TUNED_PARAMETERS} == tgtadm.TUNED_PARAMETERS


def test_grow_is_offline_and_visible_to_a_new_login(backend, volume):
    with session(backend, volume, backend.config.initiator) as s, pytest.raises(Busy):
        assert s.size_bytes == 16 * MiB
        backend.resize(volume, 32 * MiB)
    assert backend.resize(volume, 32 * MiB).size_bytes == 32 * MiB
    with session(backend, volume, backend.config.initiator) as s:
        assert s.size_bytes == 32 * MiB
    with pytest.raises(Unsupported):
        backend.resize(volume, 8 * MiB, shrink=True)


def test_snapshot_refused_while_logged_in_and_acl_restored_after(backend, volume):
    with session(backend, volume, backend.config.initiator), pytest.raises(Busy):
        backend.snapshot(volume, "s1")
    acl_before = live_target(backend, volume).acl
    backend.snapshot(volume, "s1")
    assert live_target(backend, volume).acl == acl_before
    assert [s.name for s in backend.snapshots(volume)] == ["s1"]


def test_rename_recreates_the_target_over_the_same_bytes(backend, volume):
    data = pattern(volume, MiB)
    with backend.open(volume, writable=True) as io:
        io.write(3 * MiB, data)
    new = f"r-{uuid.uuid4().hex[:10]}"
    try:
        backend.rename(volume, new)
        assert not backend.exists(volume)
        with backend.open(new) as io:
            assert io.read(3 * MiB, MiB) == data
        assert all(not t.iqn.endswith(f".{volume}") for t in backend.tgtd.targets())
    finally:
        if backend.exists(new):
            backend.delete(new, force=True)


def test_delete_refused_while_logged_in_unless_forced(backend, volume):
    s = session(backend, volume, backend.config.initiator).login()
    try:
        with pytest.raises(Busy):
            backend.delete(volume)
        backend.delete(volume, force=True)
        assert not backend.exists(volume)
        with pytest.raises((IscsiConnectionLost, LoginFailed)):
            s.read_blocks(0, 1)
    finally:
        s.close()


def test_unreachable_tgtd_is_backend_unavailable(entry, tmp_path):
    config = dataclasses.replace(entry.config, control_socket=str(tmp_path / "nothing"),
                                 state_file=str(tmp_path / "state.json"), directory=str(tmp_path))
    with pytest.raises(BackendUnavailable, match="tgtd"):
        IscsiBackend("nowhere", config).connect()


def test_reapply_drops_orphan_targets_but_never_another_stores(entry, backend, tmp_path):
    other_config = dataclasses.replace(entry.config, directory=str(tmp_path / "v"),
                                       state_file=str(tmp_path / "state.json"))
    other = IscsiBackend(f"{backend.store}.b", other_config)  # its volume "c" has the IQN of our "b.c"
    other.connect()
    try:
        other.create("c", MiB)
        with pytest.raises(AlreadyExists, match="another store"):
            backend.create("b.c", MiB)
        orphan = f"orphan-{uuid.uuid4().hex[:6]}"  # a target over our file that the state does not know
        path = backend.directory / f"{orphan}.img"
        path.write_bytes(bytes(4096))
        backend.tgtd.add_target(backend._iqn(orphan), path, 1, initiators=[], chap=None)
        backend.reapply()
        assert backend.tgtd.find(backend._iqn(orphan)) is None
        assert other.tgtd.find(other._iqn("c")) is not None
        path.unlink()
    finally:
        other.delete("c", force=True)


# -- access control -------------------------------------------------------------------------------
def test_an_initiator_not_in_the_acl_is_refused_until_allowed(backend, volume):
    vm = backend.initiator_for(f"vm-{uuid.uuid4().hex[:6]}")
    with pytest.raises(LoginFailed, match="Target not found"):
        session(backend, volume, vm).login()
    backend.allow(volume, vm)
    with session(backend, volume, vm) as s:
        assert s.size_bytes == 16 * MiB
    assert vm in backend.info(volume).details["initiators"]


def test_fence_cuts_a_logged_in_initiator_off(backend, volume):
    vm = backend.initiator_for("vm-fenced")
    backend.allow(volume, vm)
    with session(backend, volume, vm) as s:
        s.write_blocks(0, pattern("before", 4096))
        closed = backend.fence_initiator(volume, vm)
        assert len(closed) == 1
        with pytest.raises(IscsiConnectionLost):  # bounded re-logins are refused: fails, does not hang
            s.write_blocks(0, pattern("after", 4096))
    with pytest.raises(LoginFailed):
        session(backend, volume, vm).login()
    with backend.open(volume) as io:
        assert io.read(0, 4096) == pattern("before", 4096)


def test_qemu_io_with_a_per_vm_initiator_name(backend, volume):
    vm = backend.initiator_for("vm-qemu")
    refused = subprocess.run(qemu_io_argv(backend, volume, vm, "read 0 512"), capture_output=True, text=True)
    assert refused.returncode != 0
    backend.allow(volume, vm)
    done = subprocess.run(qemu_io_argv(backend, volume, vm, "write -P 0x3c 0 1M"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with backend.open(volume) as io:
        assert io.read(0, MiB) == b"\x3c" * MiB
    xml = backend.disk_xml(volume, host="vm-qemu")
    assert f"<iqn name='{vm}'/>" in xml
    assert f"name='{backend.info(volume).details['iqn']}/1'" in xml


# -- CHAP -----------------------------------------------------------------------------------------
@pytest.fixture
def chap_backend(entry: StoreEntry, tmp_path) -> Iterator[IscsiBackend]:
    """A second store on the same tgtd whose targets require CHAP (a user of its own: tgtd's accounts
    are global, and a user that exists keeps its first password)."""
    user, password = f"hvchap-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:16]
    config = dataclasses.replace(
        entry.config, directory=str(tmp_path / "volumes"), state_file=str(tmp_path / "state.json"),
        chap_user=user, chap_password=password,
    )
    assert isinstance(config, IscsiConfig)
    with IscsiBackend("chapstore", config) as b:
        yield b
        for volume in b.list():
            b.delete(volume.name, force=True)
        b.tgtd.run(b.tgtd.tool.delete_account(user))


def test_chap_required_and_secret_never_shown(chap_backend):
    name = "c1"
    chap_backend.create(name, 8 * MiB)
    password = chap_backend.config.chap_password
    with pytest.raises(LoginFailed, match="Authentication failure"):
        session(chap_backend, name, chap_backend.config.initiator).login()
    user = chap_backend.config.chap_user
    with pytest.raises(LoginFailed):
        session(chap_backend, name, chap_backend.config.initiator, Chap(user, "wrong-password1")).login()
    with chap_backend.open(name, writable=True) as io:  # the backend logs in with the configured CHAP
        io.write(0, pattern("chap", 4096))
    env = {**os.environ, "LIBISCSI_CHAP_USERNAME": user, "LIBISCSI_CHAP_PASSWORD": password}
    uri = chap_backend.uri(name)
    read = subprocess.run(["qemu-io", "-f", "raw", "-c", "read -v 0 16", uri], capture_output=True, text=True,
                          env=env)
    assert read.returncode == 0, read.stderr
    xml = chap_backend.disk_xml(name, host="vm1")
    assert f"<auth username='{user}'><secret type='iscsi' usage='hvstore-chapstore'/></auth>" in xml
    shown = [xml, uri, str(chap_backend.info(name).to_json()), str(chap_backend.config.public())]
    assert not any(password in text for text in shown)


# -- tgtd restart ---------------------------------------------------------------------------------
def test_lab_up_after_a_tgtd_crash_restores_every_target(lab, entry, backend, volume):
    vm = backend.initiator_for("vm-restart")
    backend.allow(volume, vm)
    data = pattern(volume, 2 * MiB)
    with backend.open(volume, writable=True) as io:
        io.write(MiB, data)
    pid = lab.lab.daemon_pid("tgtd")
    assert pid is not None
    os.kill(pid, 9)
    wait_until(lambda: not alive(pid) and not lab.lab.running("tgtd"), timeout_s=20, what="tgtd to die")
    with pytest.raises(BackendUnavailable):
        backend.sessions(volume)
    lab.up(["tgt"])
    assert lab.lab.daemon_pid("tgtd") not in (None, pid)
    target = live_target(backend, volume)
    assert vm in target.acl
    with backend.open(volume) as io:
        assert io.read(MiB, 2 * MiB) == data
    with session(backend, volume, vm) as s:
        assert s.size_bytes == 16 * MiB


# -- persistent reservations ----------------------------------------------------------------------
def test_pr_register_reserve_preempt(backend, volume):
    a, b = backend.initiator_for("pr-a"), backend.initiator_for("pr-b")
    backend.allow(volume, a)
    backend.allow(volume, b)
    with session(backend, volume, a) as sa, session(backend, volume, b) as sb:
        sa.pr_register(0xA)
        sb.pr_register(0xB)
        assert set(sa.pr_read_keys().keys) == {0xA, 0xB}
        sa.pr_reserve(0xA)
        with pytest.raises(ReservationConflict):
            sb.pr_reserve(0xB)
        with pytest.raises(ReservationConflict):
            sb.pr_reserve(0xB, PrType.EXCLUSIVE_ACCESS)
        held = sb.pr_read_reservation()
        assert (held.key, held.type) == (0xA, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
        sb.pr_preempt(0xB, 0xA)
        assert sa.pr_read_keys().keys == (0xB,)
        assert sa.pr_read_reservation().key == 0xB
        with pytest.raises(ReservationConflict):  # a's registration is gone
            sa.pr_reserve(0xA)
        sb.pr_clear(0xB)
        assert sa.pr_read_reservation().key is None


def preempt_race(barrier: threading.Barrier, racer: IscsiSession, key: int, victim: int,
                 outcomes: list[str]) -> None:
    barrier.wait()
    try:
        racer.pr_preempt(key, victim)
        outcomes.append("won")
    except ReservationConflict:
        outcomes.append("lost")


def test_pr_concurrent_preempt_has_one_winner(backend, volume):
    names = [backend.initiator_for(f"pr-{i}") for i in range(3)]
    for iqn in names:
        backend.allow(volume, iqn)
    holder, *racers = [session(backend, volume, iqn).login() for iqn in names]
    try:
        for round_no in range(20):
            victim = 0x100 + round_no
            holder.pr_register(victim, ignore_existing=True)
            holder.pr_reserve(victim)
            keys = [0x200 + 2 * round_no, 0x201 + 2 * round_no]
            for racer, key in zip(racers, keys, strict=True):
                racer.pr_register(key, ignore_existing=True)
            outcomes: list[str] = []
            barrier = threading.Barrier(len(racers))
            threads = [threading.Thread(target=preempt_race, args=(barrier, r, k, victim, outcomes))
                       for r, k in zip(racers, keys, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert sorted(outcomes) == ["lost", "won"]
            winner = holder.pr_read_reservation().key
            assert winner in keys
            racers[keys.index(winner)].pr_clear(winner)
    finally:
        for s in (holder, *racers):
            s.close()


# -- libvirt XML ----------------------------------------------------------------------------------
def test_libvirt_schema_accepts_disk_and_pool_xml(chap_backend):
    import libvirt  # python3-libvirt (Debian), seen through the venv's system site packages
    chap_backend.create("x1", MiB)
    conn = libvirt.open("test:///default")
    try:
        domain = (f"<domain type='kvm'><name>v-{uuid.uuid4().hex[:6]}</name><memory>65536</memory>"
                  "<os><type arch='x86_64'>hvm</type></os>"
                  f"<devices>{chap_backend.disk_xml('x1', host='vm1')}</devices></domain>")
        defined = conn.defineXMLFlags(domain, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).XMLDesc()
        assert "<iqn name='iqn.2026-11.org.hvstore:vm1'/>" in defined
        assert "usage='hvstore-chapstore'" in defined
        pool = conn.storagePoolDefineXML(chap_backend.volume_pool_xml("x1"),
                                         libvirt.VIR_STORAGE_POOL_DEFINE_VALIDATE).XMLDesc()
        assert "type='iscsi-direct'" in pool and "type='chap'" in pool
    finally:
        conn.close()
