"""The lab's iSCSI target: one tgtd (tgt 1.0.85) on 127.0.0.1:3260, run in the foreground.

State lives under ``<labdir>/tgt``: ``ctl`` is tgtd's control socket (``TGT_IPC_SOCKET``, so this tgtd
does not collide with a system tgtd on ``/var/run/tgtd/socket``), ``volumes/`` holds the LUN backing
files and ``state.json`` the iscsi store's targets. tgtd keeps targets only in memory, so every ``start``
(after a crash too) asks the iscsi backend to re-apply that state: ``hvstore lab up`` restores every
target. tgtd is up in 8-20 ms (ENVIRONMENT.md); the store ``iscsi`` admits hvstore's own initiator and
QEMU's default one (``iqn.2008-11.org.linux-kvm``), so plain qemu-img/qemu-io work on the lab's volumes.

lockd's leases for the store live on a LUN of the same target server: the volume ``lockd-leases`` (8 MiB),
made at the first ``start`` with each lab host's lockd initiator (``<prefix>:<host>.lockd``) in its ACL.
``[lease_stores.iscsi]`` names it; its ``initiator`` carries ``{host}``, which lockd replaces by its host id.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from hvstore.backends.iscsi import QEMU_DEFAULT_INITIATOR, IscsiBackend, IscsiConfig
from hvstore.backends.tgtd import Tgtd
from hvstore.errors import AlreadyExists, HvstoreError, NotFound
from hvstore.lab.ceph import HOSTS
from hvstore.lab.service import LabService, wait_until
from hvstore.tools import tgtadm

ADDRESS = "127.0.0.1"
PORT = 3260
STORE = "iscsi"
START_TIMEOUT_S = 10.0
LEASE_VOLUME = "lockd-leases"
LEASE_VOLUME_BYTES = 8 << 20  # 8 KiB slots: ~1,000 lockspaces and leases


class TgtService(LabService):
    name = "tgt"
    description = "tgt 1.0.85 iSCSI target (tgtd) on 127.0.0.1:3260, one target per volume"

    @property
    def process_names(self) -> tuple[str, ...]:
        return ("tgtd",)

    @property
    def address(self) -> str:
        return f"{ADDRESS}:{PORT}"

    @property
    def control_socket(self) -> Path:
        return self.dir / "ctl"

    def start(self) -> None:
        (self.dir / "volumes").mkdir(parents=True, exist_ok=True)
        if not self.lab.running("tgtd"):
            self.lab.stop("tgtd")  # clear a stale pid record
            self.lab.spawn("tgtd", ["tgtd", "-f", "--iscsi", f"portal={self.address}"],
                           env=tgtadm.env(str(self.control_socket)))
            wait_until(lambda: self.health()[0], timeout_s=START_TIMEOUT_S, what="tgtd",
                       log=lambda: self.lab.log_tail("tgtd"))
        # tgtd forgot its targets if it restarted; idempotent when it did not.
        with self.backend() as backend:
            backend.reapply()
            self._ensure_lease_volume(backend)

    def _ensure_lease_volume(self, backend: IscsiBackend) -> None:
        try:
            backend.create(LEASE_VOLUME, LEASE_VOLUME_BYTES)
        except AlreadyExists:
            pass
        for host in HOSTS:
            backend.allow(LEASE_VOLUME, backend.initiator_for(host, "lockd"))

    def lease_stores(self) -> dict[str, dict[str, Any]]:
        backend = self.backend()  # unconnected: the volume's facts come from the store's state file
        try:
            target = backend.info(LEASE_VOLUME).details["iqn"]
        except NotFound:  # not made yet (tgt never started in this lab)
            return {}
        return {STORE: {"type": "iscsi", "portal": self.address, "target": target,
                        "initiator": backend.initiator_for("{host}", "lockd")}}

    def stop(self) -> None:
        """Stop tgtd. It ignores SIGTERM, so delete its targets (the state file keeps them) and ask it to
        exit; the reaper's SIGKILL after its grace period remains the fallback."""
        if self.lab.running("tgtd"):
            tgtd = self.tgtd()
            try:
                for target in tgtd.targets():
                    tgtd.delete_target(target.tid)
                tgtd.run(tgtd.tool.shutdown())
            except HvstoreError:
                pass  # not answering: the reaper's kill below ends it
        self.lab.stop("tgtd")

    def health(self) -> tuple[bool, str]:
        try:
            with socket.create_connection((ADDRESS, PORT), timeout=1):
                pass
            targets = self.tgtd().targets()
        except (OSError, HvstoreError) as exc:
            return False, f"tgtd not answering: {exc}"
        return True, f"{len(targets)} target(s)"

    def stores(self) -> dict[str, dict[str, Any]]:
        return {
            STORE: {
                "type": "iscsi",
                "directory": str(self.dir / "volumes"),
                "state_file": str(self.dir / "state.json"),
                "portal": self.address,
                "control_socket": str(self.control_socket),
                "allowed_initiators": [QEMU_DEFAULT_INITIATOR],
            }
        }

    def tgtd(self) -> Tgtd:
        return Tgtd(str(self.control_socket))

    def backend(self) -> IscsiBackend:
        table = dict(self.stores()[STORE])
        table.pop("type")
        return IscsiBackend(STORE, IscsiConfig.from_mapping(STORE, table))
