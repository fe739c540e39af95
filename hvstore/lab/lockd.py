"""The lab's lockd: this project's lease daemon serving libvirt's ``lockd`` plugin for host "hosta".

Leases live in the lab's Ceph (RADOS objects in pool ``hvstore``, namespace ``lockd``) when the ceph
service has been set up, else in a directory (file store). lockd listens where the lab's libvirtd looks for
virtlockd (``<lab>/libvirt/run/virtlockd-sock``, which is /run/libvirt/virtlockd-sock inside libvirtd's
mount namespace) and fences through the lab's hvstore.toml. ``hvstore lab up libvirt`` starts it first when
the lock manager is ``lockd``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hvstore.lab.ceph import CephService
from hvstore.lab.service import LabService, wait_until

HOST_ID = "hosta"
LEASE_ROOT = "/var/lib/libvirt/lockd"


def _toml(table: dict[str, Any]) -> str:
    lines, sub = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            sub.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in sub:
        lines.append(f"\n[{key}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in value.items())
    return "\n".join(lines) + "\n"


class LockdService(LabService):
    name = "lockd"
    description = f"lockd for host {HOST_ID} on the libvirt lock socket (leases in RADOS)"

    @property
    def process_names(self) -> tuple[str, ...]:
        return ("lockd",)

    @property
    def config_path(self) -> Path:
        return self.dir / "lockd.toml"

    @property
    def admin_socket(self) -> Path:
        return self.dir / "admin.sock"

    @property
    def lock_socket(self) -> Path:
        return self.lab.root / "libvirt" / "run" / "virtlockd-sock"

    @property
    def address(self) -> str:
        return str(self.lock_socket)

    def daemon_config(self) -> dict[str, Any]:
        ceph = CephService(self.lab)
        if ceph.bootstrapped():
            store = ceph.lease_stores()["ceph"]
        else:
            store = {"type": "file", "path": str(self.dir / "leases")}
        return {
            "host_id": HOST_ID, "ttl_s": 8.0, "renew_interval_s": 1.0, "margin_s": 2.0,
            "state_dir": str(self.dir / "state"), "admin_socket": str(self.admin_socket),
            "virtlockd_socket": str(self.lock_socket), "lease_root": LEASE_ROOT,
            "fencer": "hvstore", "hvstore_config": str(self.lab.root / "hvstore.toml"),
            "store": store,
        }

    def start(self) -> None:
        if self.lab.running("lockd") and self.health()[0]:
            return
        self.lab.stop("lockd")
        self.lock_socket.parent.mkdir(parents=True, exist_ok=True)
        (self.dir / "leases").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_toml(self.daemon_config()))
        self.lab.spawn("lockd", [sys.executable, "-m", "lockd.daemon", "-c", str(self.config_path)])
        wait_until(lambda: self.health()[0], timeout_s=30, what="lockd", log=lambda: self.lab.log_tail("lockd"))

    def health(self) -> tuple[bool, str]:
        if not self.admin_socket.exists() or not self.lock_socket.exists():
            return False, "no socket"
        done = subprocess.run([sys.executable, "-m", "lockd.cli", "status", "--json", "--socket",
                               str(self.admin_socket)], capture_output=True, text=True, timeout=15)
        if done.returncode != 0:
            return False, (done.stderr.strip().splitlines() or ["lockd status failed"])[-1]
        return True, f"host {HOST_ID}, store {self.daemon_config()['store']['type']}"
