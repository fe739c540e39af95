"""The lab's DRBD nodes: two QEMU VMs (TCG) running Debian's cloud kernel, whose drbd.ko is DRBD 8.4.11.

No DRBD kernel module can be loaded on this host (ENVIRONMENT.md), so the kernel side runs in VMs:

- **Build (once, cached under ``<labdir>/drbd/build``)**: ``apt-get download`` of the package the
  ``linux-image-cloud-amd64`` metapackage currently depends on (old kernel versions vanish from the mirror),
  ``dpkg-deb -x``; the initramfs (gzip'd newc cpio, written here in Python) holds busybox (busybox-static),
  the host's drbd-utils (drbdadm/drbdsetup/drbdmeta, the 8.4 tools ``/usr/lib/drbd/drbdadm-84`` and
  ``drbdsetup-84``, their shared libraries), the modules drbd needs (dependencies read from each .ko's
  ``.modinfo``: the package ships no modules.dep), an ``/init`` and the node agent.
- **Boot**: ``qemu-system-x86_64 -accel tcg,tb-size=128 -m 256`` (/dev/kvm here is kvm_pvm, which cannot
  run a stock kernel; without tb-size a VM reached 1.4 GB RSS) through ``Lab.spawn`` so they are reaped.
  Each node has a sparse backing file as virtio disk (an ext4 file system at ``/data``, made and checked
  by the host's e2fsprogs before boot, holding one loop
  file and one resource file per volume), a virtio-net NIC on a point-to-point link to the other VM
  (QEMU ``-netdev socket`` over UDP on loopback: the TCP variant sets TCP_NODELAY on one side only,
  ~47 ms per small synchronous write), and the agent's virtio-serial port as a UNIX socket
  (``<labdir>/drbd/<node>.sock``; why that channel: ``hvstore.backends.drbd_nodes``).
- The guest console goes to ``<labdir>/logs/drbd-<node>.log`` (the reaper's log).

Restarting the VMs loses the in-kernel DRBD state but not the data: ``start`` brings every resource found
on the nodes back up (``DrbdBackend.reapply``). Node addresses are 10.99.0.1 (drbd-a) and 10.99.0.2 (drbd-b).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from hvstore.backends.drbd import DrbdBackend, DrbdConfig
from hvstore.backends.drbd_nodes import AgentExecutor
from hvstore.errors import BackendUnavailable, HvstoreError
from hvstore.lab.service import LabService, wait_until
from hvstore.run import run

STORE = "drbd"
NODES: dict[str, str] = {"drbd-a": "10.99.0.1", "drbd-b": "10.99.0.2"}
DISK_BYTES = 8 << 30  # sparse; volumes are loop files on it
BOOT_TIMEOUT_S = 120.0
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "loop", "drbd")
DRBD_TOOLS = ("/usr/sbin/drbdadm", "/usr/sbin/drbdsetup", "/usr/sbin/drbdmeta",
              "/usr/lib/drbd/drbdadm-84", "/usr/lib/drbd/drbdsetup-84")
BUSYBOX = "/bin/busybox"  # from busybox-static: the initramfs has no libc for a dynamic busybox
BUILD_VERSION = 6  # bump when the initramfs layout changes, to rebuild caches

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /var/lib/drbd /var/lock /data /etc
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ln -s /run /var/run
for m in $(cat /modules.order); do insmod "/modules/$m.ko"; done
for arg in $(cat /proc/cmdline); do
  case "$arg" in hvnode=*) node=${arg#hvnode=};; hvaddr=*) addr=${arg#hvaddr=};; esac
done
hostname "$node"
ip link set lo up
ip addr add "$addr/24" dev eth0
ip link set eth0 up
mount -t ext4 /dev/vda /data || echo "hvstore-node: /dev/vda did not mount on /data"  # never reformat data
mkdir -p /data/res
echo 'include "/data/res/*.res";' > /etc/drbd.conf
port=""
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name")" = hvstore.agent ] && port=/dev/${p##*/}
done
echo "hvstore-node $node ready (agent on $port)"
while :; do /agent "$port"; sleep 1; done
"""

# Wire format: hvstore/backends/drbd_nodes.py. ``read`` reads the header byte by byte, so the exact
# ``dd ... count_bytes`` reads that follow get the payload and nothing more.
AGENT = r"""#!/bin/sh
exec 3<>"$1"
idle=0
while :; do
  # No host on the port reads as EOF at once: poll fast for ~2 s after a command (hvstore connects once per
  # command, in bursts), then at 2 Hz (each sleep is a fork+exec under TCG: 20 Hz cost ~14% of a core).
  if ! read -r id alen ilen <&3 || [ -z "$ilen" ]; then
    idle=$((idle + 1)); if [ "$idle" -lt 40 ]; then sleep 0.05; else sleep 0.5; fi; continue
  fi
  idle=0
  dd bs=65536 count="$alen" iflag=fullblock,count_bytes <&3 2>/dev/null > /tmp/agent.argv
  dd bs=65536 count="$ilen" iflag=fullblock,count_bytes <&3 2>/dev/null > /tmp/agent.in
  set --
  while IFS= read -r a; do set -- "$@" "$a"; done < /tmp/agent.argv
  ( "$@" ) < /tmp/agent.in > /tmp/agent.out 2> /tmp/agent.err
  rc=$?
  printf '%s %s %s %s\n' "$id" "$rc" "$(wc -c < /tmp/agent.out)" "$(wc -c < /tmp/agent.err)" >&3
  cat /tmp/agent.out /tmp/agent.err >&3
done
"""


class DrbdService(LabService):
    name = "drbd"
    description = "two DRBD 8.4 nodes: QEMU TCG VMs (Debian cloud kernel) linked over UDP, agent on virtio-serial"

    @property
    def process_names(self) -> tuple[str, ...]:
        return tuple(NODES)

    @property
    def address(self) -> str:
        return ", ".join(f"{n}={a}" for n, a in NODES.items())

    @property
    def build_dir(self) -> Path:
        return self.dir / "build"

    def socket_path(self, node: str) -> Path:
        return self.dir / f"{node}.sock"

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        kernel, initrd = self.build()
        ports = self._link_ports()
        names = list(NODES)
        for index, node in enumerate(names):
            if self.lab.running(node):
                continue
            self.lab.stop(node)  # clear a stale pid record
            self._prepare_disk(self.dir / f"{node}.disk")
            disk = self.dir / f"{node}.disk"
            self.socket_path(node).unlink(missing_ok=True)
            peer_port = ports[1 - index]
            self.lab.spawn(node, self._qemu_argv(node, index, kernel, initrd, disk, ports[index], peer_port))
        for node in names:
            wait_until(lambda n=node: self._answers(n), timeout_s=BOOT_TIMEOUT_S, what=f"DRBD node {node}",
                       interval_s=0.2, log=lambda n=node: self.lab.log_tail(n))
        with self.backend() as backend:
            backend.reapply()

    def _prepare_disk(self, disk: Path) -> None:
        """The node's /data: ext4 made here with the host's e2fsprogs (busybox makes only ext2, which a
        killed node left damaged: "Structure needs cleaning"); an existing one is checked first, as a
        node may have been killed, and gets a journal if an older lab made it without one."""
        if not disk.exists():
            with open(disk, "wb") as f:
                f.truncate(DISK_BYTES)
            run(["mke2fs", "-q", "-F", "-t", "ext4", str(disk)], timeout_s=60)
            return
        checked = run(["e2fsck", "-p", str(disk)], timeout_s=300, check=False)
        if checked.returncode >= 4:  # 1/2: errors corrected; 4 and up: left uncorrected
            raise BackendUnavailable(f"{disk}: e2fsck could not repair the node's file system: "
                                     f"{(checked.stdout + checked.stderr).strip().splitlines()[-1:]}")
        if "has_journal" not in run(["dumpe2fs", "-h", str(disk)], timeout_s=30).stdout:
            run(["tune2fs", "-j", str(disk)], timeout_s=60)

    def health(self) -> tuple[bool, str]:
        down = [n for n in NODES if not self._answers(n)]
        if down:
            return False, f"agent not answering on {', '.join(down)}"
        try:
            with self.backend() as backend:
                count = len(backend.list())
        except HvstoreError as exc:
            return False, str(exc)
        return True, f"{len(NODES)} nodes, {count} resource(s)"

    def stores(self) -> dict[str, dict[str, Any]]:
        return {
            STORE: {
                "type": "drbd",
                "nodes": list(NODES),
                "addresses": list(NODES.values()),
                "agent_sockets": [str(self.socket_path(n)) for n in NODES],
            }
        }

    def backend(self) -> DrbdBackend:
        table = dict(self.stores()[STORE])
        table.pop("type")
        return DrbdBackend(STORE, DrbdConfig.from_mapping(STORE, table))

    # -- build ----------------------------------------------------------------------------------------
    def build(self) -> tuple[Path, Path]:
        """Kernel and initramfs, built once; returns their paths."""
        stamp = self.build_dir / "build.json"
        kernel, initrd = self.build_dir / "vmlinuz", self.build_dir / "initrd.gz"
        try:
            if json.loads(stamp.read_text())["version"] == BUILD_VERSION and kernel.exists() and initrd.exists():
                return kernel, initrd
        except (FileNotFoundError, ValueError, KeyError):
            pass
        started = time.monotonic()
        self.build_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.build_dir) as tmp:
            work = Path(tmp)
            package = kernel_package()
            run(["apt-get", "download", package], cwd=work, timeout_s=600)
            deb = next(work.glob("*.deb"))
            root = work / "pkg"
            run(["dpkg-deb", "-x", str(deb), str(root)], timeout_s=300)
            shutil.copyfile(next((root / "boot").glob("vmlinuz-*")), kernel)
            write_initramfs(initrd, module_root=next((root / "lib" / "modules").iterdir()))
        stamp.write_text(json.dumps({"version": BUILD_VERSION, "package": package,
                                     "seconds": round(time.monotonic() - started, 1)}))
        return kernel, initrd

    # -- helpers --------------------------------------------------------------------------------------
    def _qemu_argv(self, node: str, index: int, kernel: Path, initrd: Path, disk: Path,
                   local_port: int, peer_port: int) -> list[str]:
        sock = self.socket_path(node)
        return [
            "qemu-system-x86_64", "-accel", "tcg,tb-size=128", "-m", "256", "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 quiet hvnode={node} hvaddr={NODES[node]}",
            "-drive", f"file={disk},if=virtio,format=raw,cache=writeback",
            "-netdev", f"socket,id=link,udp=127.0.0.1:{peer_port},localaddr=127.0.0.1:{local_port}",
            "-device", f"virtio-net-pci,netdev=link,mac=52:54:00:99:00:0{index + 1}",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=hvstore.agent",
        ]

    def _link_ports(self) -> list[int]:
        """Two UDP ports on loopback for the link, chosen once and kept (both VMs must agree)."""
        path = self.dir / "link.json"
        try:
            return list(json.loads(path.read_text())["ports"])
        except (FileNotFoundError, ValueError, KeyError):
            pass
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in NODES]
        try:
            for s in sockets:
                s.bind(("127.0.0.1", 0))
            ports = [s.getsockname()[1] for s in sockets]
        finally:
            for s in sockets:
                s.close()
        path.write_text(json.dumps({"ports": ports}))
        return ports

    def _answers(self, node: str) -> bool:
        if not self.lab.running(node):
            return False
        try:
            return AgentExecutor(node, self.socket_path(node)).run(["true"], timeout_s=2).returncode == 0
        except (BackendUnavailable, HvstoreError):
            return False


def kernel_package() -> str:
    """The kernel package the cloud metapackage depends on right now (``linux-image-6.1.0-N-cloud-amd64``)."""
    text = run(["apt-cache", "depends", KERNEL_METAPACKAGE]).stdout
    match = re.search(r"Depends:\s*(linux-image-\S+-cloud-amd64)", text)
    if not match:
        raise BackendUnavailable(f"apt-cache: {KERNEL_METAPACKAGE} names no kernel (run apt-get update)")
    return match.group(1)


def module_order(module_root: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files for ``wanted`` and their dependencies, dependencies first."""
    index = {p.name.removesuffix(".ko"): p for p in module_root.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = index[name]
        match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", path.read_bytes())
        for dep in (match.group(1).decode().split(",") if match else []):
            if dep:
                visit(dep)
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name)
    return order


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries ``ldd`` lists for ``binary`` (none for a static one)."""
    done = run(["ldd", binary], check=False)
    return re.findall(r"(/\S+\.so[.\d]*)", done.stdout)


def write_initramfs(target: Path, *, module_root: Path) -> None:
    entries: dict[str, tuple[int, bytes]] = {}  # path -> (mode, contents); directories have b""

    def add_file(path: str, data: bytes, mode: int = 0o755) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), (stat.S_IFDIR | 0o755, b""))
        entries["/".join(parts)] = (stat.S_IFREG | mode, data)

    add_file("bin/busybox", Path(BUSYBOX).read_bytes())
    add_file("init", INIT.encode())
    add_file("agent", AGENT.encode())
    for tool in DRBD_TOOLS:
        add_file(tool, Path(tool).read_bytes())
        for lib in shared_libraries(tool):
            add_file(lib, Path(lib).read_bytes())
    # drbd calls its usermode helper at /sbin/drbdadm with PATH=/sbin:/usr/sbin:/bin:/usr/bin, and the
    # drbdadm wrapper finds drbdadm-84/drbdsetup-84 through PATH.
    entries["sbin"] = (stat.S_IFDIR | 0o755, b"")
    entries["sbin/drbdadm"] = (stat.S_IFLNK | 0o777, b"/usr/sbin/drbdadm")
    for tool in ("drbdadm-84", "drbdsetup-84"):
        entries[f"usr/sbin/{tool}"] = (stat.S_IFLNK | 0o777, f"/usr/lib/drbd/{tool}".encode())
    modules = module_order(module_root, MODULES)
    for ko in modules:
        add_file(f"modules/{ko.name}", ko.read_bytes(), 0o644)
    add_file("modules.order", "".join(p.name.removesuffix(".ko") + "\n" for p in modules).encode(), 0o644)
    with gzip.open(target.with_suffix(".tmp"), "wb", compresslevel=6) as out:
        for inode, (name, (mode, data)) in enumerate(sorted(entries.items()), start=1):
            _cpio_entry(out, inode, name, mode, data)
        _cpio_entry(out, 0, "TRAILER!!!", 0, b"")
    target.with_suffix(".tmp").rename(target)


def _cpio_entry(out: Any, inode: int, name: str, mode: int, data: bytes) -> None:
    """One entry of a newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""
    encoded = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + encoded + b"\0" * ((4 - (len(header) + len(encoded)) % 4) % 4))
    out.write(data + b"\0" * ((4 - len(data) % 4) % 4))
