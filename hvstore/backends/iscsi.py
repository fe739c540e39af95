"""iSCSI backend: one tgt target per volume, LUN 1 on a sparse raw file, driven with tgtadm.

System: tgt 1.0.85 (``tgtd``, userspace target; LIO cannot run here: no configfs) on this host, files in
``directory``; initiators are userspace libiscsi (hvstore's own I/O through ``protocols.libiscsi``,
QEMU's ``iscsi://`` driver). Each volume is target ``IQN_PREFIX:<store>.<name>`` with LUN 1 backed by
``<directory>/<name>.img`` (``--bstype rdwr``), tuned per target (``TUNED_PARAMETERS``: Debian's 8 KiB
data segments make 1 MiB writes 3-4x slower).

State: tgtd forgets every target when it restarts, so the store keeps its own state (volumes, their
ACLs and snapshots) in ``state_file`` (JSON, replaced atomically) and ``reapply()`` rebuilds the targets
on a fresh tgtd (``hvstore lab up`` calls it after starting tgtd). Target ids are global to one tgtd, so
every tgtadm sequence runs under a host-wide flock next to tgtd's control socket.

Access control: each target admits only listed initiator IQNs (``initiator``, hvstore's own identity,
plus ``allowed_initiators`` plus per-volume ``allow()``), optionally CHAP (``chap_user``/``chap_password``;
the password is never printed and libvirt gets it from a secret). QEMU's initiator name: per VM with
libvirt's ``<initiator><iqn name=.../>`` (``disk_xml(host=...)``) or ``-iscsi initiator-name=...`` /
blockdev ``initiator-name``; plain ``qemu-img``/``qemu-io`` on ``uri()`` log in as
``iqn.2008-11.org.linux-kvm``, which a store admits only if ``allowed_initiators`` lists it (the lab's does).

Cannot: shrink; resize, snapshot, rollback and rename while an initiator is logged in (they are offline:
online resize gave MEDIUM ERRORs under load, and a target set offline drops commands for good, so the only
safe quiesce is "nobody logged in, new logins refused"). Snapshots are full copies (reflinks where the
file system can), not copy-on-write.

Fencing: ``fence_initiator(name, initiator)`` removes the initiator from the target's ACL and closes its
sessions; its next command fails after bounded re-login attempts (measured 6-11 ms to cut, ~1 s to fail).
Initiator names tie VMs to hosts: ``initiator_for(host, vm)`` is ``<iqn_prefix>:<host>.<vm>`` (or
``<iqn_prefix>:<host>``), so host names used here cannot contain ``.``; ``fence(name, dead_host=...)`` (the
backend verb lockd calls) cuts off every initiator of that scheme naming the dead host, and nothing else.
PR helpers for lockd are in ``protocols.libiscsi`` (QEMU never registers a PR key, so PR cannot fence QEMU).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from hvstore.backends.base import Backend, BlockIO, StoreConfig, option
from hvstore.backends.tgtd import Tgtd, lun_disk_xml, lun_uri, xml_attr
from hvstore.errors import AlreadyExists, BackendUnavailable, InvalidArgument
from hvstore.model import Capabilities, Feature, FenceResult, SnapshotInfo, VolumeInfo, no, yes
from hvstore.protocols.libiscsi import Chap, IscsiBlockIO, IscsiSession, Target
from hvstore.run import run
from hvstore.tools.tgtadm import TargetInfo

LUN = 1
QEMU_DEFAULT_INITIATOR = "iqn.2008-11.org.linux-kvm"
STATE_VERSION = 1


@dataclass(frozen=True)
class IscsiConfig(StoreConfig):
    directory: str = option(help="directory of the LUN backing files (sparse raw) and snapshot copies")
    state_file: str = option(help="JSON file with this store's targets, re-applied to a restarted tgtd")
    portal: str = option("127.0.0.1:3260", help="HOST:PORT tgtd listens on")
    control_socket: str = option("", help="tgtd's control socket path (TGT_IPC_SOCKET); empty: tgt's default")
    control_port: int = option(0, help="tgtd's control port (tgtd -C)")
    iqn_prefix: str = option("iqn.2026-11.org.hvstore", help="targets are named PREFIX:STORE.VOLUME")
    initiator: str = option("iqn.2026-11.org.hvstore:hvstore", help="initiator IQN hvstore itself logs in as")
    allowed_initiators: list[str] = option(  # noqa: RUF009 - from_mapping makes it a tuple (immutable)
        (), help="initiator IQNs every new target admits besides `initiator`")
    chap_user: str | None = option(None, help="CHAP user every target requires (none: no CHAP)")
    chap_password: str | None = option(None, help="CHAP password (12-16 characters for most initiators)",
                                       secret=True)
    chap_secret_usage: str | None = option(None, help="libvirt secret usage name holding the CHAP password")
    timeout_s: int = option(10, help="per-command timeout of hvstore's own iSCSI sessions")
    reconnect_retries: int = option(2, help="re-logins after a broken connection before a command fails")


CAPABILITIES = Capabilities(
    backend="iscsi",
    features={
        Feature.CREATE: yes("target + LUN 1 on a sparse file"),
        Feature.DELETE: yes("refused while an initiator is logged in, unless forced (closes its sessions)"),
        Feature.GROW: yes("offline: truncate + re-create LUN 1; refused while an initiator is logged in",
                          online=False),
        Feature.SHRINK: no("a raw LUN cannot shrink without destroying data; tgt only re-reads sizes offline"),
        Feature.SNAPSHOT: yes("full copy (reflink where the fs can) of the backing file, offline",
                              online=False),
        Feature.ROLLBACK: yes("copies the snapshot back over the backing file, offline", online=False),
        Feature.CLONE: yes("full copy of a snapshot file under a new target"),
        Feature.FLATTEN: no("clones are independent full copies; nothing to flatten"),
        Feature.RENAME: yes("re-creates the target under the new IQN over the same file, offline", online=False),
        Feature.IMPORT_EXPORT: yes("through libiscsi; export skips the backing file's holes"),
        Feature.THIN: yes("sparse backing files"),
        Feature.REPLICATION: no("one tgtd, one file: no replica"),
        Feature.FENCING: yes("remove the initiator IQN from the target ACL and close its sessions"),
        Feature.SHARED_ACCESS: yes("any host that reaches the portal and is in the ACL"),
        Feature.LIBVIRT_POOL: no("libvirt's iscsi pools cover one target each and this store makes one "
                                 "target per volume: volume_pool_xml() gives an iscsi-direct pool per volume"),
    },
    max_nodes=None,
    snapshot_kind="file copy",
)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class IscsiBackend(Backend[IscsiConfig]):
    """Volumes as tgt targets (``self.tgtd`` drives tgtd). ``connect`` only checks that tgtd answers."""

    kind = "iscsi"
    Config = IscsiConfig
    CAPABILITIES = CAPABILITIES

    def __init__(self, store: str, config: IscsiConfig) -> None:
        super().__init__(store, config)
        self.tgtd = Tgtd(config.control_socket, config.control_port)

    @property
    def directory(self) -> Path:
        return Path(self.config.directory)

    def connect(self) -> None:
        self.directory.joinpath("snapshots").mkdir(parents=True, exist_ok=True)
        self.tgtd.targets()

    # -- lifecycle ----------------------------------------------------------------------------------
    def create(self, name: str, size_bytes: int) -> VolumeInfo:
        with self._store_lock():
            state = self._load()
            if name in state["volumes"]:
                raise AlreadyExists(f"volume {self.store}/{name} exists already")
            path = self._file(name)
            # Not in the state: a file or target of this name is the leftover of a create that died.
            path.unlink(missing_ok=True)
            self._remove_leftover_target(name)
            entry = {"created": _now(), "initiators": [], "snapshots": {}}
            try:
                with open(path, "xb") as f:
                    f.truncate(size_bytes)
                self._add_target(name, entry)
                state["volumes"][name] = entry
                self._save(state)
            except BaseException:
                with suppress(Exception):
                    self._remove_target(name, force=True)
                path.unlink(missing_ok=True)
                raise
        return self.info(name)

    def delete(self, name: str, *, force: bool = False) -> None:
        with self._store_lock():
            state = self._load()
            entry = self._entry(state, name)
            self._remove_target(name, force=force)
            del state["volumes"][name]
            self._save(state)
            for snap in entry["snapshots"]:
                self._snapshot_file(name, snap).unlink(missing_ok=True)
            self._file(name).unlink(missing_ok=True)

    def resize(self, name: str, size_bytes: int, *, shrink: bool = False) -> VolumeInfo:
        with self._store_lock():
            self._entry(self._load(), name)
            current = self._file(name).stat().st_size
            if size_bytes < current:
                raise self.unsupported(Feature.SHRINK, "shrink")
            if size_bytes > current:
                with self.tgtd.quiesced(self._iqn(name), self._what(name)) as target:
                    os.truncate(self._file(name), size_bytes)
                    self.tgtd.reload_lun(target, LUN)
        return self.info(name)

    def info(self, name: str) -> VolumeInfo:
        entry = self._entry(self._load(), name)
        return self._info(name, entry)

    def list(self) -> list[VolumeInfo]:
        volumes = self._load()["volumes"]
        infos = []
        for name in sorted(volumes):
            with suppress(FileNotFoundError):
                infos.append(self._info(name, volumes[name]))
        return infos

    def rename(self, name: str, new_name: str) -> VolumeInfo:
        with self._store_lock():
            state = self._load()
            entry = self._entry(state, name)
            if new_name in state["volumes"]:
                raise AlreadyExists(f"volume {self.store}/{new_name} exists already")
            self._remove_target(name, force=False)  # Busy while an initiator is logged in
            moved: list[tuple[Path, Path]] = []
            try:
                for snap in entry["snapshots"]:
                    moved.append((self._snapshot_file(name, snap), self._snapshot_file(new_name, snap)))
                moved.append((self._file(name), self._file(new_name)))
                for old, new in moved:
                    os.rename(old, new)
                self._remove_leftover_target(new_name)
                self._add_target(new_name, entry)
            except BaseException:
                for old, new in moved:
                    with suppress(OSError):
                        os.rename(new, old)
                with suppress(Exception):
                    self._add_target(name, entry)
                raise
            state["volumes"][new_name] = state["volumes"].pop(name)
            self._save(state)
        return self.info(new_name)

    # -- snapshots and clones -----------------------------------------------------------------------
    def snapshot(self, name: str, snap: str) -> SnapshotInfo:
        with self._store_lock():
            state = self._load()
            entry = self._entry(state, name)
            if snap in entry["snapshots"]:
                raise AlreadyExists(f"snapshot {self.store}/{name}@{snap} exists already")
            with self.tgtd.quiesced(self._iqn(name), self._what(name)):
                self._copy(self._file(name), self._snapshot_file(name, snap))
            entry["snapshots"][snap] = {"created": _now()}
            self._save(state)
            return self._snapshot_info(name, snap, entry["snapshots"][snap])

    def rollback(self, name: str, snap: str) -> None:
        with self._store_lock():
            self._snapshot_entry(self._load(), name, snap)
            with self.tgtd.quiesced(self._iqn(name), self._what(name)) as target:
                self._copy(self._snapshot_file(name, snap), self._file(name))
                self.tgtd.reload_lun(target, LUN)  # the snapshot's size may differ from the current one

    def delete_snapshot(self, name: str, snap: str) -> None:
        with self._store_lock():
            state = self._load()
            self._snapshot_entry(state, name, snap)
            del state["volumes"][name]["snapshots"][snap]
            self._save(state)
            self._snapshot_file(name, snap).unlink(missing_ok=True)

    def clone(self, name: str, snap: str, new_name: str) -> VolumeInfo:
        with self._store_lock():
            state = self._load()
            self._snapshot_entry(state, name, snap)
            if new_name in state["volumes"]:
                raise AlreadyExists(f"volume {self.store}/{new_name} exists already")
            self._remove_leftover_target(new_name)
            entry = {"created": _now(), "initiators": [], "snapshots": {}}
            try:
                self._copy(self._snapshot_file(name, snap), self._file(new_name))
                self._add_target(new_name, entry)
                state["volumes"][new_name] = entry
                self._save(state)
            except BaseException:
                with suppress(Exception):
                    self._remove_target(new_name, force=True)
                self._file(new_name).unlink(missing_ok=True)
                raise
        return self.info(new_name)

    # -- access control and fencing -----------------------------------------------------------------
    def initiator_for(self, host: str, vm: str | None = None) -> str:
        """The initiator IQN ``<iqn_prefix>:<host>.<vm>`` (``<iqn_prefix>:<host>`` without ``vm``).

        ``host`` may also be ``HOST.VM`` or an IQN already (returned as is). The host is everything before
        the first ``.``, which is how ``fence`` finds a dead host's initiators (``host_of``)."""
        if host.startswith(("iqn.", "eui.", "naa.")):
            return host
        if vm is not None:
            if "." in host:
                raise InvalidArgument(f"host name {host!r} for an iSCSI initiator cannot contain '.'")
            host = f"{host}.{vm}"
        return f"{self.config.iqn_prefix}:{host}"

    def host_of(self, initiator: str) -> str | None:
        """The host an initiator IQN of the ``initiator_for`` scheme belongs to; None for other IQNs
        (hvstore's own ``initiator``, QEMU's default, foreign names)."""
        prefix = f"{self.config.iqn_prefix}:"
        if not initiator.startswith(prefix) or initiator == self.config.initiator:
            return None
        return initiator.removeprefix(prefix).split(".", 1)[0] or None

    def grant(self, name: str, *, host: str) -> None:
        """Admit ``host``'s initiator (``initiator_for(host)``, as ``disk_xml(host=host)`` names it)."""
        self.allow(name, self.initiator_for(host))

    def allow(self, name: str, initiator: str) -> None:
        """Admit ``initiator`` (IQN) to the volume's target; idempotent, remembered across tgtd restarts."""
        with self._store_lock():
            state = self._load()
            entry = self._entry(state, name)
            self.tgtd.bind(self.tgtd.get(self._iqn(name), self._what(name)), initiator)
            if initiator not in entry["initiators"]:
                entry["initiators"].append(initiator)
                self._save(state)

    def fence(self, name: str, *, dead_host: str, keep_host: str | None = None) -> FenceResult:
        """Cut every initiator of ``dead_host`` (``host_of``) off the volume: out of the ACL, sessions
        closed; in force when tgtadm returns. ``keep_host``'s initiators, hvstore's own and foreign ones
        are left alone. An initiator listed in the store-wide ``allowed_initiators`` comes back when tgtd
        restarts (``reapply``): per-VM initiators belong in the volume's ACL (``allow``)."""
        if "." in dead_host or dead_host == keep_host:
            raise InvalidArgument(f"cannot fence host {dead_host!r} on iSCSI: a host name without '.' that "
                                  "is not the host kept is needed")
        started = time.monotonic()
        target = self.tgtd.get(self._iqn(name), self._what(name))
        candidates = [*self._acl(self._entry(self._load(), name)), *(s.initiator for s in target.sessions)]
        victims = [i for i in dict.fromkeys(candidates) if self.host_of(i) == dead_host]
        closed = 0
        for initiator in victims:
            closed += len(self.fence_initiator(name, initiator))
        note = f"{closed} session(s) closed" if victims else ""
        return FenceResult("acl removal", tuple(victims), round(time.monotonic() - started, 3), note)

    def fence_initiator(self, name: str, initiator: str) -> list[int]:
        """Cut ``initiator`` off the volume: drop it from the ACL, then close its sessions (ids returned).

        Idempotent. The initiator's next command fails once its bounded re-logins are refused.
        """
        with self._store_lock():
            state = self._load()
            entry = self._entry(state, name)
            if initiator in entry["initiators"]:
                entry["initiators"].remove(initiator)
                self._save(state)
            target = self.tgtd.get(self._iqn(name), self._what(name))
            self.tgtd.unbind(target, initiator)  # first: a closed session must not log in again
            return self.tgtd.close_sessions(target, initiator)

    def sessions(self, name: str) -> list[str]:
        """Initiator IQNs logged in to the volume's target now."""
        self._entry(self._load(), name)
        return [s.initiator for s in self.tgtd.get(self._iqn(name), self._what(name)).sessions]

    def reapply(self) -> list[str]:
        """Make tgtd match the state: re-create missing targets (after a tgtd restart), drop targets of
        this store that the state does not know (leftovers of a crash). Returns the volumes re-created."""
        with self._store_lock():
            volumes = self._load()["volumes"]
            live = {t.iqn: t for t in self.tgtd.targets()}
            known = {self._iqn(name) for name in volumes}
            for iqn, target in live.items():
                if iqn not in known and self._is_mine(target):
                    self.tgtd.delete_target(target.tid)
            restored = []
            for name, entry in sorted(volumes.items()):
                if self._iqn(name) not in live and self._file(name).exists():
                    self._add_target(name, entry)
                    restored.append(name)
            return restored

    # -- data path ----------------------------------------------------------------------------------
    def open(self, name: str, *, writable: bool = False) -> BlockIO:
        self._entry(self._load(), name)
        session = IscsiSession(
            Target(self.config.portal, self._iqn(name), LUN), initiator=self.config.initiator,
            chap=self._chap(), timeout_s=self.config.timeout_s, reconnect_retries=self.config.reconnect_retries,
        ).login()
        return IscsiBlockIO(session, writable=writable, extents=_FileExtents(self._file(name)))

    def uri(self, name: str, *, host: str | None = None) -> str:
        """``iscsi://PORTAL/IQN/1``. It carries neither the initiator name (QEMU takes it from
        ``-iscsi initiator-name=`` or blockdev ``initiator-name``) nor the CHAP password (QEMU: a secret
        object and ``password-secret``; qemu-img/qemu-io: ``LIBISCSI_CHAP_USERNAME``/``_PASSWORD``).

        With ``host``: a ``json:`` filename (raw over the iscsi protocol driver) that logs in as
        ``initiator_for(host)``, the initiator ``grant(host=)`` admits and ``fence(dead_host=)`` cuts off;
        an ``iscsi://`` URL cannot name the initiator. With CHAP it names the user only: the password must
        reach QEMU as a secret object (``password-secret``)."""
        self._entry(self._load(), name)
        initiator = self.initiator_for(host) if host is not None else ""
        return lun_uri(self.config.portal, self._iqn(name), LUN, initiator=initiator, user=self.config.chap_user)

    def qemu_format(self, name: str) -> str:
        return "raw"

    def disk_xml(self, name: str, *, target: str = "vda", host: str | None = None, vm: str | None = None) -> str:
        """A network ``<disk>``; ``host`` (and ``vm``: ``initiator_for``) becomes the initiator IQN QEMU
        logs in as, which must be allowed (``allow``) and is what ``fence(dead_host=host)`` cuts off."""
        self._entry(self._load(), name)
        return lun_disk_xml(self.config.portal, self._iqn(name), LUN, target=target,
                            initiator=self.initiator_for(host, vm) if host else "", auth_xml=self._auth_xml())

    def volume_pool_xml(self, name: str, *, host: str | None = None) -> str:
        """A libvirt ``iscsi-direct`` pool (libiscsi, no kernel initiator) over this volume's target.

        libvirt's iSCSI pools cover exactly one target, so a store with one target per volume has one
        pool per volume; ``pool_xml()`` (one pool for the store) is therefore unsupported.
        """
        self._entry(self._load(), name)
        address, _, port = self.config.portal.rpartition(":")
        initiator = self.initiator_for(host) if host else self.config.initiator
        return (
            f"<pool type='iscsi-direct'><name>{escape(f'{self.store}.{name}')}</name><source>"
            f"<host name={xml_attr(address)} port={xml_attr(port)}/><device path={xml_attr(self._iqn(name))}/>"
            f"<initiator><iqn name={xml_attr(initiator)}/></initiator>{self._auth_xml(pool=True)}</source></pool>"
        )

    def _auth_xml(self, *, pool: bool = False) -> str:
        if not self.config.chap_user:
            return ""
        usage = self.config.chap_secret_usage or f"hvstore-{self.store}"
        kind = " type='chap'" if pool else ""
        secret_type = "" if pool else " type='iscsi'"
        return (f"<auth{kind} username={xml_attr(self.config.chap_user)}>"
                f"<secret{secret_type} usage={xml_attr(usage)}/></auth>")

    # -- helpers: state -----------------------------------------------------------------------------
    def _iqn(self, name: str) -> str:
        return f"{self.config.iqn_prefix}:{self.store}.{name}"

    def _file(self, name: str) -> Path:
        return self.directory / f"{name}.img"

    def _snapshot_file(self, name: str, snap: str) -> Path:
        return self.directory / "snapshots" / f"{name}@{snap}.img"

    def _what(self, name: str) -> str:
        return f"volume {self.store}/{name}"

    def _add_target(self, name: str, entry: dict[str, Any]) -> None:
        self.tgtd.add_target(self._iqn(name), self._file(name), LUN, initiators=self._acl(entry),
                             chap=self._chap())

    def _remove_target(self, name: str, *, force: bool) -> None:
        self.tgtd.remove_target(self._iqn(name), force=force, what=self._what(name))

    def _is_mine(self, target: TargetInfo) -> bool:
        """Whether ``target`` serves a file of this store. IQNs alone cannot tell: store ``a`` volume
        ``b.c`` and store ``a.b`` volume ``c`` share one."""
        return any(lun.backing_path and Path(lun.backing_path).parent == self.directory for lun in target.luns)

    def _remove_leftover_target(self, name: str) -> None:
        """Before making ``name``: a target of its IQN over our file is the leftover of a build that
        died (remove it); over another store's file, the IQN is taken."""
        target = self.tgtd.find(self._iqn(name))
        if target is None:
            return
        if not self._is_mine(target):
            raise AlreadyExists(f"{self._what(name)}: target {self._iqn(name)} belongs to another store")
        self._remove_target(name, force=True)

    def _chap(self) -> Chap | None:
        if self.config.chap_user and self.config.chap_password:
            return Chap(self.config.chap_user, self.config.chap_password)
        return None

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(Path(self.config.state_file).read_text())
        except FileNotFoundError:
            return {"version": STATE_VERSION, "volumes": {}}
        except (OSError, json.JSONDecodeError) as exc:
            raise BackendUnavailable(f"iscsi store {self.store!r}: cannot read {self.config.state_file}: {exc}") \
                from None
        return state

    def _save(self, state: dict[str, Any]) -> None:
        """Replace the state file atomically (temp file, fsync, rename, fsync of the directory)."""
        path = Path(self.config.state_file)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _entry(self, state: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            return state["volumes"][name]
        except KeyError:
            raise self._not_found(name) from None

    def _snapshot_entry(self, state: dict[str, Any], name: str, snap: str) -> dict[str, Any]:
        try:
            return self._entry(state, name)["snapshots"][snap]
        except KeyError:
            raise self._not_found(name, snap) from None

    def _info(self, name: str, entry: dict[str, Any]) -> VolumeInfo:
        st = self._file(name).stat()
        snapshots = tuple(self._snapshot_info(name, s, e) for s, e in sorted(entry["snapshots"].items()))
        return VolumeInfo(
            store=self.store, name=name, size_bytes=st.st_size, format="raw", used_bytes=st.st_blocks * 512,
            snapshots=snapshots,
            details={"iqn": self._iqn(name), "lun": LUN, "portal": self.config.portal,
                     "file": str(self._file(name)), "initiators": self._acl(entry)},
        )

    def _snapshot_info(self, name: str, snap: str, entry: dict[str, Any]) -> SnapshotInfo:
        size = self._snapshot_file(name, snap).stat().st_size
        return SnapshotInfo(snap, size, created=entry.get("created"))

    def _acl(self, entry: dict[str, Any]) -> list[str]:
        wanted = [self.config.initiator, *self.config.allowed_initiators, *entry["initiators"]]
        return list(dict.fromkeys(wanted))

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """One verb at a time per store: the state file is read-modify-written."""
        path = Path(self.config.state_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _copy(source: Path, dest: Path) -> None:
        """Copy a backing file (reflink where the fs can, holes kept) via a temp name, durably."""
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            run(["cp", "--reflink=auto", "--sparse=always", str(source), str(tmp)], timeout_s=24 * 3600)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


class _FileExtents:
    """Data extents of the backing file (SEEK_DATA/SEEK_HOLE): tgt's rdwr store leaves holes as holes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> Iterator[tuple[int, int]]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    return
                end = os.lseek(fd, start, os.SEEK_HOLE)
                yield (start, end - start)
                offset = end
        finally:
            os.close(fd)
