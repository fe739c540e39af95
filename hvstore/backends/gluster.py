"""GlusterFS: volumes are image files (``NAME.qcow2`` or ``NAME.raw``) in one directory of a Gluster volume.

- Needs: libgfapi0 (namespace operations and raw I/O in this process, through ``hvstore.protocols.gfapi``:
  one long-lived mount per process, never unmounted), qemu-img/qemu-nbd for qcow2, and for qcow2 a FUSE
  mount of the volume on this host (``fuse_mount``; the lab runs one per volume). Why the FUSE mount:
  every QEMU tool that opens ``gluster://`` pays ~10 s of ``glfs_fini`` when it exits (qemu-img create
  21 s, info 10 s), on the mount each call costs ~0.02 s. Without ``fuse_mount`` the tools use
  ``gluster://`` and are that slow. VMs (``disk_xml``) always use QEMU's own gluster client.
- Snapshots are qcow2 **internal** snapshots (``qemu-img snapshot``) and a clone is a **full copy** of a
  snapshot (``qemu-img convert -l``). Chosen over backing-file chains because a volume stays one file:
  rename, delete and disk_xml need not know about chains spread over the volume, a delete never has to
  find dependants another host created, and a snapshot costs ~20 ms of metadata. The price: snapshot and
  rollback are offline (QEMU must not have the image open) and a clone copies the allocated data.
  raw volumes have no snapshots (capability table per ``format``).
- raw I/O (import/export/verify) is pread/pwrite through libgfapi, sparse-aware (SEEK_DATA); qcow2 goes
  through a private qemu-nbd on the FUSE path.
- ``delete`` refuses (Busy) an image a QEMU on a FUSE path of this volume holds (QEMU's OFD locks travel
  through FUSE to the bricks). QEMU on ``gluster://`` takes no lock at all: nothing on the storage side
  says a VM uses an image, which is why ``hvstore attach`` pairs every disk with a lockd lease.
- Fencing: none exists. Gluster has no client blocklist and its leases do not fence (an ex-holder can
  still write), so lockd relies on the holder's self-fence and the taker waits a full TTL.
- Quorum: on a replica-3 volume with ``cluster.quorum-type auto`` a client that reaches only a minority of
  bricks gets ENOTCONN on writes (and reads); this backend reports that as BackendUnavailable.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar
from xml.sax.saxutils import quoteattr

from hvstore.backends.base import Backend, BlockIO, StoreConfig, option
from hvstore.backends.image_files import QCOW2_FILE_ROWS, RAW_FILE_ROWS
from hvstore.errors import (
    AlreadyExists,
    BackendUnavailable,
    Busy,
    ConfigError,
    HvstoreError,
    InvalidArgument,
    NotFound,
    ToolFailed,
)
from hvstore.model import Capabilities, Feature, SnapshotInfo, VolumeInfo, no, yes
from hvstore.protocols import gfapi
from hvstore.protocols.nbd import QemuNbdBlockIO
from hvstore.run import run

FORMATS = ("qcow2", "raw")
DEFAULT_PORT = gfapi.DEFAULT_PORT
COPY_TIMEOUT_S = 24 * 3600
SECTOR = 512
# errnos meaning "the volume cannot serve this now" rather than "this request is wrong"
_UNAVAILABLE = {errno.ENOTCONN, errno.EIO, errno.EROFS, errno.ESTALE, errno.ETIMEDOUT, errno.ECONNREFUSED}


@dataclass(frozen=True)
class GlusterConfig(StoreConfig):
    volume: str = option(help="Gluster volume holding the image files")
    server: str = option("127.0.0.1", help="host whose glusterd serves the volfile (this host and QEMU connect)")
    port: int = option(DEFAULT_PORT, help="glusterd's port")
    directory: str = option("images", help="directory inside the volume that holds the image files")
    format: str = option("qcow2", help="image format of new volumes: qcow2 (snapshots) or raw")
    fuse_mount: str = option("", help="where this volume is FUSE-mounted on this host, for qemu-img/qemu-nbd "
                                      "(~0.02 s per call instead of ~10 s on gluster://); empty: use gluster://")
    gfapi_log: str = option("/dev/null", help="log file of this process's libgfapi client")


_COMMON: dict[Feature, Any] = {
    Feature.CREATE: yes(),
    Feature.DELETE: yes("refused while a QEMU on the FUSE mount holds the image; QEMU on gluster:// takes no lock"),
    Feature.RENAME: yes("link + unlink through libgfapi (atomic, never clobbers)", online=False),
    Feature.REPLICATION: yes("whatever the Gluster volume is: replica N with client quorum "
                             "(lab store 'gluster': replica 3, quorum auto); distribute keeps one copy"),
    Feature.FENCING: no("Gluster cannot cut a client off (no blocklist; leases do not fence): "
                        "lockd relies on the holder's self-fence and waits a full TTL"),
    Feature.SHARED_ACCESS: yes("every host reaches the volume over the network; lockd serialises writers"),
    Feature.LIBVIRT_POOL: yes("libvirt gluster pool"),
}

QCOW2_CAPABILITIES = Capabilities(
    backend="gluster",
    features={
        **_COMMON,
        **QCOW2_FILE_ROWS,
        Feature.GROW: yes("qemu-img resize on the FUSE mount; online only through QEMU's block_resize",
                          online=False),
        Feature.SNAPSHOT: yes("qcow2 internal snapshot (qemu-img on the FUSE mount)", online=False),
        Feature.IMPORT_EXPORT: yes("through qemu-nbd on the FUSE mount"),
        Feature.THIN: yes("qcow2 allocates on write; sparse files on the bricks"),
    },
    max_nodes=None,
    snapshot_kind="qcow2 internal",
)

RAW_CAPABILITIES = Capabilities(
    backend="gluster",
    features={
        **_COMMON,
        **RAW_FILE_ROWS,
        Feature.GROW: yes("ftruncate through libgfapi", online=False),
        Feature.SHRINK: yes("ftruncate through libgfapi", online=False),
        Feature.IMPORT_EXPORT: yes("libgfapi pread/pwrite, sparse-aware (SEEK_DATA)"),
        Feature.THIN: yes("sparse files on the bricks"),
    },
    max_nodes=None,
    snapshot_kind="none",
)


class GlusterBackend(Backend[GlusterConfig]):
    """Image files ``/<directory>/NAME.<format>`` in Gluster volume ``config.volume``."""

    kind = "gluster"
    Config = GlusterConfig
    CAPABILITIES: ClassVar[Capabilities] = QCOW2_CAPABILITIES

    def __init__(self, store: str, config: GlusterConfig) -> None:
        super().__init__(store, config)
        self._mount: gfapi.GlusterMount | None = None

    @property
    def capabilities(self) -> Capabilities:
        return RAW_CAPABILITIES if self.config.format == "raw" else QCOW2_CAPABILITIES

    # -- connection ---------------------------------------------------------------------------------
    def connect(self) -> None:
        if self.config.format not in FORMATS:
            raise ConfigError(f"store {self.store!r}: format must be one of {', '.join(FORMATS)}")
        try:
            mount = gfapi.mount(self.config.volume, server=self.config.server, port=self.config.port,
                                log_file=self.config.gfapi_log)
        except gfapi.GlusterUnavailable as exc:
            raise BackendUnavailable(f"store {self.store}: {exc}") from None
        with self._errors("images directory"):
            mount.makedirs(self._dir)
        self._mount = mount

    def close(self) -> None:
        """Forget the mount; the process-wide mount itself stays (unmounting costs ~10 s)."""
        self._mount = None

    @property
    def mount(self) -> gfapi.GlusterMount:
        if self._mount is None:
            self.connect()
        assert self._mount is not None
        return self._mount

    # -- lifecycle ----------------------------------------------------------------------------------
    def create(self, name: str, size_bytes: int) -> VolumeInfo:
        fmt = self.config.format
        path = self._claim(name, fmt)
        try:
            if fmt == "raw":
                with self._errors(name), self.mount.open(path, os.O_RDWR) as file:
                    file.ftruncate(size_bytes)
                    file.fsync()
            else:
                run(["qemu-img", "create", "-q", "-f", "qcow2", self._tool_path(path), str(size_bytes)])
                self._pad_to_sector(path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.mount.unlink(path)
            raise
        return self.info(name)

    def delete(self, name: str, *, force: bool = False) -> None:
        path, _fmt = self._locate(name)
        if not force:
            self._refuse_if_in_use(name, path)
        with self._errors(name):
            self.mount.unlink(path)

    def resize(self, name: str, size_bytes: int, *, shrink: bool = False) -> VolumeInfo:
        path, fmt = self._locate(name)
        current = self.info(name)
        if size_bytes < current.size_bytes and not shrink:
            raise InvalidArgument(f"{self.store}/{name}: {size_bytes} is smaller than the current size "
                                  f"{current.size_bytes}; shrinking destroys data, pass --shrink")
        if size_bytes < current.size_bytes and current.snapshots:
            raise Busy(f"{self.store}/{name}: cannot shrink a qcow2 image with snapshots; delete them first")
        if fmt == "raw":
            with self._errors(name), self.mount.open(path, os.O_RDWR) as file:
                file.ftruncate(size_bytes)
                file.fsync()
        else:
            run(["qemu-img", "resize", "-q", *(["--shrink"] if shrink else []), "-f", "qcow2",
                 self._tool_path(path), str(size_bytes)])
            self._pad_to_sector(path)
        return self.info(name)

    def info(self, name: str) -> VolumeInfo:
        path, fmt = self._locate(name)
        details = {"path": path, "gluster_volume": self.config.volume}
        if fmt == "raw":
            with self._errors(name):
                st = self.mount.stat(path)
            return VolumeInfo(self.store, name, st.size_bytes, "raw", used_bytes=st.allocated_bytes,
                              details=details)
        data = self._qemu_info(name, path)
        size = int(data["virtual-size"])
        # qemu-img reports no per-snapshot disk size; internal snapshots share the image's virtual size
        snapshots = tuple(SnapshotInfo(s["name"], size, created=_iso(s.get("date-sec")))
                          for s in data.get("snapshots", []))
        return VolumeInfo(self.store, name, size, "qcow2", used_bytes=int(data.get("actual-size", 0)),
                          parent=data.get("backing-filename"), snapshots=snapshots, details=details)

    def list(self) -> list[VolumeInfo]:
        with self._errors("images directory"):
            entries = self.mount.listdir(self._dir)
        volumes = []
        for entry in entries:
            stem, _, suffix = entry.rpartition(".")
            if suffix not in FORMATS or not stem:
                continue
            try:
                volumes.append(self.info(stem))
            except (NotFound, ToolFailed):
                continue  # deleted or being created concurrently
        return sorted(volumes, key=lambda v: v.name)

    def rename(self, name: str, new_name: str) -> VolumeInfo:
        path, fmt = self._locate(name)
        if self._find(new_name):
            raise AlreadyExists(f"volume {self.store}/{new_name} exists already")
        target = self._file(new_name, fmt)
        with self._errors(new_name):  # link refuses an existing target atomically; rename would clobber it
            self.mount.link(path, target)
        with self._errors(name):
            self.mount.unlink(path)
        return self.info(new_name)

    # -- snapshots and clones -----------------------------------------------------------------------
    def snapshot(self, name: str, snap: str) -> SnapshotInfo:
        path = self._qcow2_path(name, Feature.SNAPSHOT)
        if any(s.name == snap for s in self.info(name).snapshots):
            raise AlreadyExists(f"snapshot {self.store}/{name}@{snap} exists already")
        run(["qemu-img", "snapshot", "-c", snap, self._tool_path(path)])
        self._pad_to_sector(path)
        return next(s for s in self.info(name).snapshots if s.name == snap)

    def rollback(self, name: str, snap: str) -> None:
        path = self._qcow2_path(name, Feature.ROLLBACK)
        self._require_snapshot(name, snap)
        run(["qemu-img", "snapshot", "-a", snap, self._tool_path(path)])
        self._pad_to_sector(path)

    def delete_snapshot(self, name: str, snap: str) -> None:
        path = self._qcow2_path(name, Feature.SNAPSHOT)
        self._require_snapshot(name, snap)
        run(["qemu-img", "snapshot", "-d", snap, self._tool_path(path)])
        self._pad_to_sector(path)

    def clone(self, name: str, snap: str, new_name: str) -> VolumeInfo:
        path = self._qcow2_path(name, Feature.CLONE)
        self._require_snapshot(name, snap)
        target = self._claim(new_name, "qcow2")
        try:
            run(["qemu-img", "convert", "-U", "-f", "qcow2", "-l", f"snapshot.name={snap}", "-O", "qcow2",
                 self._tool_path(path), self._tool_path(target)], timeout_s=COPY_TIMEOUT_S)
            self._pad_to_sector(target)
        except BaseException:
            with contextlib.suppress(OSError):
                self.mount.unlink(target)
            raise
        return self.info(new_name)

    # -- data path ----------------------------------------------------------------------------------
    def open(self, name: str, *, writable: bool = False) -> BlockIO:
        path, fmt = self._locate(name)
        if fmt == "raw":
            with self._errors(name):
                file = self.mount.open(path, os.O_RDWR if writable else os.O_RDONLY)
            return GfapiBlockIO(file, writable=writable, unavailable=self._unavailable)
        return _SectorPaddedNbdBlockIO(self._tool_path(path), "qcow2", writable=writable,
                                       after_close=lambda: self._pad_to_sector(path) if writable else None)

    def uri(self, name: str, *, host: str | None = None) -> str:
        path, _fmt = self._locate(name)
        port = "" if self.config.port == DEFAULT_PORT else f":{self.config.port}"
        return f"gluster://{self.config.server}{port}/{self.config.volume}{path}"

    def qemu_format(self, name: str) -> str:
        return self._locate(name)[1]

    def disk_xml(self, name: str, *, target: str = "vda", host: str | None = None) -> str:
        path, fmt = self._locate(name)
        return (
            "<disk type='network' device='disk'>"
            f"<driver name='qemu' type='{fmt}' cache='none'/>"
            f"<source protocol='gluster' name={quoteattr(self.config.volume + path)}>"
            f"<host name={quoteattr(self.config.server)} port='{self.config.port}'/>"
            "</source>"
            f"<target dev={quoteattr(target)} bus='virtio'/>"
            "</disk>"
        )

    def pool_xml(self) -> str:
        return (
            "<pool type='gluster'>"
            f"<name>{self.store}</name>"
            "<source>"
            f"<host name={quoteattr(self.config.server)} port='{self.config.port}'/>"
            f"<dir path={quoteattr(self._dir)}/>"
            f"<name>{self.config.volume}</name>"
            "</source>"
            "</pool>"
        )

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def _dir(self) -> str:
        return "/" + self.config.directory.strip("/")

    def _file(self, name: str, fmt: str) -> str:
        return f"{self._dir}/{name}.{fmt}"

    def _find(self, name: str) -> tuple[str, str] | None:
        for fmt in FORMATS:
            path = self._file(name, fmt)
            with self._errors(name):
                if self.mount.exists(path):
                    return path, fmt
        return None

    def _locate(self, name: str) -> tuple[str, str]:
        found = self._find(name)
        if found is None:
            raise self._not_found(name)
        return found

    def _claim(self, name: str, fmt: str) -> str:
        """Create an empty ``NAME.fmt`` exclusively (O_EXCL): two creators of one name cannot both win."""
        if self._find(name):
            raise AlreadyExists(f"volume {self.store}/{name} exists already")
        path = self._file(name, fmt)
        try:
            with self.mount.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600):
                pass
        except FileExistsError:
            raise AlreadyExists(f"volume {self.store}/{name} exists already") from None
        except OSError as exc:
            raise self._unavailable(name, exc) from None
        return path

    def _qcow2_path(self, name: str, feature: Feature) -> str:
        path, fmt = self._locate(name)
        if fmt != "qcow2":
            raise InvalidArgument(f"{self.store}/{name} is a raw file: {RAW_CAPABILITIES.features[feature].note}")
        return path

    def _require_snapshot(self, name: str, snap: str) -> None:
        if not any(s.name == snap for s in self.info(name).snapshots):
            raise self._not_found(name, snap)

    def _tool_path(self, path: str) -> str:
        """What qemu-img/qemu-nbd open for ``path``: the FUSE path when configured, else gluster://."""
        if not self.config.fuse_mount:
            port = "" if self.config.port == DEFAULT_PORT else f":{self.config.port}"
            return f"gluster://{self.config.server}{port}/{self.config.volume}{path}"
        mountpoint = self.config.fuse_mount.rstrip("/")
        if not _is_mountpoint(mountpoint):
            raise BackendUnavailable(f"store {self.store}: {mountpoint} is not mounted (FUSE client gone?); "
                                     "run 'hvstore lab up gluster' or clear fuse_mount")
        return mountpoint + path

    def _pad_to_sector(self, path: str) -> None:
        """Extend the image file to a multiple of 512 bytes after a QEMU tool wrote it through FUSE.

        QEMU's gluster driver reads in 512-byte units and fails any short read with EIO ("Partial
        read/write - fail it", block/gluster.c), so a qcow2 whose file ends mid-sector (qemu-img create on
        a file path leaves a 16 MiB image at 196616 bytes: the L1 table's 8 bytes) cannot be opened over
        gluster:// at all. qemu-img on gluster:// pads to the sector itself. The bytes added lie beyond
        every cluster the image references, so qcow2 ignores them. Runs on the FUSE path (attribute
        caching off) so the size is current; only ever extends.
        """
        if not self.config.fuse_mount:
            return
        tool_path = self._tool_path(path)
        try:
            size = os.stat(tool_path).st_size
            if size % SECTOR:
                os.truncate(tool_path, size + SECTOR - size % SECTOR)
        except FileNotFoundError:
            return  # deleted meanwhile: nothing left to pad

    def _qemu_info(self, name: str, path: str) -> dict[str, Any]:
        try:
            done = run(["qemu-img", "info", "-U", "--output=json", self._tool_path(path)])
        except ToolFailed:
            if self._find(name) is None:
                raise self._not_found(name) from None
            raise
        return json.loads(done.stdout)

    def _refuse_if_in_use(self, name: str, path: str) -> None:
        if not self.config.fuse_mount:
            return  # QEMU on gluster:// takes no locks: nothing to ask
        # QEMU holds OFD locks on images it has open; through FUSE they reach the bricks, so qemu-img
        # without -U fails on an image any QEMU on any FUSE mount of this volume has open.
        done = run(["qemu-img", "info", "--output=json", self._tool_path(path)], check=False)
        if done.returncode != 0 and "lock" in done.stderr:
            raise Busy(f"volume {self.store}/{name} is open in QEMU (image locked); stop its user or pass --force")

    @contextlib.contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """libgfapi's OSErrors as hvstore errors naming the store and volume."""
        try:
            yield
        except FileNotFoundError:
            raise self._not_found(name) from None
        except FileExistsError:
            raise AlreadyExists(f"volume {self.store}/{name} exists already") from None
        except OSError as exc:
            raise self._unavailable(name, exc) from None

    def _unavailable(self, name: str, exc: OSError) -> HvstoreError:
        if exc.errno in _UNAVAILABLE:
            return BackendUnavailable(f"gluster volume {self.config.volume} ({self.store}/{name}): "
                                      f"{os.strerror(exc.errno or errno.EIO)}; bricks down or quorum lost? "
                                      "see 'hvstore lab status gluster'")
        return HvstoreError(f"gluster {self.store}/{name}: {exc}")


class GfapiBlockIO(BlockIO):
    """A raw image file through libgfapi: 64-bit pread/pwrite, fsync on flush, SEEK_DATA extents."""

    def __init__(self, file: gfapi.GlusterFile, *, writable: bool,
                 unavailable: Callable[[str, OSError], HvstoreError] | None = None) -> None:
        self.file = file
        self.writable = writable
        self._size = file.size()
        self._unavailable = unavailable

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        with self._errors():
            data = self.file.pread(offset, length)
        return data + bytes(length - len(data))  # cannot be short inside the file; be exact anyway

    def write(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise InvalidArgument(f"{self.file.path} is open read-only")
        self._check_range(offset, len(data))
        with self._errors():
            self.file.pwrite(offset, data)

    def flush(self) -> None:
        with self._errors():
            self.file.fsync()

    def close(self) -> None:
        try:
            if self.writable:
                self.flush()
        finally:
            with self._errors():
                self.file.close()

    def allocated_extents(self) -> Iterator[tuple[int, int]]:
        with self._errors():
            yield from self.file.data_extents()

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise InvalidArgument(f"{self.file.path}: range {offset}+{length} outside the volume ({self._size} bytes)")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            if self._unavailable is not None:
                raise self._unavailable(self.file.path, exc) from None
            raise


class _SectorPaddedNbdBlockIO(QemuNbdBlockIO):
    """qemu-nbd on the image's FUSE path that runs ``after_close`` once qemu-nbd has exited."""

    def __init__(self, filename: str, fmt: str, *, writable: bool, after_close: Callable[[], None]) -> None:
        self._after_close = after_close
        super().__init__(filename, fmt, writable=writable)

    def close(self) -> None:
        was_open = getattr(self, "_conn", None) is not None
        super().close()
        if was_open:
            self._after_close()


def _is_mountpoint(path: str) -> bool:
    try:
        return os.path.ismount(path) and os.statvfs(path) is not None
    except OSError:  # a dead FUSE client: "Transport endpoint is not connected"
        return False


def _iso(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()
