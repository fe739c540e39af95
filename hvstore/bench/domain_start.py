"""Benchmark: how long ``virsh start`` of a small domain takes with lockd as libvirt's lock daemon, against no
lock manager and against libvirt's own virtlockd, in one session on the lab's libvirtd (figures, never
pass/fail).

The domain is firmware-only (64 MiB, KVM) with one disk, so the figure is libvirt + QEMU start-up plus
what the lock manager adds at CPU start (REGISTER + RESTRICT from the forked child, REGISTER + ACQUIRE per
resource). Disks measured:

- ``file``: a raw file on the lab's local store. Every lock manager locks it (``auto_disk_leases``):
  virtlockd with an fcntl lock on the image, lockd with a lease ``direct/<path>`` in its store (the lab's
  RADOS), so the comparison is like for like.
- ``rbd+lease``: an rbd volume with the ``<lease>`` ``hvstore attach`` adds (lockd and none only: virtlockd
  refuses a lease in a lockspace nobody created, see ../shared/docs/virtlockd-protocol.md §5.3).

Switching the lock manager restarts the lab's libvirtd (which stops its domains) and, for virtlockd, stops
the lab's lockd, whose socket virtlockd takes; the lab is put back to its previous lock manager at the end.
Each configuration gets one unmeasured warm-up start, then ``runs`` measured start/destroy cycles; the figure
is the median. What it cannot tell: the machine is shared and small, compare within one run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hvstore.config import StoreEntry, load_config
from hvstore.errors import InvalidArgument
from hvstore.lab import LabController
from hvstore.lab.libvirt import LOCK_MANAGERS, LibvirtService

DOMAIN_XML = """<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""
VOLUME_BYTES = 16 << 20
HOST_ID = "hosta"  # the lab's lockd host; QEMU opens rbd images as client.hosta
DISKS = {"file": "local", "rbd+lease": "ceph"}  # disk kind -> lab store
UNSUPPORTED = {("virtlockd", "rbd+lease")}


@dataclass(frozen=True)
class StartTimes:
    lock_manager: str
    disk: str
    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    def to_json(self) -> dict[str, Any]:
        return {"lock_manager": self.lock_manager, "disk": self.disk, "median_s": self.median_s,
                "min_s": min(self.samples_s), "max_s": max(self.samples_s), "samples_s": list(self.samples_s)}


@dataclass(frozen=True)
class DomainStartResult:
    runs: int
    times: tuple[StartTimes, ...]

    def median(self, lock_manager: str, disk: str) -> float | None:
        for entry in self.times:
            if (entry.lock_manager, entry.disk) == (lock_manager, disk):
                return entry.median_s
        return None

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "times": [t.to_json() for t in self.times]}


def run_domain_start(controller: LabController, *, runs: int = 9, lock_managers: Sequence[str] = LOCK_MANAGERS,
                     disks: Sequence[str] = tuple(DISKS), log: Callable[[str], None] = lambda _line: None
                     ) -> DomainStartResult:
    """Measure every (lock manager, disk) pair; the lab's libvirtd ends with its previous lock manager."""
    import libvirt

    from hvstore.libvirt import attach, connection

    unknown = [m for m in lock_managers if m not in LOCK_MANAGERS] + [d for d in disks if d not in DISKS]
    if unknown or runs < 1:
        raise InvalidArgument(f"unknown lock manager or disk {unknown} (lock managers: {', '.join(LOCK_MANAGERS)};"
                              f" disks: {', '.join(DISKS)}), or runs < 1")
    controller.up(["ceph", "local"] if "rbd+lease" in disks else ["local"])
    service = LibvirtService(controller.lab)
    previous = service.settings()["lock_manager"]
    config = load_config(controller.config_path)
    times: list[StartTimes] = []
    with _volumes(config.store(DISKS[d]) for d in disks) as volumes:
        try:
            for manager in lock_managers:
                _switch(controller, service, manager)
                log(f"libvirtd restarted with lock manager {manager}")
                with connection(service.uri) as conn:
                    for disk in disks:
                        if (manager, disk) in UNSUPPORTED:
                            continue
                        entry, volume = volumes[DISKS[disk]]
                        domain = conn.defineXML(DOMAIN_XML.format(name=f"bench-start-{uuid.uuid4().hex[:6]}"))
                        try:
                            with entry.backend() as backend:
                                attach(conn, domain.name(), backend, volume, config=True,
                                       host=HOST_ID if entry.kind == "rbd" else None)
                            samples = _measure(domain, runs)
                        finally:
                            with contextlib.suppress(libvirt.libvirtError):
                                if domain.isActive():
                                    domain.destroy()
                            domain.undefine()
                        times.append(StartTimes(manager, disk, tuple(samples)))
                        log(f"{manager:9} {disk:9} median {statistics.median(samples) * 1000:.0f} ms")
        finally:
            _switch(controller, service, previous)
    return DomainStartResult(runs, tuple(times))


def _measure(domain: Any, runs: int) -> list[float]:
    domain.create()  # warm-up: first start after a libvirtd restart pays for caches
    domain.destroy()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        domain.create()
        samples.append(time.perf_counter() - started)
        domain.destroy()
    return samples


def _switch(controller: LabController, service: LibvirtService, manager: str) -> None:
    if service.settings()["lock_manager"] == manager and controller.lab.running("libvirtd"):
        return
    service.configure(lock_manager=manager)
    controller.lab.stop("libvirtd")
    if manager == "virtlockd":
        controller.lab.stop("lockd")  # virtlockd binds the socket lockd serves
    service.start()


@contextlib.contextmanager
def _volumes(entries: Iterator[StoreEntry]) -> Iterator[dict[str, tuple[StoreEntry, str]]]:
    """One scratch volume per store (by store name); deleted afterwards."""
    made: dict[str, tuple[StoreEntry, str]] = {}
    try:
        for entry in entries:
            if entry.name in made:
                continue
            name = f"bench-start-{uuid.uuid4().hex[:8]}"
            with entry.backend() as backend:
                backend.create(name, VOLUME_BYTES)
            made[entry.name] = (entry, name)
        yield made
    finally:
        for entry, name in made.values():
            with entry.backend() as backend, contextlib.suppress(Exception):
                backend.delete(name, **({"force": True} if entry.kind == "rbd" else {}))
