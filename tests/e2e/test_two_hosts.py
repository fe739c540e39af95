"""Two hosts on one store: the lab's lockd (host A, serving libvirtd and its QEMU) and a second lockd (host B,
its own admin and virtlockd sockets, the same RADOS lockspace), standing in for another hypervisor.

Host B asks for the lease of the rbd volume host A's domain runs on, through its admin API with an owner pid
(what libvirt's plugin would do on B). It is refused while A lives; after A dies (kill -9) or freezes
(SIGSTOP) B takes it after the TTL, and for the frozen host B's data-path fencing (blocklisting the image's
watchers of client.hosta, i.e. A's QEMU) must keep A's QEMU from writing when it wakes. The write is driven
from inside A's QEMU without a guest OS: HMP ``qemu-io`` on the disk's block backend.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from hvstore.config import StoreEntry
from hvstore.lab.libvirt import LibvirtService
from hvstore.lab.lockd import LockdService
from lockd.errors import LeaseHeld
from tests.e2e.conftest import (
    admin,
    attach_volume,
    lease_pids,
    lockspace_of,
    qemu_pid,
    wait_for,
    watchdog_pids,
)
from tests.integration.lockd.test_daemons import Host

# The write HMP qemu-io makes from A's QEMU: the disk's virtio backend, a pattern no one else writes.
QEMU_IO_DEVICE = "/machine/peripheral/virtio-disk0/virtio-backend"
PATTERN = 0x55
pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture
def host_b(lockd_a: LockdService, lab: object) -> Iterator[Host]:
    """A second lockd, host id "hostb", with host A's timing and store and data-path fencing."""
    config = lockd_a.daemon_config()
    root = Path(f"/tmp/e2e-hostb-{uuid.uuid4().hex[:6]}")  # short: UNIX socket paths are limited
    root.mkdir()
    host = Host("hostb", root, config["store"], ttl_s=config["ttl_s"], renew_s=config["renew_interval_s"],
                margin_s=config["margin_s"], io_timeout_s=2.0,
                settings={"fencer": "hvstore", "hvstore_config": config["hvstore_config"]})
    host.start()
    yield host
    if host.process is not None and host.process.poll() is None:
        host.process.kill()
        host.process.wait()
    shutil.rmtree(root, ignore_errors=True)  # its watchdog exits when the directory goes


@pytest.fixture
def owner_b() -> Iterator[subprocess.Popen[bytes]]:
    """The process host B acquires for (its would-be QEMU)."""
    child = subprocess.Popen(["sleep", "600"])
    yield child
    child.kill()
    child.wait()


def try_acquire(host: Host, lockspace: str, key: str, pid: int) -> bool:
    try:
        host.call("acquire", lockspace=lockspace, key=key, pid=pid)
        return True
    except LeaseHeld:
        return False


def restart_lockd_a(lockd_a: LockdService) -> None:
    lockd_a.lab.stop("lockd")
    lockd_a.start()


@pytest.fixture(params=["domain-start", "hot-plug"])
def running_on_a(request: pytest.FixtureRequest, conn: libvirt.virConnect,
                 make_domain: Callable[[str], libvirt.virDomain],
                 make_volume: Callable[[str], tuple[StoreEntry, str]], libvirt_service: LibvirtService,
                 lockd_a: LockdService) -> tuple[libvirt.virDomain, StoreEntry, str, int]:
    """A domain on host A running on a fresh rbd volume (opened by QEMU as client.hosta), holding its lease.

    Two paths give QEMU the image: attached before the domain starts (QEMU opens it, then libvirt asks for the
    lease at CPU start) and hot-plugged into a running domain (lease first, then the disk)."""
    entry, volume = make_volume("ceph")
    domain = make_domain("hosta")
    if request.param == "domain-start":
        attach_volume(conn, domain, entry, volume, config=True)
        domain.create()
    else:
        domain.create()
        attach_volume(conn, domain, entry, volume, live=True)
    pid = qemu_pid(libvirt_service, domain)
    assert lease_pids(lockd_a, lockspace_of(entry), volume) == [pid]
    return domain, entry, volume, pid


def test_host_b_takes_the_lease_after_host_a_is_killed(
        running_on_a: tuple[libvirt.virDomain, StoreEntry, str, int], lockd_a: LockdService, host_b: Host,
        owner_b: subprocess.Popen[bytes]) -> None:
    domain, entry, volume, qemu = running_on_a
    lockspace = lockspace_of(entry)
    assert not try_acquire(host_b, lockspace, volume, owner_b.pid)  # A is alive: refused

    ttl_s = lockd_a.daemon_config()["ttl_s"]
    victims = [*watchdog_pids(lockd_a.dir / "state"), lockd_a.lab.daemon_pid("lockd"), qemu]
    try:
        for pid in victims:
            os.kill(pid, signal.SIGKILL)  # host A dies: its lockd, lockd's watchdog and the QEMU
        killed_at = time.monotonic()
        wait_for(lambda: try_acquire(host_b, lockspace, volume, owner_b.pid), what="host B to take the lease",
                 timeout_s=ttl_s + 20, interval_s=0.2)
        took_s = time.monotonic() - killed_at
        print(f"host B took the lease {took_s:.2f} s after kill -9 of host A (TTL {ttl_s:g} s)")
        # Safety, not speed: never before A's last renewal (at most one interval before the kill) + TTL.
        assert took_s >= ttl_s - lockd_a.daemon_config()["renew_interval_s"]
        assert lease_pids(host_b.socket, lockspace, volume) == [owner_b.pid]
        assert not domain.isActive()
    finally:
        restart_lockd_a(lockd_a)
    # Host A, back, finds the lease gone to B and holds nothing.
    wait_for(lambda: lease_pids(lockd_a, lockspace, volume) == [], what="host A to drop the lease",
             timeout_s=ttl_s)


def test_frozen_host_a_is_fenced_and_its_qemu_cannot_write_after_waking(
        running_on_a: tuple[libvirt.virDomain, StoreEntry, str, int], lockd_a: LockdService, host_b: Host,
        owner_b: subprocess.Popen[bytes], libvirt_service: LibvirtService) -> None:
    domain, entry, volume, qemu = running_on_a
    lockspace = lockspace_of(entry)
    assert not try_acquire(host_b, lockspace, volume, owner_b.pid)

    ttl_s = lockd_a.daemon_config()["ttl_s"]
    lockd_pid = lockd_a.lab.daemon_pid("lockd")
    assert lockd_pid is not None
    frozen = [*watchdog_pids(lockd_a.dir / "state"), lockd_pid, qemu]
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)  # host A freezes: lockd, its watchdog and the QEMU
        frozen_at = time.monotonic()
        wait_for(lambda: try_acquire(host_b, lockspace, volume, owner_b.pid), what="host B to take the lease",
                 timeout_s=ttl_s + 20, interval_s=0.2)
        took_s = time.monotonic() - frozen_at
        print(f"host B took the lease {took_s:.2f} s after host A froze (TTL {ttl_s:g} s), fencing A's QEMU")
        assert lease_pids(host_b.socket, lockspace, volume) == [owner_b.pid]

        # Only A's QEMU wakes (its lockd and watchdog stay frozen): only the storage can stop its write.
        os.kill(qemu, signal.SIGCONT)
        frozen.remove(qemu)
        command = f'qemu-io -d {QEMU_IO_DEVICE} "write -P {PATTERN:#x} 0 4096"'
        answer = subprocess.run(["virsh", "-c", libvirt_service.uri, "qemu-monitor-command", "--hmp",
                                 domain.name(), command], capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        with entry.backend() as backend, backend.open(volume) as blockio:
            assert blockio.read(0, 4096) == bytes(4096)  # nothing of it landed
        # qemu-io reports on QEMU's stdout, which libvirt (virtlogd) keeps in the domain's log.
        qemu_log = libvirt_service.dir / "log" / "qemu" / f"{domain.name()}.log"
        failure = [line for line in qemu_log.read_text().splitlines() if line.startswith("write failed")]
        print(f"qemu-io in A's QEMU: {failure}")
        assert failure == ["write failed: Cannot send after transport endpoint shutdown"]  # -108: blocklisted
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    # A's lockd wakes, finds its lease taken over and kills its owner: the domain stops.
    wait_for(lambda: not domain.isActive(), what="host A to stop its fenced domain", timeout_s=ttl_s + 10)
    restart_lockd_a(lockd_a)  # its RADOS client may have been blocklisted with it
    assert lease_pids(lockd_a, lockspace, volume) == []
    assert lease_pids(host_b.socket, lockspace, volume) == [owner_b.pid]
    admin(host_b.socket, "release", lockspace=lockspace, key=volume, pid=owner_b.pid)
