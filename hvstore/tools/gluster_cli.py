"""Pure helpers for GlusterFS 10's tools: glusterd/glusterfs/gluster argv, and the CLI's ``--xml`` output.

Text in, data out: nothing here runs a process. The lab builds its commands here and parses what
``gluster ... --xml`` prints; the parsers are tested on captured real output (tests/data/gluster/).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GLUSTERD_PORT = 24007
# The CLI refuses localhost/127.0.0.1 as a brick host ("Please provide a valid hostname/ip other than
# localhost, 127.0.0.1 or loopback address"); another loopback address is accepted and is local.
BRICK_HOST = "127.0.0.2"


@dataclass(frozen=True)
class GlusterdPaths:
    """Where one isolated glusterd keeps everything (nothing under /var/lib/glusterd or /var/log)."""

    root: Path

    @property
    def working_dir(self) -> Path:  # glusterd.info (UUID), vols/ (volume store)
        return self.root / "state"

    @property
    def run_dir(self) -> Path:  # brick and self-heal pid files
        return self.root / "run"

    @property
    def socket(self) -> Path:  # the CLI's socket
        return self.run_dir / "glusterd.socket"

    @property
    def log_dir(self) -> Path:  # bricks/, glustershd.log, cmd_history.log
        return self.root / "logs"

    @property
    def bricks_dir(self) -> Path:
        return self.root / "bricks"

    @property
    def mounts_dir(self) -> Path:
        return self.root / "mnt"


def glusterd_argv(paths: GlusterdPaths) -> list[str]:
    """glusterd in the foreground (-N) with its state, run files, CLI socket and logs under ``paths``.

    Brick processes still put their UNIX sockets in /var/run/gluster (hard-coded, named by a hash of
    the brick path, so they do not collide with another glusterd's bricks).
    """
    return [
        "glusterd", "-N",
        "--xlator-option", f"management.working-directory={paths.working_dir}",
        "--xlator-option", f"management.run-directory={paths.run_dir}",
        "--xlator-option", f"management.glusterd-sockfile={paths.socket}",
        "--xlator-option", f"management.logging-directory={paths.log_dir}",
        "-p", str(paths.run_dir / "glusterd.pid"),
        "--log-file", str(paths.log_dir / "glusterd.log"),
    ]


def cli_argv(paths: GlusterdPaths, *args: str) -> list[str]:
    """``gluster`` talking to this glusterd over its socket, never prompting (--mode=script)."""
    return ["gluster", "--mode=script", f"--glusterd-sock={paths.socket}",
            f"--log-file={paths.log_dir / 'cli.log'}", *args]


def volume_create_args(volume: str, bricks: Sequence[Path], *, replica: int = 1) -> list[str]:
    """``volume create``; ``force`` because the bricks sit on the root file system (ext4)."""
    layout = ["replica", str(replica)] if replica > 1 else []
    return ["volume", "create", volume, *layout, *(f"{BRICK_HOST}:{b}" for b in bricks), "force"]


def volume_set_args(volume: str, options: Mapping[str, str]) -> list[str]:
    """One ``volume set`` with several key/value pairs (accepted by 10.x in one transaction)."""
    pairs = [item for key, value in options.items() for item in (key, value)]
    return ["volume", "set", volume, *pairs]


def fuse_mount_argv(volume: str, mountpoint: Path, log_file: Path, *, server: str = "127.0.0.1") -> list[str]:
    """The FUSE client in the foreground. Kernel attribute/entry caching off (timeouts 0): the same
    files are also changed through libgfapi, and a cached size or name would be stale for a second."""
    return [
        "glusterfs", "-N", f"--volfile-server={server}", f"--volfile-id={volume}",
        "--attribute-timeout=0", "--entry-timeout=0", "--negative-timeout=0",
        f"--log-file={log_file}", str(mountpoint),
    ]


@dataclass(frozen=True)
class BrickStatus:
    host: str
    path: str
    online: bool
    pid: int | None


@dataclass(frozen=True)
class VolumeStatus:
    name: str
    bricks: tuple[BrickStatus, ...]
    self_heal_online: bool | None  # None: the volume has no self-heal daemon (not replicated)

    @property
    def bricks_online(self) -> int:
        return sum(b.online for b in self.bricks)


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    status: str  # "Created", "Started", "Stopped"
    type: str  # "Distribute", "Replicate", ...
    replica_count: int
    bricks: tuple[str, ...]  # "host:/path"
    options: Mapping[str, str]


class GlusterCliError(ValueError):
    """The CLI answered with opRet != 0 (its message is in the exception)."""


def _root(text: str) -> ET.Element:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise GlusterCliError(f"gluster printed no XML: {text.strip()[:200]!r} ({exc})") from None
    if root.findtext("opRet", "0").strip() != "0":
        raise GlusterCliError(root.findtext("opErrstr", "").strip() or f"opErrno {root.findtext('opErrno')}")
    return root


def parse_volume_status(text: str) -> list[VolumeStatus]:
    """``gluster volume status [VOL] --xml`` -> one VolumeStatus per volume (started volumes only)."""
    volumes = []
    for vol in _root(text).iter("volume"):
        bricks = []
        shd: bool | None = None
        for node in vol.findall("node"):
            online = node.findtext("status", "0").strip() == "1"
            if node.findtext("hostname", "") == "Self-heal Daemon":
                shd = online if shd is None else shd and online
                continue
            pid_text = node.findtext("pid", "").strip()
            bricks.append(BrickStatus(node.findtext("hostname", "").strip(), node.findtext("path", "").strip(),
                                      online, int(pid_text) if pid_text.isdigit() and online else None))
        volumes.append(VolumeStatus(vol.findtext("volName", "").strip(), tuple(bricks), shd))
    return volumes


def parse_volume_info(text: str) -> list[VolumeInfo]:
    """``gluster volume info [VOL] --xml`` -> one VolumeInfo per volume (any state)."""
    volumes = []
    for vol in _root(text).iter("volume"):
        bricks = tuple((b.findtext("name") or (b.text or "")).strip() for b in vol.iter("brick"))
        options = {o.findtext("name", "").strip(): o.findtext("value", "").strip() for o in vol.iter("option")}
        volumes.append(VolumeInfo(
            name=vol.findtext("name", "").strip(), status=vol.findtext("statusStr", "").strip(),
            type=vol.findtext("typeStr", "").strip(), replica_count=int(vol.findtext("replicaCount", "1")),
            bricks=bricks, options=options,
        ))
    return volumes
