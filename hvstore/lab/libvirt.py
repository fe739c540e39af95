"""The lab's libvirtd + virtlogd (+ the lock daemon libvirt's ``lockd`` plugin talks to), on this host.

libvirtd runs in a private mount namespace (``hvstore.lab.nsexec``) where the lab's directories stand at
/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, so it neither reads
nor disturbs the host's libvirt. Clients reach it at ``qemu:///system?socket=<lab>/libvirt/run/libvirt-sock``.
QEMU runs as root with no security driver (a lab, not a hardened host) and /dev/kvm is made root:kvm 0660.

Lock manager (``lock_manager`` in the lab's libvirt/settings.json, or ``hvstore lab up libvirt`` after
``LibvirtService.configure``):
- ``lockd``: qemu.conf ``lock_manager = "lockd"``; the plugin connects to <lab>/libvirt/run/virtlockd-sock,
  where the lab's *lockd* service (this project's daemon) must listen;
- ``virtlockd``: the same plugin served by libvirt's own virtlockd (the baseline);
- ``none``: no lock manager.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from hvstore.errors import InvalidArgument
from hvstore.lab.service import LabService, wait_until

LOCK_MANAGERS = ("lockd", "virtlockd", "none")
BIND_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
             "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}


class LibvirtService(LabService):
    name = "libvirt"
    description = "libvirtd + virtlogd in a private mount namespace (QEMU/TCG or KVM)"

    @property
    def process_names(self) -> tuple[str, ...]:
        return ("libvirtd",)

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "libvirt-sock"

    @property
    def lock_socket(self) -> Path:
        """Where libvirt's lockd plugin connects (virtlockd's socket path inside the namespace)."""
        return self.dir / "run" / "virtlockd-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def address(self) -> str:
        return self.uri

    @property
    def settings_path(self) -> Path:
        return self.dir / "settings.json"

    def settings(self) -> dict[str, Any]:
        try:
            return json.loads(self.settings_path.read_text())
        except FileNotFoundError:
            return {"lock_manager": os.environ.get("HVSTORE_LAB_LOCK_MANAGER", "lockd")}

    def configure(self, *, lock_manager: str) -> None:
        """Choose the lock manager; takes effect at the next start (stop first to switch a running lab)."""
        if lock_manager not in LOCK_MANAGERS:
            raise InvalidArgument(f"unknown lock manager {lock_manager!r} (known: {', '.join(LOCK_MANAGERS)})")
        self.settings_path.write_text(json.dumps({**self.settings(), "lock_manager": lock_manager}))

    def start(self) -> None:
        if self.lab.running("libvirtd") and self.health()[0]:
            return
        self.lab.stop("libvirtd")  # a half-dead instance (e.g. libvirtd died, virtlogd lingers)
        _make_kvm_usable()
        lock_manager = self.settings()["lock_manager"]
        if lock_manager == "lockd":  # the plugin needs its daemon on the socket before any domain starts
            from hvstore.lab.lockd import LockdService

            LockdService(self.lab).start()
        self._write_config(lock_manager)
        for leftover in ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock", "virtlogd-sock",
                         "virtlogd-admin-sock", "libvirtd.pid", "virtlogd.pid", "virtlockd.pid"):
            (self.dir / "run" / leftover).unlink(missing_ok=True)
        if lock_manager == "virtlockd":  # the socket is virtlockd's now: the lab's lockd must not serve it
            self.lab.stop("lockd")
            (self.dir / "run" / "virtlockd-sock").unlink(missing_ok=True)
        argv = [sys.executable, "-m", "hvstore.lab.nsexec"]
        for sub, target in BIND_DIRS.items():
            argv += ["--bind", f"{self.dir / sub}:{target}"]
        # Pid files inside the lab's /run/libvirt: their default (/run/*.pid) is shared with the host's
        # libvirt and with any other lab on this machine, and a second virtlogd would refuse to start.
        argv += ["--pre", json.dumps(["virtlogd", "-d", "-p", "/run/libvirt/virtlogd.pid"])]
        if lock_manager == "virtlockd":
            argv += ["--pre", json.dumps(["virtlockd", "-d", "-p", "/run/libvirt/virtlockd.pid"])]
        argv += ["--", "libvirtd", "-p", "/run/libvirt/libvirtd.pid"]
        self.lab.spawn("libvirtd", argv)
        wait_until(lambda: self.health()[0], timeout_s=60, what="libvirtd",
                   log=lambda: self.lab.log_tail("libvirtd"))
        # The first QEMU capability probe costs ~12 s; pay it now, once (it is cached under cache/).
        subprocess.run(["virsh", "-c", self.uri, "domcapabilities"], capture_output=True, timeout=120)

    def health(self) -> tuple[bool, str]:
        if not self.socket.exists():
            return False, "no socket"
        done = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            return False, (done.stderr.strip().splitlines() or ["virsh failed"])[-1]
        return True, f"lock manager: {self.settings()['lock_manager']}"

    def _write_config(self, lock_manager: str) -> None:
        for sub in BIND_DIRS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        for sub in ("qemu", "qemu/networks", "qemu/autostart", "storage", "secrets", "nwfilter"):
            (etc / sub).mkdir(parents=True, exist_ok=True)
        if Path("/etc/libvirt/nwfilter").is_dir() and not any((etc / "nwfilter").iterdir()):
            shutil.copytree("/etc/libvirt/nwfilter", etc / "nwfilter", dirs_exist_ok=True)
        (etc / "libvirtd.conf").write_text(
            'unix_sock_rw_perms = "0700"\nunix_sock_ro_perms = "0700"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            'log_outputs = "3:stderr"\n'
        )
        (etc / "virtlogd.conf").write_text("")
        (etc / "virtlockd.conf").write_text("")
        (etc / "libvirt.conf").write_text("")
        lines = [
            "# Written by hvstore's lab; a lab, not a hardened host: QEMU runs as root.",
            'user = "+0"', 'group = "+0"', "dynamic_ownership = 0", "remember_owner = 0",
            'security_driver = "none"', "namespaces = [ ]",
        ]
        if lock_manager != "none":
            lines.append('lock_manager = "lockd"')
        (etc / "qemu.conf").write_text("\n".join(lines) + "\n")
        # Leases come from <lease> elements (hvstore attach adds them next to network disks) and, for
        # file/block disks, from their paths (auto_disk_leases).
        (etc / "qemu-lockd.conf").write_text("auto_disk_leases = 1\nrequire_lease_for_disks = 0\n")


def _make_kvm_usable() -> None:
    """/dev/kvm is 0600 root here; libvirt probes QEMU as an unprivileged user first and then fails."""
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return
    try:
        import grp

        gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return
    mode = kvm.stat()
    if mode.st_gid != gid or stat.S_IMODE(mode.st_mode) != 0o660:
        os.chown(kvm, 0, gid)
        os.chmod(kvm, 0o660)
