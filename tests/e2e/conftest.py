"""End-to-end tests: the lab's real libvirtd + QEMU (KVM, firmware-only domains) with lockd as its lock daemon.

The session brings up the lab's ceph and libvirt services (libvirt starts the lab's lockd, host "hosta",
on libvirtd's virtlockd socket, leases in the lab's RADOS). Every test gets fresh volumes and domains and
removes them again; a test that kills or freezes the lab's lockd restarts it before the next test.
Everything here is real: libvirt's stock ``lockd`` plugin, QEMU opening rbd/iscsi/gluster disks itself.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from hvstore.config import StoreEntry, load_config
from hvstore.errors import Busy
from hvstore.lab import LabController
from hvstore.lab.libvirt import LibvirtService
from hvstore.lab.lockd import LockdService
from hvstore.libvirt import attach, connection
from lockd.cli import request

HOST_A = "hosta"  # the lab's lockd; QEMU opens rbd images as client.hosta so fencing can find them
LEASE_LOCKSPACE = "hvstore-{store}"
# Firmware only (no OS): KVM runs it here; ACPI makes the PCI bus accept hot-plugged disks.
DOMAIN_XML = """<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""
STORE_SERVICES = {"ceph": "ceph", "iscsi": "tgt", "gluster": "gluster"}


@pytest.fixture(scope="session")
def lab() -> LabController:
    controller = LabController()
    controller.up(["ceph", "libvirt"])
    return controller


@pytest.fixture(scope="session")
def libvirt_service(lab: LabController) -> LibvirtService:
    return LibvirtService(lab.lab)


@pytest.fixture
def lockd_a(lab: LabController) -> Iterator[LockdService]:
    """The lab's lockd (host A), healthy at the start of the test and again after it."""
    service = LockdService(lab.lab)
    service.start()
    yield service
    ok, _detail = service.health() if service.lab.running("lockd") else (False, "")
    if not ok:
        service.lab.stop("lockd")
        service.start()


def admin(service_or_socket: LockdService | str, op: str, **args: Any) -> Any:
    path = service_or_socket if isinstance(service_or_socket, str) else str(service_or_socket.admin_socket)
    return request(path, {"op": op, **args}, timeout_s=30)


@pytest.fixture
def conn(libvirt_service: LibvirtService, lockd_a: LockdService) -> Iterator[libvirt.virConnect]:
    with connection(libvirt_service.uri) as handle:
        yield handle


@pytest.fixture
def make_domain(conn: libvirt.virConnect, make_volume: Callable[[str], tuple[StoreEntry, str]]
                ) -> Iterator[Callable[[str], libvirt.virDomain]]:
    """Defines firmware-only domains (``e2e-<role>-<random>``); destroys and undefines them afterwards,
    before the test's volumes are deleted (hence the dependency on ``make_volume``)."""
    made: list[libvirt.virDomain] = []

    def define(role: str) -> libvirt.virDomain:
        domain = conn.defineXML(DOMAIN_XML.format(name=f"e2e-{role}-{uuid.uuid4().hex[:6]}"))
        made.append(domain)
        return domain

    yield define
    for domain in made:
        with contextlib.suppress(libvirt.libvirtError):
            if domain.isActive():
                domain.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            domain.undefine()


def store_entry(lab: LabController, store: str) -> StoreEntry:
    lab.up([STORE_SERVICES[store]])
    return load_config(lab.config_path).store(store)


@pytest.fixture
def make_volume(lab: LabController) -> Iterator[Callable[[str], tuple[StoreEntry, str]]]:
    """Creates a 16 MiB volume on a lab store; deletes it (forcing off any client) afterwards."""
    made: list[tuple[StoreEntry, str]] = []

    def create(store: str) -> tuple[StoreEntry, str]:
        entry = store_entry(lab, store)
        name = f"e2e-{uuid.uuid4().hex[:8]}"
        with entry.backend() as backend:
            backend.create(name, 16 * 2**20)  # hvstore.libvirt.attach(host=...) grants host A access itself
        made.append((entry, name))
        return entry, name

    yield create
    for entry, name in made:
        with entry.backend() as backend:
            if entry.kind == "rbd":
                backend.delete(name, force=True)
                continue
            # A destroyed QEMU's iSCSI session or gluster client may linger a moment after the domain stops.
            deadline = time.monotonic() + 15
            while True:
                try:
                    backend.delete(name)
                    break
                except Busy:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


def attach_volume(conn: libvirt.virConnect, domain: libvirt.virDomain, entry: StoreEntry, volume: str, *,
                  live: bool = False, config: bool = False) -> None:
    """``hvstore attach`` (the library call behind it), as host A's identity."""
    with entry.backend() as backend:
        attach(conn, domain.name(), backend, volume, live=live, config=config, host=_host_for(entry))


def _host_for(entry: StoreEntry) -> str | None:
    # rbd: QEMU opens the image as client.hosta, iscsi: logs in as <prefix>:hosta (per-host identities,
    # which fencing maps back to the host); gluster has no client identity.
    return HOST_A if entry.kind in ("rbd", "iscsi") else None


def qemu_pid(libvirt_service: LibvirtService, domain: libvirt.virDomain) -> int:
    """QEMU's pid, from the pid file libvirt keeps in its (the lab's) /run/libvirt/qemu."""
    return int((libvirt_service.dir / "run" / "qemu" / f"{domain.name()}.pid").read_text().strip())


def lease_pids(lockd: LockdService | str, lockspace: str, key: str) -> list[int]:
    """Owner pids of this host's lease ``lockspace/key`` ([] when not held here)."""
    for lease in admin(lockd, "leases"):
        if (lease["lockspace"], lease["key"]) == (lockspace, key):
            return [pid for pid, _start in lease["owners"]]
    return []


def watchdog_pids(state_dir: Path) -> list[int]:
    done = subprocess.run(["pgrep", "-f", f"lockd.watchdog {state_dir}"], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


def wait_for(check: Callable[[], bool], *, what: str, timeout_s: float, interval_s: float = 0.05) -> float:
    """Poll ``check``; return the seconds it took, or fail naming ``what``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


def lockspace_of(entry: StoreEntry) -> str:
    return LEASE_LOCKSPACE.format(store=entry.name)
