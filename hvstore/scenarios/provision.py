"""The ``provision`` step: the commands a host runs to get from nothing to a started domain using a new
volume, each timed as the user would type it.

1. ``hvstore volume create``, ``hvstore volume uri``, ``hvstore volume disk-xml`` (the CLI, subprocesses);
2. ``qemu-io`` on the URI (QEMU's block layer opens the volume, writes and reads 64 KiB);
3. when the lab's libvirtd runs (``hvstore lab up libvirt``): ``virsh define`` of a firmware-only domain
   (KVM, 64 MiB, as ``hvstore bench domain-start`` and tests/e2e use), ``hvstore attach DOMAIN VOL
   --config --host hosta`` (the disk and, for network disks, its ``<lease>``), ``virsh start``; then the
   lab's lockd is asked which lease the domain's QEMU holds. The domain is destroyed and undefined
   afterwards, untimed.

Steps that cannot run say why in ``skipped`` (libvirt not running; a volume QEMU on this host cannot
open, e.g. DRBD's device inside its nodes); a libvirt command that fails is reported in ``failed`` with
its error, the figures before it kept. The scratch volume is always deleted.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvstore.errors import Busy, HvstoreError, ToolFailed
from hvstore.run import run
from hvstore.scenarios.writers import QemuIoWriters

LAB_HOST = "hosta"  # the lab's lockd host: its cephx user / initiator name is what QEMU opens the volume as
DELETE_RETRY_S = 15.0  # a destroyed QEMU's iSCSI session or gluster client lingers a moment


@dataclass
class Provisioning:
    commands: list[dict[str, Any]] = field(default_factory=list)  # {step, command, seconds}
    skipped: list[dict[str, str]] = field(default_factory=list)  # {step, reason}
    lease: str = ""  # what the started domain's QEMU holds, as lockd reports it
    failed: dict[str, str] = field(default_factory=dict)  # {step, error}: the command that failed, if one did

    @property
    def seconds(self) -> float:
        return round(sum(c["seconds"] for c in self.commands), 3)


class _Timer:
    def __init__(self, result: Provisioning, hvstore_argv: list[str]) -> None:
        self.result = result
        self.hvstore_argv = hvstore_argv  # the installed script + --config: shown as plain "hvstore"

    def __call__(self, label: str, argv: list[str], *, timeout_s: float = 300) -> str:
        started = time.monotonic()
        try:
            done = run(argv, timeout_s=timeout_s)
        except ToolFailed as exc:
            self.result.failed = {"step": label, "error": " ".join(str(exc).split())[-400:]}
            raise
        shown = argv
        if argv[:len(self.hvstore_argv)] == self.hvstore_argv:
            shown = ["hvstore", *argv[len(self.hvstore_argv):]]
        self.result.commands.append({"step": label, "command": " ".join(shown),
                                     "seconds": round(time.monotonic() - started, 3)})
        return done.stdout.strip()


def provision(backend: Any, store: str, size_bytes: int, *, config_path: Path, lab_root: Path,
              event: Callable[[str], None]) -> Provisioning:
    from hvstore.bench.import_export import hvstore_command

    result = Provisioning()
    hvstore = [*hvstore_command(), "--config", str(config_path)]
    timed = _Timer(result, hvstore)
    name = f"prov-{uuid.uuid4().hex[:6]}"
    ref = f"{store}/{name}"
    try:
        timed("create", [*hvstore, "volume", "create", ref, str(size_bytes)])
        uri = timed("uri", [*hvstore, "volume", "uri", ref])
        timed("disk-xml", [*hvstore, "volume", "disk-xml", ref])
        not_here = QemuIoWriters(backend, name, (LAB_HOST,)).reason()
        if not_here:
            result.skipped.append({"step": "QEMU opens the volume", "reason": not_here})
        else:
            timed("QEMU opens, writes and reads (qemu-io)",
                  ["qemu-io", "-f", backend.qemu_format(name), "-t", "none", "-c", "write -P 90 0 64k",
                   "-c", "read -P 90 0 64k", uri])
        reason = not_here or _libvirt_missing(lab_root)
        if reason:
            result.skipped.append({"step": "libvirt domain start", "reason": reason})
        else:
            try:
                _start_domain(timed, hvstore, ref, lab_root, result, event)
            except ToolFailed:
                pass  # result.failed says which command and why; what came before stays measured
    finally:
        _delete(backend, name)
    return result


def _libvirt_missing(lab_root: Path) -> str | None:
    from hvstore.lab.libvirt import LibvirtService
    from hvstore.lab.service import Lab

    service = LibvirtService(Lab(lab_root))
    if not service.lab.running("libvirtd"):
        return "libvirt not running (hvstore lab up libvirt)"
    return None


def _start_domain(timed: _Timer, hvstore: list[str], ref: str, lab_root: Path, result: Provisioning,
                  event: Callable[[str], None]) -> None:
    from hvstore.bench.domain_start import DOMAIN_XML
    from hvstore.lab.libvirt import LibvirtService
    from hvstore.lab.lockd import LEASE_ROOT  # the lease root of the lockd that serves the lab's libvirtd
    from hvstore.lab.service import Lab

    service = LibvirtService(Lab(lab_root))
    virsh = ["virsh", "-c", service.uri]
    domain = f"prov-{uuid.uuid4().hex[:6]}"
    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix=f"{domain}-") as xml:
        xml.write(DOMAIN_XML.format(name=domain))
        xml.flush()
        timed("define a domain (firmware only)", [*virsh, "define", xml.name])
    try:
        timed("attach the volume and its lease", [*hvstore, "attach", domain, ref, "--config", "--host", LAB_HOST,
                                                  "--connect", service.uri, "--lease-root", LEASE_ROOT])
        timed("start the domain (QEMU opens the volume, the lock manager acquires)", [*virsh, "start", domain],
              timeout_s=120)
        result.lease = _lease_of(service, domain)
        event(f"domain {domain} running with {ref}: {result.lease}")
    finally:
        for argv in ([*virsh, "destroy", domain], [*virsh, "undefine", domain]):
            with suppress(ToolFailed):
                run(argv, timeout_s=60)


def _lease_of(service: Any, domain: str) -> str:
    """The lease(s) the domain's QEMU owns, as the lab's lockd reports them."""
    from hvstore.lab.lockd import LockdService
    from lockd.cli import request
    from lockd.errors import LockdError

    manager = service.settings().get("lock_manager")
    if manager != "lockd":
        return f"not checked: libvirt's lock manager is {manager}, not lockd"
    try:
        pid = int((service.dir / "run" / "qemu" / f"{domain}.pid").read_text().strip())
        leases = request(str(LockdService(service.lab).admin_socket), {"op": "leases"}, timeout_s=30)
    except (OSError, ValueError, LockdError) as exc:
        return f"not checked: {exc}"
    held = [f"{lease['lockspace']}/{lease['key']}" for lease in leases
            if any(owner == pid for owner, _start in lease["owners"])]
    return f"QEMU (pid {pid}) holds {', '.join(held)}" if held else f"QEMU (pid {pid}) holds no lease"


def _delete(backend: Any, name: str) -> None:
    deadline = time.monotonic() + DELETE_RETRY_S
    while True:
        try:
            if backend.exists(name):
                backend.delete(name, force=True)
            return
        except Busy:
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        except HvstoreError:
            return
