"""One host: libvirt's stock lockd plugin + lockd keep a network volume single-writer across domains.

Volumes are attached with ``hvstore.libvirt.attach`` (what ``hvstore attach`` runs): the backend's
``<disk>`` plus a ``<lease>``, which libvirt sends to lockd as ACQUIRE at CPU start, RELEASE at pause,
and which lockd drops when QEMU's own connection closes (destroy). Expected behaviour is libvirt 9.0's
(../shared/docs/virtlockd-protocol.md §4).
"""

from __future__ import annotations

import signal
import xml.etree.ElementTree as ET
from collections.abc import Callable

import libvirt
import pytest

from hvstore.config import StoreEntry
from hvstore.errors import Busy
from hvstore.lab.libvirt import LibvirtService
from hvstore.lab.lockd import LockdService
from tests.e2e.conftest import (
    attach_volume,
    lease_pids,
    lockspace_of,
    qemu_pid,
    wait_for,
    watchdog_pids,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]
STORES = ["ceph", "iscsi", "gluster"]


def assert_busy(error: libvirt.libvirtError) -> None:
    assert error.get_error_code() == libvirt.VIR_ERR_RESOURCE_BUSY  # 87
    assert "resource busy" in error.get_error_message()


def disks_and_leases(domain: libvirt.virDomain, flags: int = 0) -> tuple[int, int]:
    xml = ET.fromstring(domain.XMLDesc(flags))
    return len(xml.findall("devices/disk")), len(xml.findall("devices/lease"))


@pytest.mark.parametrize("store", STORES)
def test_second_domain_on_a_held_volume_cannot_start_until_the_first_is_destroyed(
        store: str, conn: libvirt.virConnect, make_domain: Callable[[str], libvirt.virDomain],
        make_volume: Callable[[str], tuple[StoreEntry, str]], libvirt_service: LibvirtService,
        lockd_a: LockdService) -> None:
    entry, volume = make_volume(store)
    first, second = make_domain("first"), make_domain("second")
    for domain in (first, second):
        attach_volume(conn, domain, entry, volume, config=True)
        assert disks_and_leases(domain) == (1, 1)  # network disk + its <lease>
    first.create()
    assert lease_pids(lockd_a, lockspace_of(entry), volume) == [qemu_pid(libvirt_service, first)]

    with pytest.raises(libvirt.libvirtError) as refused:
        second.create()
    assert_busy(refused.value)
    assert not second.isActive()
    assert first.isActive()

    first.destroy()  # QEMU exits, its connection to lockd closes: lockd drops the lease
    second.create()
    assert lease_pids(lockd_a, lockspace_of(entry), volume) == [qemu_pid(libvirt_service, second)]


@pytest.mark.parametrize("store", STORES)
def test_hot_plug_of_a_held_volume_is_refused_and_leaves_nothing_attached(
        store: str, conn: libvirt.virConnect, make_domain: Callable[[str], libvirt.virDomain],
        make_volume: Callable[[str], tuple[StoreEntry, str]], libvirt_service: LibvirtService,
        lockd_a: LockdService) -> None:
    entry, volume = make_volume(store)
    holder, other = make_domain("holder"), make_domain("hotplug")
    attach_volume(conn, holder, entry, volume, config=True)
    holder.create()
    other.create()

    with pytest.raises(Busy, match="resource busy"):
        attach_volume(conn, other, entry, volume, live=True)
    assert disks_and_leases(other) == (0, 0)
    assert disks_and_leases(other, libvirt.VIR_DOMAIN_XML_INACTIVE) == (0, 0)
    assert lease_pids(lockd_a, lockspace_of(entry), volume) == [qemu_pid(libvirt_service, holder)]

    holder.destroy()
    attach_volume(conn, other, entry, volume, live=True)  # free now: the same hot-plug succeeds
    assert disks_and_leases(other) == (1, 1)
    assert lease_pids(lockd_a, lockspace_of(entry), volume) == [qemu_pid(libvirt_service, other)]


def test_pause_releases_the_lease_and_resume_acquires_it_again(
        conn: libvirt.virConnect, make_domain: Callable[[str], libvirt.virDomain],
        make_volume: Callable[[str], tuple[StoreEntry, str]], libvirt_service: LibvirtService,
        lockd_a: LockdService) -> None:
    entry, volume = make_volume("ceph")
    lockspace = lockspace_of(entry)
    first, second = make_domain("paused"), make_domain("taker")
    for domain in (first, second):
        attach_volume(conn, domain, entry, volume, config=True)
    first.create()
    first_pid = qemu_pid(libvirt_service, first)

    first.suspend()  # libvirt: REGISTER + RELEASE of every resource
    assert lease_pids(lockd_a, lockspace, volume) == []
    second.create()  # the volume is free while the first is paused
    assert lease_pids(lockd_a, lockspace, volume) == [qemu_pid(libvirt_service, second)]

    with pytest.raises(libvirt.libvirtError) as refused:
        first.resume()  # REGISTER + ACQUIRE: busy, so its CPUs stay stopped
    assert_busy(refused.value)
    assert first.state()[0] == libvirt.VIR_DOMAIN_PAUSED

    second.destroy()
    assert lease_pids(lockd_a, lockspace, volume) == []
    first.resume()
    assert first.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert lease_pids(lockd_a, lockspace, volume) == [first_pid]
    first.destroy()
    assert lease_pids(lockd_a, lockspace, volume) == []


def test_lockd_restart_keeps_the_running_domain_and_its_lease(
        conn: libvirt.virConnect, make_domain: Callable[[str], libvirt.virDomain],
        make_volume: Callable[[str], tuple[StoreEntry, str]], libvirt_service: LibvirtService,
        lockd_a: LockdService) -> None:
    entry, volume = make_volume("ceph")
    lockspace = lockspace_of(entry)
    domain, other = make_domain("survivor"), make_domain("contender")
    for each in (domain, other):
        attach_volume(conn, each, entry, volume, config=True)
    domain.create()
    pid = qemu_pid(libvirt_service, domain)
    lockd_pid = lockd_a.lab.daemon_pid("lockd")
    assert lockd_pid is not None

    # Stop lockd (SIGTERM, what systemctl stop/restart sends) and start it again.
    import os

    os.kill(lockd_pid, signal.SIGTERM)
    wait_for(lambda: not lockd_a.lab.running("lockd"), what="lockd to stop", timeout_s=30)
    lockd_a.start()

    assert domain.isActive() and domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert qemu_pid(libvirt_service, domain) == pid
    assert lease_pids(lockd_a, lockspace, volume) == [pid]
    assert watchdog_pids(lockd_a.dir / "state")  # the new lockd has its watchdog again
    with pytest.raises(libvirt.libvirtError) as refused:
        other.create()
    assert_busy(refused.value)

    # The restarted lockd no longer has QEMU's connection; it notices QEMU's exit through a pidfd.
    domain.destroy()
    wait_for(lambda: lease_pids(lockd_a, lockspace, volume) == [], what="the lease to be dropped", timeout_s=10)
    other.create()
