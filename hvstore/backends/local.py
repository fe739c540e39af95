"""Local backend: qcow2 (default) or raw image files in one directory of this host, via qemu-img.

The baseline every other backend is compared with: no network, no replication, one host. qcow2 gives
thin provisioning and internal snapshots (``qemu-img snapshot``); a clone is a full, independent copy of a
snapshot (``qemu-img convert -l``), so there is nothing to flatten. raw files are thin through sparse
files and have no snapshots. Guest-visible bytes are read through a private ``qemu-nbd`` for qcow2 and
directly for raw. Fencing: none (a single host owns the directory); lockd relies on self-fence.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from hvstore.backends.base import Backend, BlockIO, StoreConfig, option
from hvstore.backends.image_files import QCOW2_FILE_ROWS, RAW_FILE_ROWS
from hvstore.errors import AlreadyExists, Busy, ConfigError, InvalidArgument, NotFound, ToolFailed
from hvstore.imagefile import FileBlockIO
from hvstore.model import Capabilities, Feature, SnapshotInfo, VolumeInfo, no, yes
from hvstore.protocols.nbd import QemuNbdBlockIO
from hvstore.run import run

FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class LocalConfig(StoreConfig):
    path: str = option(help="directory holding the image files")
    format: str = option("qcow2", help="image format of new volumes: qcow2 (snapshots) or raw")


_COMMON: dict[Feature, Any] = {
    Feature.CREATE: yes(),
    Feature.DELETE: yes("refused while QEMU holds the image lock, unless forced"),
    Feature.RENAME: yes("offline", online=False),
    Feature.IMPORT_EXPORT: yes("sparse-aware"),
    Feature.REPLICATION: no("one copy on one host"),
    Feature.FENCING: no("single host: lockd relies on the holder's self-fence"),
    Feature.SHARED_ACCESS: no("the directory is local to one host"),
    Feature.LIBVIRT_POOL: yes("dir pool"),
}

QCOW2_CAPABILITIES = Capabilities(
    backend="local",
    features={
        **_COMMON,
        **QCOW2_FILE_ROWS,
        Feature.GROW: yes("qemu-img resize; online only through QEMU's block_resize", online=False),
        Feature.SNAPSHOT: yes("qcow2 internal snapshot", online=False),
        Feature.THIN: yes("qcow2 allocates on write"),
    },
    max_nodes=1,
    snapshot_kind="qcow2 internal",
)

RAW_CAPABILITIES = Capabilities(
    backend="local",
    features={
        **_COMMON,
        **RAW_FILE_ROWS,
        Feature.GROW: yes("truncate", online=False),
        Feature.SHRINK: yes("truncate", online=False),
        Feature.THIN: yes("sparse files"),
    },
    max_nodes=1,
    snapshot_kind="none",
)


class LocalBackend(Backend[LocalConfig]):
    """Image files in ``config.path``: ``NAME.qcow2`` or ``NAME.raw``."""

    kind = "local"
    Config = LocalConfig
    CAPABILITIES = QCOW2_CAPABILITIES

    @property
    def capabilities(self) -> Capabilities:
        return RAW_CAPABILITIES if self.config.format == "raw" else QCOW2_CAPABILITIES

    @property
    def directory(self) -> Path:
        return Path(self.config.path)

    def connect(self) -> None:
        if self.config.format not in FORMATS:
            raise ConfigError(f"store {self.store!r}: format must be one of {', '.join(FORMATS)}")
        if not self.directory.is_dir():
            raise ConfigError(f"store {self.store!r}: directory {self.directory} does not exist "
                              "(run 'hvstore lab up' or create it)")

    # -- lifecycle ----------------------------------------------------------------------------------
    def create(self, name: str, size_bytes: int) -> VolumeInfo:
        if self._find(name):
            raise AlreadyExists(f"volume {self.store}/{name} exists already")
        path = self.directory / f"{name}.{self.config.format}"
        try:  # claim the name atomically; qemu-img create then overwrites our empty file
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise AlreadyExists(f"volume {self.store}/{name} exists already") from None
        try:
            if self.config.format == "raw":
                os.truncate(path, size_bytes)
            else:
                run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size_bytes)])
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return self.info(name)

    def delete(self, name: str, *, force: bool = False) -> None:
        path = self._path(name)
        if not force:
            self._refuse_if_in_use(name, path)
        path.unlink()

    def resize(self, name: str, size_bytes: int, *, shrink: bool = False) -> VolumeInfo:
        path = self._path(name)
        current = self.info(name)
        if size_bytes < current.size_bytes and not shrink:
            raise InvalidArgument(f"{self.store}/{name}: {size_bytes} is smaller than the current size "
                                  f"{current.size_bytes}; shrinking destroys data, pass --shrink")
        if size_bytes < current.size_bytes and current.snapshots:
            raise Busy(f"{self.store}/{name}: cannot shrink a qcow2 image with snapshots; delete them first")
        if path.suffix == ".raw":
            os.truncate(path, size_bytes)
        else:
            run(["qemu-img", "resize", "-q", *(["--shrink"] if shrink else []), "-f", "qcow2", str(path),
                 str(size_bytes)])
        return self.info(name)

    def info(self, name: str) -> VolumeInfo:
        path = self._path(name)
        data = self._qemu_info(path)
        snapshots = tuple(
            SnapshotInfo(s["name"], int(data["virtual-size"]), created=_iso(s.get("date-sec")))
            for s in data.get("snapshots", [])
        )
        backing = data.get("backing-filename")
        return VolumeInfo(
            store=self.store, name=name, size_bytes=int(data["virtual-size"]), format=data["format"],
            used_bytes=int(data.get("actual-size", 0)), parent=backing, snapshots=snapshots,
            details={"path": str(path)},
        )

    def list(self) -> list[VolumeInfo]:
        volumes = []
        for path in sorted(self.directory.iterdir()):
            if path.suffix[1:] in FORMATS and path.is_file():
                try:
                    volumes.append(self.info(path.stem))
                except (NotFound, ToolFailed):
                    continue  # deleted or being created concurrently
        return volumes

    def rename(self, name: str, new_name: str) -> VolumeInfo:
        path = self._path(name)
        if self._find(new_name):
            raise AlreadyExists(f"volume {self.store}/{new_name} exists already")
        target = path.with_name(f"{new_name}{path.suffix}")
        try:  # link + unlink: atomic refusal if the target appeared meanwhile (rename would clobber it)
            os.link(path, target)
        except FileExistsError:
            raise AlreadyExists(f"volume {self.store}/{new_name} exists already") from None
        path.unlink()
        return self.info(new_name)

    # -- snapshots and clones -----------------------------------------------------------------------
    def snapshot(self, name: str, snap: str) -> SnapshotInfo:
        path = self._qcow2_path(name, Feature.SNAPSHOT)
        if any(s.name == snap for s in self.info(name).snapshots):
            raise AlreadyExists(f"snapshot {self.store}/{name}@{snap} exists already")
        run(["qemu-img", "snapshot", "-c", snap, str(path)])
        return next(s for s in self.info(name).snapshots if s.name == snap)

    def rollback(self, name: str, snap: str) -> None:
        path = self._qcow2_path(name, Feature.ROLLBACK)
        self._require_snapshot(name, snap)
        run(["qemu-img", "snapshot", "-a", snap, str(path)])

    def delete_snapshot(self, name: str, snap: str) -> None:
        path = self._qcow2_path(name, Feature.SNAPSHOT)
        self._require_snapshot(name, snap)
        run(["qemu-img", "snapshot", "-d", snap, str(path)])

    def clone(self, name: str, snap: str, new_name: str) -> VolumeInfo:
        path = self._qcow2_path(name, Feature.CLONE)
        self._require_snapshot(name, snap)
        if self._find(new_name):
            raise AlreadyExists(f"volume {self.store}/{new_name} exists already")
        target = self.directory / f"{new_name}.qcow2"
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            raise AlreadyExists(f"volume {self.store}/{new_name} exists already") from None
        try:
            run(["qemu-img", "convert", "-U", "-f", "qcow2", "-l", f"snapshot.name={snap}", "-O", "qcow2",
                 str(path), str(target)], timeout_s=24 * 3600)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return self.info(new_name)

    # -- data path ----------------------------------------------------------------------------------
    def open(self, name: str, *, writable: bool = False) -> BlockIO:
        path = self._path(name)
        if path.suffix == ".raw":
            return FileBlockIO(path, writable=writable)
        return QemuNbdBlockIO(str(path), "qcow2", writable=writable)

    def uri(self, name: str, *, host: str | None = None) -> str:
        return str(self._path(name))

    def qemu_format(self, name: str) -> str:
        return self._path(name).suffix[1:]

    def disk_xml(self, name: str, *, target: str = "vda", host: str | None = None) -> str:
        return (
            "<disk type='file' device='disk'>"
            f"<driver name='qemu' type='{self.qemu_format(name)}' cache='none' io='native'/>"
            f"<source file={quoteattr(self.uri(name))}/>"
            f"<target dev={quoteattr(target)} bus='virtio'/>"
            "</disk>"
        )

    def pool_xml(self) -> str:
        return (
            f"<pool type='dir'><name>{self.store}</name>"
            f"<target><path>{self.directory}</path></target></pool>"
        )

    # -- helpers ------------------------------------------------------------------------------------
    def _find(self, name: str) -> Path | None:
        for fmt in FORMATS:
            path = self.directory / f"{name}.{fmt}"
            if path.exists():
                return path
        return None

    def _path(self, name: str) -> Path:
        path = self._find(name)
        if path is None:
            raise self._not_found(name)
        return path

    def _qcow2_path(self, name: str, feature: Feature) -> Path:
        path = self._path(name)
        if path.suffix != ".qcow2":
            raise InvalidArgument(f"{self.store}/{name} is a raw file: {RAW_CAPABILITIES.features[feature].note}")
        return path

    def _require_snapshot(self, name: str, snap: str) -> None:
        if not any(s.name == snap for s in self.info(name).snapshots):
            raise self._not_found(name, snap)

    def _qemu_info(self, path: Path) -> dict[str, Any]:
        try:
            done = run(["qemu-img", "info", "-U", "--output=json", str(path)])
        except ToolFailed as exc:
            if not path.exists():
                raise self._not_found(path.stem) from None
            raise exc
        return json.loads(done.stdout)

    def _refuse_if_in_use(self, name: str, path: Path) -> None:
        # QEMU holds OFD locks on images it has open: opening without -U fails while a VM uses it.
        done = run(["qemu-img", "info", "--output=json", str(path)], check=False)
        if done.returncode != 0 and "lock" in done.stderr:
            raise Busy(f"volume {self.store}/{name} is open in QEMU (image locked); stop its VM or pass --force")
        for other in self.directory.iterdir():
            if other != path and other.suffix == ".qcow2":
                backing = self._qemu_info(other).get("backing-filename")
                if backing and Path(backing).name == path.name:
                    raise Busy(f"volume {self.store}/{name} is the backing file of {other.stem}; delete that first")


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()
