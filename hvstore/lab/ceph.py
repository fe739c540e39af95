"""The lab's Ceph: one ceph-mon + three ceph-osd (Ceph 16.2 Pacific), cephx on, no mgr, on 127.0.0.1.

State lives under ``<labdir>/ceph``: ``ceph.conf``, ``keyrings/`` (client.admin and one cephx user per
host identity, ``client.hosta``/``hostb``/``hostc`` with ``profile rbd`` caps, as a real deployment gives
every hypervisor its own identity so lockd can map an image's watchers to hosts), ``mon/`` (RocksDB) and
``osd/ceph-{0,1,2}/`` (bluestore on sparse ``block`` files, so a SIGKILL loses nothing acknowledged).
Three OSDs and a pool of size 3 / min_size 2 (CRUSH places replicas on OSDs, there is one host), so the
lab replicates like a real cluster, benchmarks pay for replication as Gluster's replica 3 does, and a
scenario can lose one OSD while I/O goes on. Each OSD costs ~45 MiB idle.

Bootstrap (first ``start``) writes every key itself (see ``hvstore.tools.ceph.new_cephx_key``) into the
mon's initial keyring, so ``ceph-mon --mkfs`` creates all auth entities at once and no ``auth add`` round
trip is needed; then ``osd new``, ``ceph-osd --mkfs`` (all OSDs in parallel), the pool ``hvstore`` (size
3, rbd application, ``rbd pool init``). A bootstrap that did not finish (no ``bootstrapped`` marker), or
one of another shape (the marker records the OSD count), is wiped and redone.

No mgr: rados/rbd, QEMU, locks, CAS and blocklisting do not need one, and it would cost ~300 MiB and
4-9 s. Consequently ``ceph -s`` shows no PG statistics; health here means mon quorum + OSD up.
The settings come from measurements on these machines (docs/ENVIRONMENT.md).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import rados
import rbd

from hvstore.errors import BackendUnavailable
from hvstore.lab.service import LabService, wait_until
from hvstore.run import run
from hvstore.tools.ceph import new_cephx_key, render_conf, render_keyring

POOL = "hvstore"
HOSTS = ("hosta", "hostb", "hostc")  # the host identities the lab's scenarios use
MON_ID = "a"
OSD_IDS = (0, 1, 2)
POOL_SIZE, POOL_MIN_SIZE = 3, 2  # one OSD may be lost and I/O goes on
MON_V1_PORT = 6789
MON_V2_PORT = 3300
LOOPBACK = "127.0.0.1"
# Each OSD's sparse block file. Bluestore never punches freed space out of a plain file (no discard there)
# and its allocator walks the whole device over time: after ~40 min of benchmarks three 20 GiB files were
# fully allocated and filled the disk. So this bounds the lab's Ceph footprint: 3 x 8 GiB at most.
BLOCK_SIZE = "8G"
PG_NUM = 16

ADMIN_CAPS = {"mon": "allow *", "osd": "allow *", "mds": "allow *", "mgr": "allow *"}
OSD_CAPS = {"mon": "allow profile osd", "osd": "allow *", "mgr": "allow profile osd"}
HOST_CAPS = {"mon": "profile rbd", "osd": f"profile rbd pool={POOL}", "mgr": f"profile rbd pool={POOL}"}

# Startup waits. The OSD boots in ~0.5 s; the long bounds only matter on a loaded machine.
MON_START_TIMEOUT_S = 30.0
OSD_START_TIMEOUT_S = 60.0
HEALTH_TIMEOUT_S = 2.0


class CephService(LabService):
    name = "ceph"
    description = "Ceph 16.2: ceph-mon + 3 bluestore ceph-osd, cephx, no mgr (rbd pool 'hvstore', size 3)"

    # -- layout -------------------------------------------------------------------------------------
    @property
    def process_names(self) -> tuple[str, ...]:
        return ("ceph-mon", *self.osd_process_names)

    @property
    def osd_process_names(self) -> tuple[str, ...]:
        """The lab's name of each OSD daemon (what a node-loss scenario stops)."""
        return tuple(f"ceph-osd.{osd_id}" for osd_id in OSD_IDS)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{MON_V1_PORT}"

    @property
    def conf_path(self) -> Path:
        return self.dir / "ceph.conf"

    @property
    def keyring_dir(self) -> Path:
        return self.dir / "keyrings"

    def keyring_path(self, user: str) -> Path:
        """``<state>/keyrings/ceph.client.USER.keyring``, the path ``[client] keyring`` points at."""
        return self.keyring_dir / f"ceph.client.{user}.keyring"

    def _osd_data(self, osd_id: int) -> Path:
        return self.dir / "osd" / f"ceph-{osd_id}"

    @property
    def _marker(self) -> Path:
        return self.dir / "bootstrapped"

    @property
    def _shape(self) -> str:
        """What the marker records besides the time: a lab of another shape is rebuilt, not half-reused."""
        return f"osds={len(OSD_IDS)} size={POOL_SIZE} block={BLOCK_SIZE}"

    def bootstrapped(self) -> bool:
        return self._marker.exists() and self._shape in self._marker.read_text()

    # -- LabService -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Bootstrap on first use; otherwise restart whichever daemon is not running. Idempotent.

        Returns once the mon has quorum, every OSD is up *with the address of the process running now*
        (after an unclean OSD death clients stall ~10 s on the old address otherwise) and the pool
        answers I/O.
        """
        if not self.bootstrapped():
            self._bootstrap()
            return
        mon_started = False
        if not self.lab.running("ceph-mon"):
            self.lab.stop("ceph-mon")  # a dead daemon's reaper may still linger: clear its record
            self._spawn_mon()
            mon_started = True
        with self._admin(timeout_s=MON_START_TIMEOUT_S if mon_started else 5.0) as cluster:
            dead = [osd_id for osd_id in OSD_IDS if not self.lab.running(f"ceph-osd.{osd_id}")]
            if dead:
                epoch = _osd_dump(cluster)["epoch"]
                for osd_id in dead:
                    self.lab.stop(f"ceph-osd.{osd_id}")
                    self._spawn_osd(osd_id)
                self._wait_osds_up(cluster, dead, after_epoch=epoch)
            self._wait_pool_io(cluster)

    def health(self) -> tuple[bool, str]:
        try:
            with self._admin(timeout_s=HEALTH_TIMEOUT_S) as cluster:
                quorum = _mon_json(cluster, {"prefix": "quorum_status"})
                osds = _osd_dump(cluster)["osds"]
        except (BackendUnavailable, rados.Error) as exc:
            return False, f"cluster unreachable: {exc}"
        up = sum(1 for osd in osds if osd["up"])
        healthy = bool(quorum.get("quorum")) and up == len(osds) > 0
        return healthy, f"mon quorum {quorum.get('quorum_names')}, {up}/{len(osds)} osd up"

    def stores(self) -> dict[str, dict[str, Any]]:
        return {
            "ceph": {
                "type": "rbd",
                "pool": POOL,
                "conf": str(self.conf_path),
                "user": "admin",
                "keyring": str(self.keyring_path("admin")),
                "host_keyring_dir": str(self.keyring_dir),
                "monitors": [f"{LOOPBACK}:{MON_V1_PORT}"],
            }
        }

    def lease_stores(self) -> dict[str, dict[str, Any]]:
        """lockd's leases for the ``ceph`` store: RADOS objects in the same pool, namespace ``lockd``."""
        return {"ceph": {"type": "rados", "conf": str(self.conf_path), "pool": POOL, "user": "admin",
                         "keyring": str(self.keyring_path("admin")), "namespace": "lockd"}}

    # -- bootstrap ------------------------------------------------------------------------------------
    def _bootstrap(self) -> None:
        for name in reversed(self.process_names):
            self.lab.stop(name)
        shutil.rmtree(self.dir, ignore_errors=True)
        for sub in ("keyrings", "mon", "run", "log", "osd"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        osd_uuids = {osd_id: str(uuid.uuid4()) for osd_id in OSD_IDS}
        self.conf_path.write_text(render_conf(self._conf_sections(fsid)))

        entities = {
            "mon.": (new_cephx_key(), {"mon": "allow *"}),
            "client.admin": (new_cephx_key(), ADMIN_CAPS),
            **{f"osd.{osd_id}": (new_cephx_key(), OSD_CAPS) for osd_id in OSD_IDS},
            **{f"client.{host}": (new_cephx_key(), HOST_CAPS) for host in HOSTS},
        }
        # Every entity in the mon's initial keyring becomes an auth entry at --mkfs.
        mon_keyring = self.dir / "mon.keyring"
        mon_keyring.write_text("".join(render_keyring(e, k, c) for e, (k, c) in entities.items()))
        mon_keyring.chmod(0o600)
        for user in ("admin", *HOSTS):
            key, caps = entities[f"client.{user}"]
            self.keyring_path(user).write_text(render_keyring(f"client.{user}", key, caps))
            self.keyring_path(user).chmod(0o600)

        for osd_id in OSD_IDS:
            self._osd_data(osd_id).mkdir(parents=True, exist_ok=True)
            osd_key, _caps = entities[f"osd.{osd_id}"]
            (self._osd_data(osd_id) / "keyring").write_text(render_keyring(f"osd.{osd_id}", osd_key))
        with ThreadPoolExecutor(max_workers=len(OSD_IDS)) as background:
            # Formatting an OSD's block file (~0.3 s) needs no mon: they run while the mon is made.
            osd_mkfs = [background.submit(run, [
                "ceph-osd", "--mkfs", "--no-mon-config", "-c", str(self.conf_path), "-i", str(osd_id),
                "--osd-uuid", osd_uuids[osd_id]], timeout_s=120) for osd_id in OSD_IDS]
            monmap = self.dir / "monmap"
            run(["monmaptool", "--create", "--clobber", "--fsid", fsid, "--addv", MON_ID,
                 f"[v2:{LOOPBACK}:{MON_V2_PORT},v1:{LOOPBACK}:{MON_V1_PORT}]", str(monmap)], timeout_s=30)
            run(["ceph-mon", "--mkfs", "-c", str(self.conf_path), "-i", MON_ID, "--monmap", str(monmap),
                 "--keyring", str(mon_keyring)], timeout_s=60)
            self._spawn_mon()
            for mkfs in osd_mkfs:
                mkfs.result()

        with self._admin(timeout_s=MON_START_TIMEOUT_S) as cluster:
            epoch = _osd_dump(cluster)["epoch"]
            for osd_id in OSD_IDS:
                _mon_json(cluster, {"prefix": "osd new", "uuid": osd_uuids[osd_id], "id": osd_id})
                self._spawn_osd(osd_id)
            _mon_json(cluster, {"prefix": "osd pool create", "pool": POOL, "pg_num": PG_NUM, "pgp_num": PG_NUM})
            self._wait_osds_up(cluster, OSD_IDS, after_epoch=epoch)
            with cluster.open_ioctx(POOL) as ioctx:
                # What ``rbd pool init`` does: enable the rbd application and validate the pool.
                rbd.RBD().pool_init(ioctx, False)
            self._wait_pool_io(cluster)
        self._marker.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {self._shape}\n")

    def _conf_sections(self, fsid: str) -> dict[str, dict[str, object]]:
        state = self.dir
        return {
            "global": {
                "fsid": fsid,
                "mon_host": f"[v2:{LOOPBACK}:{MON_V2_PORT},v1:{LOOPBACK}:{MON_V1_PORT}]",
                "mon_initial_members": MON_ID,
                "public_addr": LOOPBACK,
                "cluster_addr": LOOPBACK,
                "auth_cluster_required": "cephx",
                "auth_service_required": "cephx",
                "auth_client_required": "cephx",
                "run_dir": state / "run",
                # Each pool/OSD change took ~1 s with the default 1 s propose interval.
                "paxos_propose_interval": 0.1,
                "osd_pool_default_size": POOL_SIZE,
                "osd_pool_default_min_size": POOL_MIN_SIZE,
                "osd_pool_default_pg_autoscale_mode": "off",
                "osd_crush_chooseleaf_type": 0,  # replicas on distinct OSDs: the lab has one host
                "mon_allow_pool_delete": True,
                "mon_warn_on_pool_no_redundancy": False,
                "mon_max_pg_per_osd": 1000,
                # The mon refuses to start below 5% free on its file system (a 252 GB disk with 13 GB free);
                # the lab's OSDs are bounded (BLOCK_SIZE), so only a nearly full disk should stop it.
                "mon_data_avail_crit": 1,
            },
            "mon": {
                "mon_data": state / "mon" / "$cluster-$id",
                "mon_cluster_log_file": state / "log" / "ceph.log",
                "log_file": state / "log" / "$name.log",
                "admin_socket": state / "run" / "$cluster-$name.asok",
            },
            "osd": {
                "osd_data": state / "osd" / "$cluster-$id",
                "osd_objectstore": "bluestore",
                "bluestore_block_create": True,
                "bluestore_block_size": BLOCK_SIZE,
                "bluestore_fsck_on_mkfs": False,  # a fresh empty store: the check only costs time
                # Each bluestore close cost ~0.28 s with the default aio poll interval.
                "bdev_aio_poll_ms": 20,
                "osd_memory_target": "1G",
                "ms_bind_port_min": 6800,
                "ms_bind_port_max": 6899,
                "log_file": state / "log" / "$name.log",
                "admin_socket": state / "run" / "$cluster-$name.asok",
            },
            "client": {
                "keyring": self.keyring_dir / "$cluster.$name.keyring",
                # Clients (rbd, qemu-img, QEMU) would try /var/run/ceph, which need not exist.
                "admin_socket": "",
                "log_file": "",
            },
        }

    # -- daemons --------------------------------------------------------------------------------------
    def _spawn_mon(self) -> None:
        self.lab.spawn("ceph-mon", ["ceph-mon", "-f", "-c", str(self.conf_path), "-i", MON_ID])

    def _spawn_osd(self, osd_id: int) -> None:
        self.lab.spawn(f"ceph-osd.{osd_id}", ["ceph-osd", "-f", "-c", str(self.conf_path), "-i", str(osd_id)])

    def _wait_osds_up(self, cluster: rados.Rados, osd_ids: Iterable[int], *, after_epoch: int) -> None:
        """Wait until each of ``osd_ids`` booted in an osdmap newer than ``after_epoch``, i.e. the running
        process registered its address (an 'up' from before the restart names a dead address)."""
        waiting = {osd_id: f"ceph-osd.{osd_id}" for osd_id in osd_ids}

        def booted() -> bool:
            for name in waiting.values():
                if self.lab.reaper_pid(name) is None:  # the reaper exits once the daemon has
                    raise BackendUnavailable(f"{name} exited: {self.lab.log_tail(name, 1)}")
            up = {o["osd"] for o in _osd_dump(cluster)["osds"] if o["up"] and o["up_from"] > after_epoch}
            return up >= waiting.keys()

        wait_until(booted, timeout_s=OSD_START_TIMEOUT_S, what=", ".join(waiting.values()),
                   log=lambda: "\n".join(self.lab.log_tail(name) for name in waiting.values()))
        # Clients must see that map too before they are handed the cluster.
        cluster.wait_for_latest_osdmap()

    def _wait_pool_io(self, cluster: rados.Rados) -> None:
        """One write + read in the pool: returns once its PG is active on the running OSD."""
        try:
            with cluster.open_ioctx(POOL) as ioctx:
                ioctx.write_full("hvstore-lab-probe", b"ok")
                ioctx.read("hvstore-lab-probe")
        except rados.Error as exc:
            raise BackendUnavailable(f"ceph pool {POOL!r} does not answer I/O: {exc}") from None

    def _admin(self, *, timeout_s: float) -> _AdminSession:
        def mon_gone() -> str | None:
            """Why waiting for the mon is pointless (it exited, e.g. its port is taken), else None."""
            if self.lab.reaper_pid("ceph-mon") is None:
                return f"ceph-mon exited: {self.lab.log_tail('ceph-mon', 1).strip() or 'no output'}"
            return None

        return _AdminSession(self.conf_path, self.keyring_path("admin"), timeout_s, mon_gone)


class _AdminSession:
    """``with`` a client.admin rados handle; BackendUnavailable if the mon does not answer in time."""

    def __init__(self, conf: Path, keyring: Path, timeout_s: float,
                 mon_gone: Callable[[], str | None]) -> None:
        self.conf, self.keyring, self.timeout_s, self.mon_gone = conf, keyring, timeout_s, mon_gone
        self.cluster: rados.Rados | None = None

    def __enter__(self) -> rados.Rados:
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = max(1, min(5, math.ceil(deadline - time.monotonic())))
            cluster = rados.Rados(conffile=str(self.conf), rados_id="admin", conf={
                "keyring": str(self.keyring),
                "client_mount_timeout": str(remaining),  # whole seconds
                "rados_mon_op_timeout": "10",
                # An OSD that never becomes active must fail start() clearly, not hang it.
                "rados_osd_op_timeout": str(math.ceil(OSD_START_TIMEOUT_S)),
            })
            try:
                cluster.connect(timeout=remaining)
            except rados.Error as exc:
                cluster.shutdown()
                gone = self.mon_gone()
                if gone:
                    raise BackendUnavailable(gone) from None
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(f"ceph mon at {LOOPBACK}:{MON_V1_PORT} not reachable: {exc}") from None
                time.sleep(0.05)
                continue
            self.cluster = cluster
            return cluster

    def __exit__(self, *exc: object) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()


def _mon_json(cluster: rados.Rados, command: dict[str, Any]) -> dict[str, Any]:
    ret, out, err = cluster.mon_command(json.dumps({**command, "format": "json"}), b"")
    if ret != 0:
        raise BackendUnavailable(f"ceph {command['prefix']} failed ({ret}): {err}")
    return json.loads(out) if out.strip() else {}


def _osd_dump(cluster: rados.Rados) -> dict[str, Any]:
    return _mon_json(cluster, {"prefix": "osd dump"})
