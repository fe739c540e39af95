"""Lease store in RADOS objects (Ceph), through python3-rados.

Objects, in ``pool`` under RADOS namespace ``namespace``:

* ``hb.<lockspace>``: one object per lockspace whose omap holds every host's heartbeat (key = host id), so
  one read op sees every host. An existing heartbeat is replaced with ``omap_cmp`` (ECANCELED when its text
  changed) + ``omap_set`` in one write op; a host's first heartbeat is guarded by ``assert_version`` on the
  object (or exclusive create when the object does not exist yet).
* ``res/<lockspace>/<key>``: one object per lease, its data the record's text; its RADOS object version is
  the compare-and-swap handle (``assert_version``, or exclusive create for a new record).

Fencing of a dead host's *lockd client*: every heartbeat names its writer's client address
(``Rados.get_addrs()``); ``fence_client`` blocklists that address with ``osd blocklist add`` and returns only
once every OSD has the osdmap epoch that contains the entry (measured here: writes right after the mon command
still succeeded in 2 of 10 trials until the OSDs caught up). This does not stop the dead host's QEMUs, which
have their own clients: that is the volume backend's ``fence`` verb (``lockd.manager.Fencer``).

One client at a time serves the store; it is shut down only once no call uses it (``_Client``): shutting a
client down under a running call crashed the process (SIGSEGV) or hung that call forever (measured here).

Needs: python3-rados (Debian; visible from the venv built with --system-site-packages) and a cephx user allowed
to read/write the pool and to blocklist (``client.admin`` in the lab).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from lockd.errors import FenceFailed, LeaseLost, StoreUnavailable, VersionConflict
from lockd.lease import Heartbeat, Resource, Versioned, validate_lockspace
from lockd.stores.base import LeaseStore

HEARTBEAT_PREFIX = "hb."
RESOURCE_PREFIX = "res/"
MAX_HOSTS = 100_000  # omap values returned by one heartbeat read
RECONNECT_AFTER_TIMEOUTS = 2  # consecutive timed-out calls before the client is replaced

# The rados binding raises errno-carrying subclasses of rados.Error; these mean "the guard did not hold".
_CONFLICT_ERRNOS = {errno.ECANCELED, errno.ERANGE, errno.EOVERFLOW, errno.EEXIST}


@dataclass(frozen=True)
class RadosStoreConfig:
    conf: str
    pool: str
    keyring: str = ""
    user: str = "admin"
    namespace: str = "lockd"
    op_timeout_s: float = 5.0


class RadosLeaseStore(LeaseStore):
    kind: ClassVar[str] = "rados"

    def __init__(self, config: RadosStoreConfig) -> None:
        self.config = config
        self._client: _Client | None = None
        # Serializes replacing the client (connect, close, reconnect): two threads must not both reconnect.
        self._client_lock = threading.RLock()
        self._shut_down = False
        self._reconnect = False  # set when a stuck client was abandoned
        self._address = ""  # this client's address (Rados.get_addrs()), set by connect()
        self._timeouts_in_a_row = 0

    @property
    def describe(self) -> str:
        return f"rados:{self.config.pool}/{self.config.namespace} as client.{self.config.user}"

    def connect(self) -> None:
        with self._client_lock:
            if self._client is None:
                self._connect()

    def _connect(self) -> None:
        rados = _import_rados()

        timeout = str(int(max(1, self.config.op_timeout_s)))
        options = {"rados_osd_op_timeout": timeout, "rados_mon_op_timeout": timeout,
                   "client_mount_timeout": timeout}
        if self.config.keyring:
            options["keyring"] = self.config.keyring
        try:
            cluster = rados.Rados(conffile=self.config.conf, name=f"client.{self.config.user}", conf=options)
            cluster.connect(timeout=int(timeout))
            ioctx = cluster.open_ioctx(self.config.pool)
        except rados.Error as exc:
            raise StoreUnavailable(f"cannot connect to RADOS pool {self.config.pool!r} as "
                                   f"client.{self.config.user} ({self.config.conf}): {exc}") from None
        ioctx.set_namespace(self.config.namespace)
        self._address = str(cluster.get_addrs())
        self._client = _Client(cluster, ioctx)

    def close(self) -> None:
        """Shut the client down once no call uses it: at once when idle, else when the running call returns
        (a manager's stop() closes the store while a renewal may still run, or one a timeout gave up on).
        Later calls raise StoreUnavailable until connect()."""
        with self._client_lock:
            client, self._client = self._client, None
            self._reconnect = self._shut_down = False
        if client is not None:
            client.retire()

    def lockspaces(self) -> list[str]:
        names: set[str] = set()
        with self._ops("list lockspaces") as io:
            for obj in io.list_objects():
                if obj.key.startswith(HEARTBEAT_PREFIX):
                    names.add(obj.key.removeprefix(HEARTBEAT_PREFIX))
                elif obj.key.startswith(RESOURCE_PREFIX):
                    names.add(obj.key.removeprefix(RESOURCE_PREFIX).partition("/")[0])
        return sorted(names)

    def read_heartbeats(self, lockspace: str) -> dict[str, Heartbeat]:
        values, _ = self._read_omap(_heartbeat_oid(lockspace))
        return {host: Heartbeat.decode(text) for host, text in values.items()}

    def write_heartbeat(self, lockspace: str, heartbeat: Heartbeat, *, expected: Heartbeat | None) -> None:
        import rados

        oid = _heartbeat_oid(lockspace)
        if expected is None:
            values, version = self._read_omap(oid)
            if heartbeat.host in values:
                raise VersionConflict(f"heartbeat of {heartbeat.host} in {lockspace} exists already")
        with self._ops(f"write heartbeat {lockspace}/{heartbeat.host}") as io, rados.WriteOpCtx() as op:
            if expected is not None:
                op.omap_cmp(heartbeat.host, expected.encode(), rados.LIBRADOS_CMPXATTR_OP_EQ)
            elif version is None:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            else:
                op.assert_version(version)
            io.set_omap(op, (heartbeat.host,), (heartbeat.encode(),))
            io.operate_write_op(op, oid)

    def read_resource(self, lockspace: str, key: str) -> Versioned[Resource] | None:
        import rados

        oid = _resource_oid(lockspace, key)
        with self._ops(f"read lease {lockspace}/{key}") as io:
            try:
                data = io.read(oid, 65536)
            except rados.ObjectNotFound:
                return None
            version = io.get_last_version()
        return Versioned(Resource.decode(data), int(version))

    def write_resource(self, lockspace: str, record: Resource, *, expected_version: int | None) -> int:
        import rados

        oid = _resource_oid(lockspace, record.key)
        with self._ops(f"write lease {lockspace}/{record.key}") as io, rados.WriteOpCtx() as op:
            if expected_version is None:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            else:
                op.assert_version(expected_version)
            op.write_full(record.encode().encode())
            try:
                io.operate_write_op(op, oid)
            except rados.ObjectNotFound:
                # assert_version on an object that is gone (a recreated pool): the guard did not hold.
                raise VersionConflict(f"lease {lockspace}/{record.key} does not exist (expected version "
                                      f"{expected_version})") from None
            return int(io.get_last_version())

    def list_resources(self, lockspace: str) -> list[Versioned[Resource]]:
        prefix = f"{RESOURCE_PREFIX}{validate_lockspace(lockspace)}/"
        with self._ops(f"list leases of {lockspace}") as io:
            oids = [obj.key for obj in io.list_objects() if obj.key.startswith(prefix)]
        records = [self.read_resource(lockspace, oid.removeprefix(prefix)) for oid in oids]
        return sorted((r for r in records if r is not None), key=lambda v: v.value.key)

    def client_id(self) -> str:
        """Cheap (no store I/O): read at every renewal, so a reconnected client is advertised at once."""
        return self._address

    def fence_client(self, lockspace: str, heartbeat: Heartbeat) -> str:
        """Blocklist the dead host's lockd client; return once the blocklist is enforced where it matters.

        An OSD reporting the new osdmap epoch is not enough: its PGs take the map asynchronously, and an
        op of the victim could still pass a PG that lags (seen here, ~1 in 20 right after the command).
        An op carrying a newer epoch waits until its PG has that map, so after the OSDs report the epoch we
        bring our own client to the latest map and touch the lockspace's heartbeat object: from then on
        that PG refuses the victim. Resource records are guarded by their versions anyway.
        """
        if not heartbeat.client:
            return "none: the heartbeat names no RADOS client"
        if heartbeat.client == self.client_id():
            raise FenceFailed(f"refusing to blocklist our own RADOS client {heartbeat.client}")
        address = _blocklist_address(heartbeat.client)
        started = time.monotonic()
        with self._cluster_calls() as cluster:  # not under the ioctx lock: renewals go on meanwhile
            self._mon(cluster, {"prefix": "osd blocklist", "blocklistop": "add", "addr": address})
            epoch = int(self._mon(cluster, {"prefix": "osd dump", "format": "json"})["epoch"])
            self._wait_for_osds(cluster, epoch)
            cluster.wait_for_latest_osdmap()
        with self._ops(f"sync PG of {lockspace}'s heartbeats") as io:
            import rados

            try:
                io.stat(_heartbeat_oid(lockspace))
            except rados.ObjectNotFound:
                pass
        return (f"blocklisted lockd client {address} (osdmap epoch {epoch} enforced after "
                f"{time.monotonic() - started:.3f} s)")

    # -- private helpers

    def _use_client(self) -> _Client:
        """The current client, one use of it taken (give it back with ``leave()``); reconnects first when
        the last one was blocklisted or abandoned."""
        with self._client_lock:
            if self._shut_down:
                # We were blocklisted (ESHUTDOWN, reported once as LeaseLost, on which the manager
                # self-fences): a new client (new address nonce) is how this host re-joins, under a new
                # incarnation.
                self._shut_down = False
                self.close()
                self._reconnect = True
            if self._client is None and self._reconnect:
                self._connect()
            if self._client is None or not self._client.enter():
                raise StoreUnavailable("RADOS lease store used before connect() or after close()")
            return self._client

    @contextlib.contextmanager
    def _cluster_calls(self) -> Iterator[Any]:
        """The cluster handle for calls outside the ioctx (mon/osd commands); not shut down meanwhile."""
        client = self._use_client()
        try:
            yield client.cluster
        finally:
            client.leave()

    def _abandon_client(self, client: _Client) -> None:
        """Leave ``client`` to the call stuck in it (never shut down under it) and reconnect at the next
        call: a new client with a new address nonce and a lock of its own. ``client`` is shut down once
        that call returns."""
        with self._client_lock:
            if self._client is client:
                self._client = None
                self._shut_down = False
                self._reconnect = True
        client.retire()

    def _ops(self, what: str) -> _RadosOps:
        return _RadosOps(self, what)

    def _read_omap(self, oid: str) -> tuple[dict[str, str], int | None]:
        """The object's omap and version; ({}, None) when the object does not exist."""
        import rados

        with self._ops(f"read {oid}") as io:
            with rados.ReadOpCtx() as op:
                values, _ = io.get_omap_vals(op, "", "", MAX_HOSTS)
                try:
                    io.operate_read_op(op, oid)
                except rados.ObjectNotFound:
                    return {}, None
                result = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in values}
            return result, int(io.get_last_version())

    def _mon(self, cluster: Any, command: dict[str, Any]) -> dict[str, Any]:
        ret, out, status = cluster.mon_command(json.dumps(command), b"", timeout=int(self.config.op_timeout_s))
        if ret != 0:
            raise FenceFailed(f"ceph {command['prefix']} failed: {status or errno.errorcode.get(-ret, ret)}")
        return json.loads(out) if out else {}

    def _wait_for_osds(self, cluster: Any, epoch: int) -> float:
        started = time.monotonic()
        osds = self._mon(cluster, {"prefix": "osd ls", "format": "json"})
        pending = set(osds if isinstance(osds, list) else [])
        deadline = started + max(10.0, 3 * self.config.op_timeout_s)
        while pending:
            for osd in sorted(pending):
                ret, out, _ = cluster.osd_command(osd, json.dumps({"prefix": "status"}), b"",
                                                  timeout=int(self.config.op_timeout_s))
                if ret == 0 and int(json.loads(out).get("newest_map", 0)) >= epoch:
                    pending.discard(osd)
            if pending:
                if time.monotonic() > deadline:
                    raise FenceFailed(f"OSDs {sorted(pending)} did not reach osdmap epoch {epoch}")
                time.sleep(0.02)
        return time.monotonic() - started


class _Client:
    """One connected librados client (cluster handle + ioctx) and the calls using it.

    Lifecycle: in use (``enter``/``leave`` around every call) -> retired (``retire``: no new call may
    enter) -> shut down by whoever leaves last (at once when idle). Shutting a client down under a running
    call is what this prevents: ``ioctx.close()`` + ``shutdown()`` while another thread was inside an op
    crashed the process with SIGSEGV (3 of 4 runs of 15 tries here) or left that op hanging forever. A
    retired client must still be shut down eventually: without that every reconnect leaked a client's
    threads and buffers (a daemon reached 216 threads and 88 MiB across Ceph restarts)."""

    def __init__(self, cluster: Any, ioctx: Any) -> None:
        self.cluster, self.ioctx = cluster, ioctx
        # get_last_version() reports the ioctx's latest op: the op and the query must not interleave.
        self.op_lock = threading.Lock()
        self._state = threading.Lock()
        self._users = 0
        self._retired = False

    def enter(self) -> bool:
        """Take one use; False once retired."""
        with self._state:
            if self._retired:
                return False
            self._users += 1
            return True

    def leave(self) -> None:
        with self._state:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self._shut_down()

    def retire(self) -> None:
        with self._state:
            if self._retired:
                return
            self._retired = True
            idle = self._users == 0
        if idle:
            self._shut_down()

    def _shut_down(self) -> None:
        with contextlib.suppress(Exception):
            self.ioctx.close()
        with contextlib.suppress(Exception):
            self.cluster.shutdown()


class _RadosOps:
    """One use of the client with its ioctx to itself (yields the ioctx); maps rados errors: a failed guard
    -> VersionConflict, else StoreUnavailable."""

    def __init__(self, store: RadosLeaseStore, what: str) -> None:
        self.store, self.what = store, what

    def __enter__(self) -> Any:
        store = self.store
        self.client = store._use_client()
        # rados_osd_op_timeout does not bound every wait: a read op was seen blocked for minutes after the
        # cluster restarted, holding this lock, so every later call timed out too. An op still running after
        # twice the op timeout is abandoned with its client; later calls get a fresh client.
        if not self.client.op_lock.acquire(timeout=2 * store.config.op_timeout_s):
            self.client.leave()
            store._abandon_client(self.client)
            raise StoreUnavailable(f"{self.what}: an earlier RADOS call is stuck; reconnecting with a new client")
        return self.client.ioctx

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.client.op_lock.release()
        self.client.leave()
        if exc is None:
            self.store._timeouts_in_a_row = 0
            return
        import rados

        if isinstance(exc, rados.Error) and abs(getattr(exc, "errno", 0) or 0) == errno.ETIMEDOUT:
            # A client whose cluster was restarted under it kept timing out for minutes (seen here); a new
            # client finds the restarted daemons at once.
            self.store._timeouts_in_a_row += 1
            if self.store._timeouts_in_a_row >= RECONNECT_AFTER_TIMEOUTS:
                self.store._timeouts_in_a_row = 0
                self.store._abandon_client(self.client)

        if isinstance(exc, rados.Error):
            code = abs(getattr(exc, "errno", 0) or 0)
            if code == errno.ESHUTDOWN:
                self.store._shut_down = True
                raise LeaseLost(f"{self.what}: this lockd's RADOS client was blocklisted (fenced by another "
                                "host or an operator); self-fencing and re-joining with a new client") from None
            if code in _CONFLICT_ERRNOS:
                raise VersionConflict(f"{self.what}: changed under us ({errno.errorcode.get(code, code)})") from None
            raise StoreUnavailable(f"{self.what}: {exc}") from None


def _import_rados() -> ModuleType:
    """python3-rados, imported on a thread of its own the first time (only a daemon using this store needs it).

    Loading librados runs libceph-common's initialisers on the importing thread's stack, about 1 MiB of it
    (measured). A thread that exits gives those pages back (glibc drops a finished thread's stack); the main
    thread or an executor worker would keep them resident for the daemon's lifetime."""
    if "rados" not in sys.modules:
        loader = threading.Thread(target=importlib.import_module, args=("rados",), name="lockd-import-rados")
        loader.start()
        loader.join()
    import rados  # already loaded; or, if loading failed on that thread, the same error again here

    return rados


def _heartbeat_oid(lockspace: str) -> str:
    return HEARTBEAT_PREFIX + validate_lockspace(lockspace)


def _resource_oid(lockspace: str, key: str) -> str:
    return f"{RESOURCE_PREFIX}{validate_lockspace(lockspace)}/{key}"


def _blocklist_address(addrs: str) -> str:
    """``Rados.get_addrs()`` prints ``[v2:127.0.0.1:0/123,v1:...]`` or ``127.0.0.1:0/123``; the blocklist
    wants the plain ``IP:PORT/NONCE`` of one of them (the entry covers the client whatever the protocol)."""
    text = addrs.strip().strip("[]").split(",")[0]
    for prefix in ("v2:", "v1:", "any:"):
        text = text.removeprefix(prefix)
    return text
