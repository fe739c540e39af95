"""The ``gluster`` lab service: one isolated glusterd, distribute and replica-3 volumes, FUSE mounts.

Everything lives under ``<lab>/gluster``: glusterd's state (``state/``, its own UUID and volume store),
run files and the CLI socket (``run/``), logs (``logs/``), bricks (``bricks/``) and FUSE mountpoints
(``mnt/``). Only the bricks' UNIX sockets go to /var/run/gluster (hard-coded in glusterd, named by a hash
of the brick path). glusterd listens on 24007 (all addresses); bricks are registered as 127.0.0.2
because the CLI refuses 127.0.0.1, and clients fetch volfiles from 127.0.0.1.

Volumes:
- ``hvdist``: distribute over two bricks, Gluster's defaults (client caches on).
- ``hvrep3``: replica 3 (three bricks on this node) with ``cluster.quorum-type auto`` (a write needs a
  majority of bricks: the minority side of a split refuses it) and the settings measured to make
  lock-protected read-modify-write safe (eager-lock and every client cache off; ENVIRONMENT.md).
- ``hvlease``: lockd's lease store, a volume of its own with ``hvrep3``'s settings, so lease I/O never
  queues behind image I/O on the same bricks and a brick of the image volume can be killed (node-loss
  scenario) without touching the leases of every volume. No images in it.

Processes: glusterd runs in the foreground under the lab's reaper, which is a child subreaper, so the
bricks and the self-heal daemon that glusterd double-forks stay its descendants: stopping glusterd's
reaper stops them too, and a killed brick is reaped at once (PID 1 would leave it a zombie that glusterd
takes for running). One FUSE client per volume (``glusterfs -N``) gives qemu-img/qemu-nbd a path: on a
``gluster://`` URI every QEMU tool pays ~10 s of ``glfs_fini`` on exit, on the mount 0.02 s.

Recovery: ``start`` after a crash kills leftover bricks of this lab that escaped their reaper, clears
stale pid files and stale FUSE mounts, restarts glusterd (which restarts the bricks of started
volumes) and runs ``volume start VOL force`` for any brick still down.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvstore.errors import BackendUnavailable, ToolFailed
from hvstore.lab import procs
from hvstore.lab.service import LabService, wait_until
from hvstore.run import run
from hvstore.tools.gluster_cli import (
    GLUSTERD_PORT,
    GlusterCliError,
    GlusterdPaths,
    VolumeStatus,
    cli_argv,
    fuse_mount_argv,
    glusterd_argv,
    parse_volume_info,
    parse_volume_status,
    volume_create_args,
    volume_set_args,
)

# ENVIRONMENT.md: with these, 400 lock-protected increments from two processes lost none on replica 3.
SAFE_RMW_OPTIONS: dict[str, str] = {
    "cluster.quorum-type": "auto",
    "cluster.eager-lock": "off",
    "performance.write-behind": "off",
    "performance.quick-read": "off",
    "performance.io-cache": "off",
    "performance.read-ahead": "off",
    "performance.stat-prefetch": "off",
    "performance.open-behind": "off",
}
BRICKS_SETTLE_S = 5.0  # a restarted glusterd starts the bricks of started volumes itself; give it this long
STARTUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    bricks: int
    replica: int
    options: dict[str, str] = field(default_factory=dict)
    store: str = ""  # the hvstore store of its images; "" for a volume that holds none (the lease volume)
    image_format: str = "qcow2"


VOLUMES: tuple[VolumeSpec, ...] = (
    VolumeSpec("hvdist", bricks=2, replica=1, store="gluster-dist", image_format="raw"),
    VolumeSpec("hvrep3", bricks=3, replica=3, options=SAFE_RMW_OPTIONS, store="gluster", image_format="qcow2"),
    VolumeSpec("hvlease", bricks=3, replica=3, options=SAFE_RMW_OPTIONS),
)
LEASE_VOLUME = "hvlease"
LEASE_ROOT = "/lockd"
IMAGES_DIR = "images"


class GlusterService(LabService):
    name = "gluster"
    description = "glusterd 10 with a distribute and a replica-3 (quorum auto) volume, and lockd's lease volume"

    @property
    def paths(self) -> GlusterdPaths:
        return GlusterdPaths(self.dir)

    @property
    def process_names(self) -> tuple[str, ...]:
        return ("glusterd", *(f"gluster-fuse-{v.name}" for v in VOLUMES))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{GLUSTERD_PORT}"

    def mountpoint(self, volume: str) -> Path:
        return self.paths.mounts_dir / volume

    def brick_paths(self, spec: VolumeSpec) -> list[Path]:
        return [self.paths.bricks_dir / f"{spec.name}-{i}" for i in range(spec.bricks)]

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        paths = self.paths
        for directory in (paths.working_dir, paths.run_dir, paths.log_dir, paths.bricks_dir, paths.mounts_dir):
            directory.mkdir(parents=True, exist_ok=True)
        fresh_glusterd = not self.lab.running("glusterd")
        if fresh_glusterd:
            self._clear_leftovers()
            self.lab.spawn("glusterd", glusterd_argv(paths))
            wait_until(self._cli_answers, timeout_s=STARTUP_TIMEOUT_S, what="glusterd",
                       log=lambda: self.lab.log_tail("glusterd"))
        for spec in VOLUMES:
            self._ensure_volume(spec, settle_s=BRICKS_SETTLE_S if fresh_glusterd else 0.0)
        for spec in VOLUMES:
            self._ensure_fuse_mount(spec)
            # Clients reconnect to restarted bricks on their own timer (~3 s), not at once.
            wait_until(lambda spec=spec: self._images_dir_ready(spec), timeout_s=STARTUP_TIMEOUT_S,
                       what=f"gluster volume {spec.name} through its FUSE mount")

    def stop(self) -> None:
        """Stop the FUSE clients, then glusterd with its bricks. Volumes and data stay."""
        super().stop()
        for spec in VOLUMES:
            self._unmount_if_mounted(self.mountpoint(spec.name))

    def health(self) -> tuple[bool, str]:
        try:
            statuses = {s.name: s for s in self._volume_status()}
        except (ToolFailed, GlusterCliError) as exc:
            return False, f"gluster CLI: {exc}"
        parts, healthy = [], True
        for spec in VOLUMES:
            status = statuses.get(spec.name)
            online = status.bricks_online if status else 0
            mounted = _mounted(self.mountpoint(spec.name))
            healthy &= online == spec.bricks and mounted
            kind = f"replica {spec.replica}, quorum auto" if spec.replica > 1 else "distribute"
            parts.append(f"{spec.name} ({kind}): {online}/{spec.bricks} bricks up"
                         + ("" if mounted else ", FUSE mount missing"))
        return healthy, "; ".join(parts)

    def stores(self) -> dict[str, dict[str, Any]]:
        return {
            spec.store: {
                "type": "gluster",
                "volume": spec.name,
                "server": "127.0.0.1",
                "port": GLUSTERD_PORT,
                "directory": IMAGES_DIR,
                "format": spec.image_format,
                "fuse_mount": str(self.mountpoint(spec.name)),
                "gfapi_log": str(self.paths.log_dir / "gfapi.log"),
            }
            for spec in VOLUMES
            if spec.store
        }

    def lease_stores(self) -> dict[str, dict[str, Any]]:
        """lockd's leases for both image stores: files on the dedicated replica-3 volume."""
        table = {"type": "gluster", "volume": LEASE_VOLUME, "server": "127.0.0.1", "port": GLUSTERD_PORT,
                 "root": LEASE_ROOT}
        return {spec.store: dict(table) for spec in VOLUMES if spec.store}

    # -- helpers ------------------------------------------------------------------------------------
    def gluster(self, *args: str, timeout_s: float = 60) -> str:
        """Run the gluster CLI against this lab's glusterd; its stdout."""
        return run(cli_argv(self.paths, *args), timeout_s=timeout_s).stdout

    def _cli_answers(self) -> bool:
        if self.lab.reaper_pid("glusterd") is None:  # the reaper exits once glusterd has
            raise BackendUnavailable(f"glusterd exited: {self.lab.log_tail('glusterd', 1)}")
        try:
            self.gluster("volume", "list", timeout_s=10)
        except ToolFailed:
            return False
        return True

    def _volume_status(self, volume: str = "all") -> list[VolumeStatus]:
        done = run(cli_argv(self.paths, "volume", "status", volume, "--xml"), timeout_s=30, check=False)
        return parse_volume_status(done.stdout)

    def _ensure_volume(self, spec: VolumeSpec, *, settle_s: float) -> None:
        infos = {v.name: v for v in parse_volume_info(self.gluster("volume", "info", "--xml"))}
        info = infos.get(spec.name)
        if info is None:
            bricks = self.brick_paths(spec)
            for brick in bricks:  # a brick left by a failed bootstrap carries the old volume-id xattr
                shutil.rmtree(brick, ignore_errors=True)
            self.gluster(*volume_create_args(spec.name, bricks, replica=spec.replica))
            if spec.options:
                self.gluster(*volume_set_args(spec.name, spec.options))
            self.gluster("volume", "start", spec.name)
        elif info.status != "Started":
            self.gluster("volume", "start", spec.name)

        def all_bricks_online() -> bool:
            status = self._volume_status(spec.name)
            return bool(status) and status[0].bricks_online == spec.bricks

        deadline = time.monotonic() + settle_s
        while not all_bricks_online():
            if time.monotonic() >= deadline:
                self.gluster("volume", "start", spec.name, "force")  # restarts only the bricks that are down
                break
            time.sleep(0.1)
        wait_until(all_bricks_online, timeout_s=STARTUP_TIMEOUT_S, what=f"gluster volume {spec.name} bricks",
                   log=lambda: self.lab.log_tail("glusterd"))

    def _ensure_fuse_mount(self, spec: VolumeSpec) -> None:
        name = f"gluster-fuse-{spec.name}"
        mountpoint = self.mountpoint(spec.name)
        if self.lab.running(name) and _mounted(mountpoint):
            return
        self.lab.stop(name)
        self._unmount_if_mounted(mountpoint)  # a killed client leaves "Transport endpoint is not connected"
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.lab.spawn(name, fuse_mount_argv(spec.name, mountpoint, self.paths.log_dir / f"fuse-{spec.name}.log"))

        def usable() -> bool:
            if self.lab.reaper_pid(name) is None:
                raise BackendUnavailable(f"FUSE client for {spec.name} exited: {self.lab.log_tail(name, 1)}")
            if not _mounted(mountpoint):
                return False
            try:
                os.statvfs(mountpoint)
            except OSError:
                return False
            return True

        wait_until(usable, timeout_s=STARTUP_TIMEOUT_S, what=f"FUSE mount of {spec.name}",
                   log=lambda: self.lab.log_tail(name))

    def _images_dir_ready(self, spec: VolumeSpec) -> bool:
        try:
            if not spec.store:
                os.listdir(self.mountpoint(spec.name))  # no images here; the volume just has to answer
                return True
            (self.mountpoint(spec.name) / IMAGES_DIR).mkdir(exist_ok=True)
        except OSError:  # ENOTCONN while the client has not reconnected to enough bricks yet
            return False
        return True

    def _unmount_if_mounted(self, mountpoint: Path) -> None:
        if _mounted(mountpoint):
            run(["umount", "-l", str(mountpoint)], timeout_s=30, check=False)

    def _clear_leftovers(self) -> None:
        """Before a fresh glusterd: stop this lab's bricks/self-heal daemons that outlived their reaper
        (their command line names our run directory) and remove stale pid files, which glusterd would
        otherwise trust (a reused pid looks like a running brick)."""
        marker = str(self.paths.run_dir) + "/"
        for pid_file in self.paths.run_dir.rglob("*.pid"):
            try:
                pid = int(pid_file.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and procs.alive(pid) and any(marker in arg for arg in procs.cmdline(pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            pid_file.unlink(missing_ok=True)


def _mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    try:
        with open("/proc/self/mountinfo") as mounts:
            return any(line.split()[4] == target for line in mounts)
    except OSError:
        return False
