"""Every lab service, in start order. Adding a service: one module with a LabService, one line here."""

from __future__ import annotations

from hvstore.lab.ceph import CephService
from hvstore.lab.drbd import DrbdService
from hvstore.lab.gluster import GlusterService
from hvstore.lab.libvirt import LibvirtService
from hvstore.lab.local import LocalService
from hvstore.lab.lockd import LockdService
from hvstore.lab.sanlock import SanlockService
from hvstore.lab.service import LabService
from hvstore.lab.sheepdog_fake import SheepdogFakeService
from hvstore.lab.tgt import TgtService

# Please keep this at the bottom of the file, in start order; ``DEFAULT`` is what ``hvstore lab up``
# starts when no service is named.
SERVICES: dict[str, type[LabService]] = {
    "local": LocalService,
    "ceph": CephService,
    "gluster": GlusterService,
    "tgt": TgtService,
    "lockd": LockdService,
    "libvirt": LibvirtService,
    "sanlock": SanlockService,
    "sheepdog-fake": SheepdogFakeService,
    "drbd": DrbdService,
}
# Everything the main job (hvstore compare) uses: every store, libvirt (provisioning up to a started domain,
# with lockd as its lock manager) and sanlock (lockd's baseline).
DEFAULT: tuple[str, ...] = ("local", "ceph", "gluster", "tgt", "libvirt", "sanlock", "sheepdog-fake", "drbd")
