"""Ceph RBD: volumes are format 2 RBD images in one pool, through python3-rados/python3-rbd (librbd).

- Needs: the Debian packages python3-rados and python3-rbd (Ceph 16.2), a ceph.conf naming the monitors
  and a cephx keyring for ``user``. QEMU opens the same images with its own librbd client
  (``uri``/``disk_xml``); keys never appear in either, only keyring paths and libvirt secret usage names.
- Images are created with ``image_features`` (Ceph's default set: layering, exclusive-lock, object-map,
  fast-diff, deep-flatten); object-map makes delete, flatten and sparse export cost what is allocated.
- Clones: the parent snapshot is protected automatically before ``clone`` and unprotected again when
  its last snapshot user is gone (``delete_snapshot``/``delete``), so clone format 1 and 2 both work.
- ``delete`` refuses (Busy) an image whose snapshots have clones or that a client has open (a watcher on
  its header). ``force=True`` **flattens the clones** (they keep their data and become independent; it
  never deletes another volume) and **blocklists the open clients** (``osd blocklist add``, which cuts
  that client off every image it has open) before deleting.
- Fencing: a host's QEMU is cut off an image by blocklisting the image's watchers. ``watchers`` lists
  them, ``identify_watchers`` maps each to its cephx entity through the monitors' session lists (with one
  cephx user per host, ``client.hostb`` names the host), ``fence_watchers`` blocklists them and waits
  until every up OSD applied that osdmap and the watches are gone. ``fence(name, dead_host=...)`` (the
  backend verb lockd calls) does all three for the watchers of ``client.<dead_host>`` only.
- Cannot: shrink without ``shrink=True``; rename or roll back an image a client has open (Busy).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import rados
import rbd

from hvstore.backends.base import Backend, BlockIO, StoreConfig, option
from hvstore.backends.rbd_io import UNAVAILABLE, RbdBlockIO, has_fast_diff, reason
from hvstore.errors import (
    AlreadyExists,
    BackendUnavailable,
    Busy,
    ConfigError,
    HvstoreError,
    InvalidArgument,
    NotFound,
)
from hvstore.model import Capabilities, Feature, FenceResult, LibvirtSecret, SnapshotInfo, VolumeInfo, yes
from hvstore.tools.ceph import conf_value, parse_mon_host, qemu_rbd_spec

DEFAULT_FEATURES = "layering,exclusive-lock,object-map,fast-diff,deep-flatten"
# After ``osd blocklist add``: every OSD applies the new osdmap (77-455 ms measured) and drops the
# victim's watches. Far longer means an OSD is stuck.
FENCE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class RbdConfig(StoreConfig):
    pool: str = option(help="RADOS pool holding the images (needs the rbd application enabled)")
    conf: str = option(help="path of the ceph.conf naming the monitors")
    user: str = option("admin", help="cephx user (without 'client.') hvstore itself connects as")
    keyring: str = option("", help="keyring file for 'user'; empty: the keyring ceph.conf names")
    host_keyring_dir: str = option(
        "", help="directory with ceph.client.<host>.keyring per host identity (uri/disk_xml host=...)")
    monitors: list[str] = option(  # noqa: RUF009 - a tuple default, immutable
        (), help="HOST:PORT (v1 protocol) of each monitor for libvirt XML; empty: read mon_host from conf")
    secret_usage: str = option(
        "", help="libvirt ceph secret usage name; {user} is replaced; empty: 'hvstore-STORE-{user}'")
    image_features: str = option(DEFAULT_FEATURES, help="rbd features of new images (comma separated)")
    connect_timeout_s: float = option(5.0, help="seconds to reach the monitors before giving up")
    op_timeout_s: float = option(120.0, help="seconds a single monitor or OSD request may take")


_GROW_NOTE = "online (QEMU needs block_resize to see it)"
CAPABILITIES = Capabilities(
    backend="rbd",
    features={
        Feature.CREATE: yes("format 2 image"),
        Feature.DELETE: yes("refused with clones or open clients unless force (flattens, blocklists)"),
        Feature.GROW: yes(_GROW_NOTE, online=True),
        Feature.SHRINK: yes("needs shrink=True; data beyond the new size is lost", online=False),
        Feature.SNAPSHOT: yes("crash-consistent while open", online=True),
        Feature.ROLLBACK: yes("image must not be open", online=False),
        Feature.CLONE: yes("copy-on-write from a snapshot (protected automatically)", online=True),
        Feature.FLATTEN: yes("copies the parent's data into the clone", online=True),
        Feature.RENAME: yes("image must not be open", online=False),
        Feature.IMPORT_EXPORT: yes("sparse: export reads only allocated objects"),
        Feature.THIN: yes("objects are allocated on first write"),
        Feature.REPLICATION: yes("by the pool's size (the lab: 3 OSDs, size 3, min_size 2)"),
        Feature.FENCING: yes("blocklist the image's watchers (osd blocklist)"),
        Feature.SHARED_ACCESS: yes("any number of clients may open an image; nothing coordinates them"),
        Feature.LIBVIRT_POOL: yes("<pool type='rbd'>"),
    },
    max_nodes=None,
    snapshot_kind="rbd snapshot",
)


@dataclass(frozen=True)
class Watcher:
    """A client that has an image open: ``addr`` is what ``osd blocklist add`` takes."""

    addr: str
    client_id: int  # the client's global id, e.g. 4129 for "client.4129"
    cookie: int
    entity: str | None = None  # the cephx entity ("client.hostb") once identified, see identify_watchers


class RbdBackend(Backend[RbdConfig]):
    kind: ClassVar[str] = "rbd"
    Config: ClassVar[type[StoreConfig]] = RbdConfig
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES

    def __init__(self, store: str, config: RbdConfig) -> None:
        super().__init__(store, config)
        self._cluster: rados.Rados | None = None
        self._ioctx: rados.Ioctx | None = None

    # -- connection ---------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect as ``client.<user>`` and open the pool. BackendUnavailable within
        ``connect_timeout_s`` when no monitor answers or the key is refused."""
        if self._ioctx is not None:
            return
        cfg = self.config
        if not Path(cfg.conf).is_file():
            raise ConfigError(f"store {self.store!r}: ceph.conf {cfg.conf} does not exist")
        overrides = {
            # Ceph takes these as whole seconds ("5.0" is rejected).
            "client_mount_timeout": str(math.ceil(cfg.connect_timeout_s)),
            "rados_mon_op_timeout": str(math.ceil(cfg.op_timeout_s)),
            "rados_osd_op_timeout": str(math.ceil(cfg.op_timeout_s)),
        }
        if cfg.keyring:
            overrides["keyring"] = cfg.keyring
        cluster = rados.Rados(conffile=cfg.conf, rados_id=cfg.user, conf=overrides)
        try:
            cluster.connect(timeout=math.ceil(cfg.connect_timeout_s))
        except rados.Error as exc:
            cluster.shutdown()
            raise BackendUnavailable(
                f"store {self.store!r}: cannot reach Ceph monitors {self._mon_text()} as client.{cfg.user} "
                f"within {cfg.connect_timeout_s:g} s ({reason(exc)}); is the cluster up ('hvstore lab up')?"
            ) from None
        try:
            self._ioctx = cluster.open_ioctx(cfg.pool)
        except rados.ObjectNotFound:
            cluster.shutdown()
            raise ConfigError(f"store {self.store!r}: pool {cfg.pool!r} does not exist in the cluster") from None
        except rados.Error as exc:
            cluster.shutdown()
            raise BackendUnavailable(f"store {self.store!r}: cannot open pool {cfg.pool!r}: {reason(exc)}") from None
        self._cluster = cluster

    def close(self) -> None:
        if self._ioctx is not None:
            self._ioctx.close()
            self._ioctx = None
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None

    @property
    def ioctx(self) -> rados.Ioctx:
        if self._ioctx is None:
            self.connect()
        assert self._ioctx is not None
        return self._ioctx

    # -- lifecycle ----------------------------------------------------------------------------------
    def create(self, name: str, size_bytes: int) -> VolumeInfo:
        with self._errors(name):
            rbd.RBD().create(self.ioctx, name, size_bytes, old_format=False, features=self._features())
        return self.info(name)

    def delete(self, name: str, *, force: bool = False) -> None:
        """Delete the image and its snapshots. Busy if a snapshot has clones or a client has the image
        open; with ``force`` the clones are flattened and the open clients blocklisted first."""
        with self._errors(name), self._image(name, read_only=True) as image:
            snaps = [s["name"] for s in image.list_snaps()]
            children = self._children(image, snaps)
            watchers = self._watchers(image)
        if not force:
            if children:
                raise Busy(f"volume {self.store}/{name} has clones ({', '.join(children)}): flatten or "
                           f"delete them first, or delete with --force (flattens them)")
            if watchers:
                raise Busy(f"volume {self.store}/{name} is open by {len(watchers)} client(s) "
                           f"({', '.join(w.addr for w in watchers)}): close it first, or delete with --force "
                           f"(blocklists those clients)")
        elsewhere = [c for c in children if "/" in c]
        if elsewhere:
            raise Busy(f"volume {self.store}/{name} has clones in other pools ({', '.join(elsewhere)}): "
                       f"flatten or delete them there first")
        for child in children:
            self.flatten(child)
        if watchers:
            self.fence_watchers(name, watchers)
        with self._errors(name):
            for snap in snaps:
                self._remove_snap(name, snap)
            rbd.RBD().remove(self.ioctx, name)

    def resize(self, name: str, size_bytes: int, *, shrink: bool = False) -> VolumeInfo:
        with self._errors(name), self._image(name) as image:
            current = image.size()
            if size_bytes < current and not shrink:
                raise InvalidArgument(
                    f"volume {self.store}/{name} is {current} bytes; shrinking to {size_bytes} destroys data: "
                    f"pass --shrink if you mean it")
            if size_bytes != current:
                image.resize(size_bytes, allow_shrink=shrink)
        return self.info(name)

    def info(self, name: str) -> VolumeInfo:
        with self._errors(name), self._image(name, read_only=True) as image:
            return self._info(name, image, with_usage=True)

    def list(self) -> list[VolumeInfo]:
        with self._errors(""):
            names = sorted(rbd.RBD().list(self.ioctx))
        volumes = []
        for name in names:
            try:
                with self._errors(name), self._image(name, read_only=True) as image:
                    volumes.append(self._info(name, image, with_usage=False))
            except NotFound:
                continue  # deleted between list and open
        return volumes

    def rename(self, name: str, new_name: str) -> VolumeInfo:
        with self._errors(name):
            with self._image(name, read_only=True) as image:
                self._refuse_open(name, image, "rename")
            try:
                rbd.RBD().rename(self.ioctx, name, new_name)
            except rbd.ImageExists:
                raise AlreadyExists(f"volume {self.store}/{new_name} already exists") from None
        return self.info(new_name)

    # -- snapshots and clones -----------------------------------------------------------------------
    def snapshot(self, name: str, snap: str) -> SnapshotInfo:
        with self._errors(name, snap), self._image(name) as image:
            try:
                image.create_snap(snap)
            except rbd.ImageExists:
                raise AlreadyExists(f"snapshot {self.store}/{name}@{snap} already exists") from None
            return next(s for s in self._snapshots(image) if s.name == snap)

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        with self._errors(name), self._image(name, read_only=True) as image:
            return self._snapshots(image)

    def rollback(self, name: str, snap: str) -> None:
        with self._errors(name, snap), self._image(name) as image:
            self._require_snap(name, image, snap)
            self._refuse_open(name, image, "roll back", own_handle=True)
            image.rollback_to_snap(snap)

    def delete_snapshot(self, name: str, snap: str) -> None:
        with self._errors(name, snap):
            with self._image(name, read_only=True) as image:
                self._require_snap(name, image, snap)
                children = self._children(image, [snap])
            if children:
                raise Busy(f"snapshot {self.store}/{name}@{snap} has clones ({', '.join(children)}): "
                           f"flatten or delete them first")
            self._remove_snap(name, snap)

    def clone(self, name: str, snap: str, new_name: str) -> VolumeInfo:
        """Copy-on-write clone of ``name@snap``; protects the snapshot first (clone format 1 needs it)."""
        with self._errors(name, snap):
            with self._image(name) as parent:
                self._require_snap(name, parent, snap)
                protected_here = not parent.is_protected_snap(snap)
                if protected_here:
                    parent.protect_snap(snap)
            try:
                rbd.RBD().clone(self.ioctx, name, snap, self.ioctx, new_name, features=self._features())
            except BaseException as exc:
                if protected_here:
                    with contextlib.suppress(rbd.Error), self._image(name) as parent:
                        parent.unprotect_snap(snap)
                if isinstance(exc, rbd.ImageExists):
                    raise AlreadyExists(f"volume {self.store}/{new_name} already exists") from None
                raise
        return self.info(new_name)

    def flatten(self, name: str) -> VolumeInfo:
        """Copy the parent's data into a clone so it no longer depends on it; no-op for a non-clone."""
        with self._errors(name), self._image(name) as image:
            if _parent_of(image) is not None:
                image.flatten()
        return self.info(name)

    # -- data path ----------------------------------------------------------------------------------
    def open(self, name: str, *, writable: bool = False) -> BlockIO:
        with self._errors(name):
            image = rbd.Image(self.ioctx, name, read_only=not writable)
        return RbdBlockIO(image, f"{self.store}/{name}", writable=writable)

    def uri(self, name: str, *, host: str | None = None) -> str:
        user, keyring = self._identity(host)
        return qemu_rbd_spec(self.config.pool, name, user=user, conf=self.config.conf, keyring=keyring)

    def qemu_format(self, name: str) -> str:
        return "raw"

    def disk_xml(self, name: str, *, target: str = "vda", host: str | None = None) -> str:
        """``<disk type='network'>`` with ``<auth>`` naming a libvirt ceph secret by usage; the key
        itself must be in that secret (never in the XML)."""
        user, _keyring = self._identity(host)
        disk = ET.Element("disk", type="network", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw", cache="none")
        source = ET.SubElement(disk, "source", protocol="rbd", name=f"{self.config.pool}/{name}")
        for mon_host, port in self.monitors():
            ET.SubElement(source, "host", name=mon_host, port=str(port))
        auth = ET.SubElement(disk, "auth", username=user)
        ET.SubElement(auth, "secret", type="ceph", usage=self.secret_usage(user))
        ET.SubElement(disk, "target", dev=target, bus="virtio")
        return ET.tostring(disk, encoding="unicode")

    def libvirt_secrets(self, *, host: str | None = None) -> list[LibvirtSecret]:
        """The ceph secret ``disk_xml(host=host)`` names: the identity's cephx key, read from its keyring
        (libvirt wants the raw key bytes; keyrings hold them base64-encoded)."""
        user, keyring = self._identity(host)
        path = keyring or self._conf_keyring(user)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"store {self.store!r}: cannot read keyring {path}: {exc.strerror}") from None
        encoded = conf_value(text, "key", section=f"client.{user}")
        if not encoded:
            raise ConfigError(f"store {self.store!r}: keyring {path} has no key for client.{user}")
        try:
            value = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise ConfigError(f"store {self.store!r}: the key of client.{user} in {path} is not base64") from None
        return [LibvirtSecret(usage_type="ceph", usage_id=self.secret_usage(user), value=value)]

    def pool_xml(self) -> str:
        pool = ET.Element("pool", type="rbd")
        ET.SubElement(pool, "name").text = f"hvstore-{self.store}"
        source = ET.SubElement(pool, "source")
        ET.SubElement(source, "name").text = self.config.pool
        for mon_host, port in self.monitors():
            ET.SubElement(source, "host", name=mon_host, port=str(port))
        auth = ET.SubElement(source, "auth", type="ceph", username=self.config.user)
        ET.SubElement(auth, "secret", usage=self.secret_usage(self.config.user))
        return ET.tostring(pool, encoding="unicode")

    def secret_usage(self, user: str) -> str:
        """The usage name of the libvirt secret (type ceph) holding ``client.<user>``'s key."""
        template = self.config.secret_usage or f"hvstore-{self.store}-{{user}}"
        return template.replace("{user}", user)

    def monitors(self) -> list[tuple[str, int]]:
        if self.config.monitors:
            return [_host_port(m) for m in self.config.monitors]
        try:
            mon_host = conf_value(Path(self.config.conf).read_text(), "mon_host")
        except OSError as exc:
            raise ConfigError(f"store {self.store!r}: cannot read {self.config.conf}: {exc.strerror}") from None
        if not mon_host:
            raise ConfigError(f"store {self.store!r}: {self.config.conf} has no mon_host; set 'monitors'")
        return parse_mon_host(mon_host)

    # -- fencing (used by lockd and by delete --force) -----------------------------------------------
    def fence(self, name: str, *, dead_host: str, keep_host: str | None = None) -> FenceResult:
        """Blocklist the image's watchers whose cephx entity is ``client.<dead_host>`` (one cephx user per
        host) and return once every up OSD enforces it. Watchers of any other entity (``keep_host``'s new
        QEMU, unidentified ones) are left alone: blocklisting them would cut off a live VM."""
        if keep_host == dead_host:
            raise InvalidArgument(f"refusing to fence {dead_host} while keeping it")
        started = time.monotonic()
        watchers = self.identify_watchers(self.watchers(name))
        victims = [w for w in watchers if w.entity == f"client.{dead_host}"]
        unknown = sum(1 for w in watchers if w.entity is None)
        if victims:
            self.fence_watchers(name, victims)
        note = f"{unknown} watcher(s) of unknown identity left alone" if unknown else ""
        return FenceResult("blocklist watchers", tuple(w.addr for w in victims),
                           round(time.monotonic() - started, 3), note)

    def watchers(self, name: str) -> list[Watcher]:
        """Clients that have the image open (one watch on its header per open image)."""
        with self._errors(name), self._image(name, read_only=True) as image:
            return self._watchers(image)

    def identify_watchers(self, watchers: list[Watcher]) -> list[Watcher]:
        """``watchers`` with ``entity`` filled from the monitors' session lists (``ceph tell mon.*
        sessions``), matching global id and address nonce; with one cephx user per host the entity
        names the host. Needs a user allowed to run ``sessions`` (admin). Unknown: entity stays None."""
        self.connect()
        cluster = self._cluster
        assert cluster is not None
        entities: dict[tuple[int, int], str] = {}
        with self._errors(""):
            for mon in _mon_json(cluster, {"prefix": "mon dump"}).get("mons", []):
                sessions = _mon_json(cluster, {"prefix": "sessions"}, target=mon["name"])
                for session in sessions if isinstance(sessions, list) else []:
                    for addr in session.get("addrs", {}).get("addrvec", []):
                        entities[(int(session.get("global_id", 0)), int(addr.get("nonce", 0)))] = \
                            session.get("entity_name") or None
        return [dataclasses.replace(w, entity=entities.get((w.client_id, _nonce(w.addr)))) for w in watchers]

    def fence_watchers(self, name: str, watchers: list[Watcher], *, expire_s: int = 3600) -> None:
        """Blocklist ``watchers``' client addresses; return once every up OSD has the osdmap carrying the
        blocklist and the watches are gone. Before that a write of the victim could still land on an
        OSD that has not applied the new map (seen in 2 of 10 trials here)."""
        self.connect()
        cluster = self._cluster
        assert cluster is not None
        deadline = time.monotonic() + FENCE_TIMEOUT_S
        with self._errors(name):
            for watcher in watchers:
                cluster.blocklist_add(watcher.addr, expire_s)
            osdmap = _mon_json(cluster, {"prefix": "osd dump"})  # committed: includes the blocklist
            for osd in (o["osd"] for o in osdmap["osds"] if o["up"]):
                while _osd_newest_map(cluster, osd) < osdmap["epoch"]:
                    self._before(deadline, f"osd.{osd} has not applied osdmap {osdmap['epoch']}")
            addrs = {w.addr for w in watchers}
            while addrs & {w.addr for w in self.watchers(name)}:
                self._before(deadline, "blocklisted clients still watch it")

    def _before(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise Busy(f"fencing did not complete within {FENCE_TIMEOUT_S:g} s: {what}")
        time.sleep(0.02)

    # -- private helpers ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, name: str, snap: str | None = None) -> Iterator[None]:
        """Translate librados/librbd exceptions into the hvstore tree, naming the volume."""
        try:
            yield
        except HvstoreError:
            raise
        except (rbd.ImageNotFound, rados.ObjectNotFound):
            raise self._not_found(name, snap) from None
        except (rbd.ImageExists, rados.ObjectExists):
            raise AlreadyExists(f"volume {self.store}/{name} already exists") from None
        except (rbd.ImageBusy, rbd.ImageHasSnapshots, rados.ObjectBusy) as exc:
            raise Busy(f"volume {self.store}/{name} is busy: {reason(exc)}") from None
        except UNAVAILABLE as exc:
            raise BackendUnavailable(f"store {self.store!r}: Ceph did not answer: {reason(exc)}") from None
        except (rbd.Error, rados.Error) as exc:
            what = f"{self.store}/{name}" + (f"@{snap}" if snap else "")
            raise HvstoreError(f"rbd operation on {what} failed: {reason(exc)}") from None

    @contextlib.contextmanager
    def _image(self, name: str, *, read_only: bool = False) -> Iterator[rbd.Image]:
        image = rbd.Image(self.ioctx, name, read_only=read_only)
        try:
            yield image
        finally:
            image.close()

    def _features(self) -> int:
        try:
            return int(rbd.RBD().features_from_string(self.config.image_features))
        except rbd.Error:
            raise ConfigError(f"store {self.store!r}: invalid image_features "
                              f"{self.config.image_features!r}") from None

    def _info(self, name: str, image: rbd.Image, *, with_usage: bool) -> VolumeInfo:
        stat = image.stat()
        parent = _parent_of(image)
        details: dict[str, Any] = {
            "id": image.id(),
            "features": rbd.RBD().features_to_string(image.features()),
            "object_size": stat["obj_size"],
            "pool": self.config.pool,
        }
        if with_usage:
            details["watchers"] = [w.addr for w in self._watchers(image)]
        return VolumeInfo(
            store=self.store, name=name, size_bytes=stat["size"], format="raw",
            used_bytes=_allocated_bytes(image, stat["size"]) if with_usage else None,
            parent=parent, snapshots=tuple(self._snapshots(image)), details=details,
        )

    def _snapshots(self, image: rbd.Image) -> list[SnapshotInfo]:
        snaps = []
        for snap in image.list_snaps():
            try:
                created = image.get_snap_timestamp(snap["id"]).isoformat()
            except rbd.Error:
                created = None
            snaps.append(SnapshotInfo(snap["name"], snap["size"], image.is_protected_snap(snap["name"]), created))
        return snaps

    def _require_snap(self, name: str, image: rbd.Image, snap: str) -> None:
        if not any(s["name"] == snap for s in image.list_snaps()):
            raise self._not_found(name, snap)

    def _children(self, image: rbd.Image, snaps: list[str]) -> list[str]:
        """Names of the clones of any of ``snaps`` (this pool and others the user can see)."""
        children: list[str] = []
        for snap in snaps:
            image.set_snap(snap)
            children.extend(c["image"] if c["pool"] == self.config.pool else f"{c['pool']}/{c['image']}"
                            for c in image.list_children2() if not c.get("trash"))
        image.set_snap(None)
        return sorted(set(children))

    def _watchers(self, image: rbd.Image) -> list[Watcher]:
        return [Watcher(w["addr"], int(w["id"]), int(w["cookie"])) for w in image.watchers_list()]

    def _refuse_open(self, name: str, image: rbd.Image, verb: str, *, own_handle: bool = False) -> None:
        # A writable handle of our own registers one watch too; only other watchers count.
        watchers = self._watchers(image)
        if own_handle and self._cluster is not None:
            ours = {w.addr for w in watchers if w.client_id == self._cluster.get_instance_id()}
            watchers = [w for w in watchers if w.addr not in ours]
        if watchers:
            raise Busy(f"cannot {verb} {self.store}/{name}: it is open by {len(watchers)} client(s) "
                       f"({', '.join(w.addr for w in watchers)}); close it first")

    def _remove_snap(self, name: str, snap: str) -> None:
        with self._image(name) as image:
            if image.is_protected_snap(snap):
                image.unprotect_snap(snap)
            image.remove_snap(snap)

    def _identity(self, host: str | None) -> tuple[str, str | None]:
        """(cephx user, keyring path) for ``host``'s identity, or hvstore's own user."""
        if host is None:
            return self.config.user, self.config.keyring or None
        keyring = None
        if self.config.host_keyring_dir:
            keyring = str(Path(self.config.host_keyring_dir) / f"ceph.client.{host}.keyring")
            if not Path(keyring).is_file():
                raise NotFound(f"store {self.store!r} has no cephx identity for host {host!r} ({keyring})")
        return host, keyring

    def _conf_keyring(self, user: str) -> str:
        """The keyring ceph.conf names for ``client.<user>`` (its own section, then [client], [global])."""
        try:
            conf = Path(self.config.conf).read_text()
        except OSError as exc:
            raise ConfigError(f"store {self.store!r}: cannot read {self.config.conf}: {exc.strerror}") from None
        for section in (f"client.{user}", "client", "global"):
            if path := conf_value(conf, "keyring", section=section):
                return path.replace("$name", f"client.{user}").replace("$cluster", "ceph")
        raise ConfigError(f"store {self.store!r}: no keyring for client.{user}: set 'keyring'")

    def _mon_text(self) -> str:
        try:
            return ",".join(f"{h}:{p}" for h, p in self.monitors())
        except (ConfigError, ValueError):
            return "(unknown)"


def _parent_of(image: rbd.Image) -> str | None:
    try:
        spec = image.get_parent_image_spec()
    except rbd.ImageNotFound:
        return None
    return f"{spec['image_name']}@{spec['snap_name']}"


def _allocated_bytes(image: rbd.Image, size: int) -> int | None:
    """Bytes in allocated objects of this image (not its parent): what ``rbd du`` reports. Only
    computed with fast-diff, where it costs one object-map read; None otherwise."""
    if not has_fast_diff(image):
        return None
    total = 0

    def add(_offset: int, length: int, exists: bool) -> int:
        nonlocal total
        total += length if exists else 0
        return 0

    try:
        image.diff_iterate(0, size, None, add, include_parent=False, whole_object=True)
    except rbd.Error:
        return None
    return total


def _mon_json(cluster: rados.Rados, command: dict[str, Any], *, target: str | None = None) -> Any:
    argv = json.dumps({**command, "format": "json"})
    if target is None:
        ret, out, err = cluster.mon_command(argv, b"")
    else:
        ret, out, err = cluster.mon_command(argv, b"", target=target)
    if ret != 0:
        raise HvstoreError(f"ceph {command['prefix']} failed ({ret}): {err}")
    return json.loads(out) if out.strip() else {}


def _osd_newest_map(cluster: rados.Rados, osd: int) -> int:
    """The newest osdmap epoch ``osd`` has applied (``ceph tell osd.N status``)."""
    ret, out, err = cluster.osd_command(osd, json.dumps({"prefix": "status", "format": "json"}), b"", timeout=5)
    if ret != 0:
        raise HvstoreError(f"ceph tell osd.{osd} status failed ({ret}): {err}")
    return int(json.loads(out)["newest_map"])


def _nonce(addr: str) -> int:
    """The nonce of an entity address as watchers print it (``127.0.0.1:0/4195620382``)."""
    _, _sep, nonce = addr.rpartition("/")
    return int(nonce) if nonce.isdigit() else 0


def _host_port(text: str) -> tuple[str, int]:
    host, _sep, port = text.rpartition(":")
    if not host:
        return text, 6789
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"monitor {text!r}: expected HOST:PORT") from None
