"""libvirt integration: ``<disk>`` + ``<lease>`` XML, secrets, and live attach/detach (libvirt-python).

libvirt's lock managers never see network disks (rbd, gluster, iscsi), so ``attach`` puts a
``<lease><lockspace>LS</lockspace><key>K</key><target path='LEASE_ROOT'/></lease>`` next to every network
disk; libvirt's lockd plugin sends it to lockd as ACQUIRE(path "LEASE_ROOT/LS", name K). The lease is
attached *before* the disk, so a volume held elsewhere is refused before the domain can write to it, and
detached after it. Secrets (cephx keys, CHAP passwords) go into libvirt's secret store, never into XML.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

import libvirt

from hvstore.backends.base import Backend
from hvstore.errors import AlreadyExists, BackendUnavailable, Busy, HvstoreError, InvalidArgument, NotFound
from hvstore.model import LeaseSpec, LibvirtSecret

DEFAULT_LEASE_ROOT = "/var/lib/libvirt/lockd"  # lockd's default lease_root


def default_uri() -> str:
    """``$LIBVIRT_DEFAULT_URI``, else the lab's libvirtd if it runs, else ``qemu:///system``."""
    if env := os.environ.get("LIBVIRT_DEFAULT_URI"):
        return env
    from hvstore.config import lab_dir

    lab_socket = lab_dir() / "libvirt" / "run" / "libvirt-sock"
    return f"qemu:///system?socket={lab_socket}" if lab_socket.exists() else "qemu:///system"


def lease_xml(lease: LeaseSpec, lease_root: str = DEFAULT_LEASE_ROOT) -> str:
    element = ET.Element("lease")
    ET.SubElement(element, "lockspace").text = lease.lockspace
    ET.SubElement(element, "key").text = lease.key
    ET.SubElement(element, "target", path=lease_root)
    return ET.tostring(element, encoding="unicode")


def is_network_disk(disk_xml: str) -> bool:
    return ET.fromstring(disk_xml).get("type") == "network"


def disk_with_lease_xml(backend: Backend[Any], name: str, *, target: str = "vda", host: str | None = None,
                        lease_root: str = DEFAULT_LEASE_ROOT) -> list[str]:
    """The device elements a domain needs for this volume: its ``<disk>`` and, for a network disk, the
    ``<lease>`` lockd locks for it (lease first: that is the order attach uses)."""
    disk = backend.disk_xml(name, target=target, host=host)
    if not is_network_disk(disk):
        return [disk]  # file/block disks are locked by their path (auto_disk_leases)
    return [lease_xml(backend.lease(name), lease_root), disk]


@dataclass(frozen=True)
class AttachResult:
    domain: str
    target: str
    lease: LeaseSpec | None
    live: bool
    config: bool
    pending: bool = False  # live detach requested, but the guest has not released the device yet


def _quiet(_ctx: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; hvstore reports them once, itself."""


libvirt.registerErrorHandler(_quiet, None)


@contextmanager
def connection(uri: str | None = None) -> Iterator[libvirt.virConnect]:
    uri = uri or default_uri()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise BackendUnavailable(f"cannot connect to libvirt at {uri}: {exc.get_error_message()}") from None
    try:
        yield conn
    finally:
        conn.close()


def _domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        raise NotFound(f"domain {name!r} does not exist") from None


def _flags(domain: libvirt.virDomain, live: bool, config: bool) -> tuple[int, bool, bool]:
    """libvirt's AFFECT flags; with neither given, like virsh: the live domain if running, else its config."""
    if not live and not config:
        running = bool(domain.isActive())
        return libvirt.VIR_DOMAIN_AFFECT_CURRENT, running, not running
    flags = (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0) | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0)
    return flags, live, config


def _next_target(domain_xml: ET.Element) -> str:
    used = {t.get("dev") for t in domain_xml.iter("target") if t.get("dev")}
    for letter in string.ascii_lowercase:
        if f"vd{letter}" not in used:
            return f"vd{letter}"
    raise InvalidArgument("no free virtio disk target (vda..vdz all used)")


def define_secrets(conn: libvirt.virConnect, secrets: list[LibvirtSecret]) -> None:
    """Create or update libvirt secrets (private, not ephemeral) holding these values."""
    usage_types = {"ceph": libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "iscsi": libvirt.VIR_SECRET_USAGE_TYPE_ISCSI}
    for secret in secrets:
        # libvirt refuses a second secret for the same usage: an existing one is updated (same UUID).
        try:
            existing = conn.secretLookupByUsage(usage_types[secret.usage_type], secret.usage_id)
            uuid_xml = f"<uuid>{existing.UUIDString()}</uuid>"
        except libvirt.libvirtError:
            uuid_xml = ""
        xml = (f"<secret ephemeral='no' private='yes'>{uuid_xml}<usage type='{secret.usage_type}'>"
               f"{'<name>' if secret.usage_type == 'ceph' else '<target>'}{secret.usage_id}"
               f"{'</name>' if secret.usage_type == 'ceph' else '</target>'}</usage></secret>")
        try:
            handle = conn.secretDefineXML(xml)
            handle.setValue(secret.value)
        except libvirt.libvirtError as exc:
            raise HvstoreError(f"cannot store the {secret.usage_type} secret {secret.usage_id!r} in libvirt: "
                               f"{exc.get_error_message()}") from None


def attach(conn: libvirt.virConnect, domain_name: str, backend: Backend[Any], name: str, *,
           target: str | None = None, live: bool = False, config: bool = False, host: str | None = None,
           lease_root: str = DEFAULT_LEASE_ROOT) -> AttachResult:
    """Attach the volume (and its lease) to a domain. Busy if the lease is held elsewhere; nothing is left
    attached on failure."""
    domain = _domain(conn, domain_name)
    current = ET.fromstring(domain.XMLDesc(0))
    disk_xml = backend.disk_xml(name, target=target or "vda", host=host)
    if _find_disk(current, ET.fromstring(disk_xml)) is not None:
        raise AlreadyExists(f"{backend.store}/{name} is attached to {domain_name} already")
    target = target or _next_target(current)
    devices = disk_with_lease_xml(backend, name, target=target, host=host, lease_root=lease_root)
    flags, is_live, is_config = _flags(domain, live, config)
    define_secrets(conn, backend.libvirt_secrets(host=host))
    if host:
        backend.grant(name, host=host)
    attached: list[str] = []
    try:
        for device in devices:
            domain.attachDeviceFlags(device, flags)
            attached.append(device)
    except libvirt.libvirtError as exc:
        for device in reversed(attached):
            try:
                domain.detachDeviceFlags(device, flags)
            except libvirt.libvirtError:
                pass
        message = exc.get_error_message()
        if exc.get_error_code() == libvirt.VIR_ERR_RESOURCE_BUSY:
            raise Busy(f"{backend.store}/{name} is in use elsewhere: {message}") from None
        raise HvstoreError(f"attaching {backend.store}/{name} to {domain_name} failed: {message}") from None
    lease = backend.lease(name) if len(devices) == 2 else None
    return AttachResult(domain_name, target, lease, is_live, is_config)


def detach(conn: libvirt.virConnect, domain_name: str, backend: Backend[Any], name: str, *,
           live: bool = False, config: bool = False, lease_root: str = DEFAULT_LEASE_ROOT) -> AttachResult:
    """Detach the volume's disk, then its lease. NotFound if the volume is not attached."""
    domain = _domain(conn, domain_name)
    current = ET.fromstring(domain.XMLDesc(0))
    disk = _find_disk(current, ET.fromstring(backend.disk_xml(name)))
    if disk is None:
        raise NotFound(f"{backend.store}/{name} is not attached to {domain_name}")
    target = disk.find("target").get("dev")  # type: ignore[union-attr]
    flags, is_live, is_config = _flags(domain, live, config)
    lease = backend.lease(name)
    try:
        domain.detachDeviceFlags(ET.tostring(disk, encoding="unicode"), flags)
        if is_network_disk(ET.tostring(disk, encoding="unicode")):
            for element in current.iter("lease"):
                if element.findtext("lockspace") == lease.lockspace and element.findtext("key") == lease.key:
                    domain.detachDeviceFlags(ET.tostring(element, encoding="unicode"), flags)
    except libvirt.libvirtError as exc:
        raise HvstoreError(f"detaching {backend.store}/{name} from {domain_name} failed: "
                           f"{exc.get_error_message()}") from None
    # A live unplug needs the guest's cooperation (ACPI); libvirt returns after waiting a few seconds.
    pending = is_live and _find_disk(ET.fromstring(domain.XMLDesc(0)), disk) is not None
    return AttachResult(domain_name, str(target), lease, is_live, is_config, pending)


def _source_key(disk: ET.Element) -> tuple[str | None, ...]:
    source = disk.find("source")
    if source is None:
        return (None,)
    return (disk.get("type"), source.get("protocol"), source.get("name"), source.get("file"), source.get("dev"))


def _find_disk(domain_xml: ET.Element, wanted: ET.Element) -> ET.Element | None:
    key = _source_key(wanted)
    for disk in domain_xml.iter("disk"):
        if _source_key(disk) == key:
            return disk
    return None
