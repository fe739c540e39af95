"""Lease store in files on a GlusterFS volume, through libgfapi (``hvstore.protocols.gfapi``), no FUSE.

Layout under ``root`` inside the volume::

    <root>/<lockspace>/heartbeats.json          {"version": N, "hosts": {host: heartbeat text}}
    <root>/<lockspace>/resources/<key>.json     {"version": N, "record": resource text}   (key %-quoted)

Every change is a read-modify-write of one file under an exclusive POSIX lock on that file: pread, check the
expected version/text, pwrite, ftruncate, fsync, unlock. Every read takes a shared lock around its pread, so
it never sees a half-rewritten file. A record file that exists but is empty is a record never written (an
exclusive create raced and lost, or a creator crashed before its first write).

The volume must be replica 3 with ``cluster.quorum-type auto``, ``cluster.eager-lock off`` and the client
caches off (write-behind, quick-read, io-cache, read-ahead, stat-prefetch, open-behind): measured here,
POSIX locks alone lost 1-3 of 400 locked increments on a distribute volume and 130 on replica 3 with the
defaults, none with those options (the lab's ``hvrep3``). Locks are taken without blocking and retried until
``lock_timeout_s`` (then StoreUnavailable), so a frozen holder stalls a record for that long at most per call;
a killed holder's locks are freed by the bricks as its connection drops (2-4 ms here).

Fencing: none. Gluster cannot cut a client off (no blocklist; its leases do not fence), so a taker relies on
the holder's self-fence and the full TTL (``fence_client`` does nothing), like the file store.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from hvstore.errors import BackendUnavailable
from hvstore.protocols import gfapi
from lockd.errors import ProtocolError, StoreUnavailable, VersionConflict
from lockd.lease import Heartbeat, Resource, Versioned, validate_lockspace
from lockd.stores.base import LeaseStore, updated_heartbeats, updated_resource

HEARTBEATS = "heartbeats.json"
RESOURCES = "resources"
MAX_QUOTED_NAME = 200  # + ".json" stays below NAME_MAX (255)
LOCK_RETRY_S = 0.002


@dataclass(frozen=True)
class GlusterStoreConfig:
    volume: str
    server: str = "127.0.0.1"
    port: int = gfapi.DEFAULT_PORT
    root: str = "/lockd"
    lock_timeout_s: float = 2.0
    log_file: str = "/dev/null"


class GlusterLeaseStore(LeaseStore):
    kind: ClassVar[str] = "gluster"

    def __init__(self, config: GlusterStoreConfig) -> None:
        self.config = config
        self._mount: gfapi.GlusterMount | None = None

    @property
    def describe(self) -> str:
        cfg = self.config
        return f"gluster:{cfg.server}:{cfg.port}/{cfg.volume}{cfg.root}"

    def connect(self) -> None:
        if self._mount is not None:
            return
        cfg = self.config
        try:
            mount = gfapi.mount(cfg.volume, server=cfg.server, port=cfg.port, log_file=cfg.log_file)
            mount.makedirs(cfg.root)
        except BackendUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None
        except OSError as exc:
            raise StoreUnavailable(f"gluster {self.describe}: {exc.strerror or exc}") from None
        self._mount = mount  # never unmounted: glfs_fini costs ~10 s, the mount is per process anyway

    def close(self) -> None:
        self._mount = None

    def lockspaces(self) -> list[str]:
        with self._errors(self.config.root):
            return sorted(n for n in self.mount.listdir(self.config.root) if not n.startswith("."))

    def read_heartbeats(self, lockspace: str) -> dict[str, Heartbeat]:
        data = self._read(self._space(lockspace) + "/" + HEARTBEATS)
        if data is None:
            return {}
        return {host: Heartbeat.decode(text) for host, text in data.get("hosts", {}).items()}

    def write_heartbeat(self, lockspace: str, heartbeat: Heartbeat, *, expected: Heartbeat | None) -> None:
        with self._locked(self._space(lockspace) + "/" + HEARTBEATS) as (file, data):
            self._rewrite(file, updated_heartbeats(data, lockspace, heartbeat, expected))

    def read_resource(self, lockspace: str, key: str) -> Versioned[Resource] | None:
        data = self._read(self._resource_path(lockspace, key))
        if data is None:
            return None
        return Versioned(Resource.decode(data["record"]), int(data["version"]))

    def write_resource(self, lockspace: str, record: Resource, *, expected_version: int | None) -> int:
        with self._locked(self._resource_path(lockspace, record.key)) as (file, data):
            document = updated_resource(data, lockspace, record, expected_version)
            self._rewrite(file, document)
            return int(document["version"])

    def list_resources(self, lockspace: str) -> list[Versioned[Resource]]:
        directory = self._space(lockspace) + "/" + RESOURCES
        with self._errors(directory):
            try:
                names = sorted(n for n in self.mount.listdir(directory) if n.endswith(".json"))
            except FileNotFoundError:
                return []
        records = []
        for name in names:
            data = self._read(f"{directory}/{name}")
            if data is not None:
                records.append(Versioned(Resource.decode(data["record"]), int(data["version"])))
        return sorted(records, key=lambda v: v.value.key)

    # -- private helpers

    @property
    def mount(self) -> gfapi.GlusterMount:
        if self._mount is None:
            self.connect()
        assert self._mount is not None
        return self._mount

    def _space(self, lockspace: str) -> str:
        return f"{self.config.root}/{validate_lockspace(lockspace)}"

    def _resource_path(self, lockspace: str, key: str) -> str:
        # As in the file store: quote() makes any key one safe file name; too long ones use their SHA-256
        # behind "%%" (which quote() never produces). The record carries the key, so listing decodes no name.
        name = quote(key, safe="")
        if len(name) > MAX_QUOTED_NAME:
            name = "%%sha256-" + hashlib.sha256(key.encode()).hexdigest()
        return f"{self._space(lockspace)}/{RESOURCES}/{name}.json"

    def _read(self, path: str) -> dict[str, Any] | None:
        with self._errors(path):
            try:
                file = self.mount.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            with file:
                self._lock(file, exclusive=False)
                return _decode(path, file.pread(0, file.size()))

    @contextmanager
    def _locked(self, path: str) -> Iterator[tuple[gfapi.GlusterFile, dict[str, Any] | None]]:
        """Open (creating it and its directories) and exclusively lock ``path``; yield it with its record."""
        with self._errors(path):
            try:
                file = self.mount.open(path, os.O_RDWR | os.O_CREAT)
            except FileNotFoundError:
                self.mount.makedirs(path.rsplit("/", 1)[0])
                file = self.mount.open(path, os.O_RDWR | os.O_CREAT)
            with file:
                self._lock(file, exclusive=True)
                yield file, _decode(path, file.pread(0, file.size()))

    def _lock(self, file: gfapi.GlusterFile, *, exclusive: bool) -> None:
        deadline = time.monotonic() + self.config.lock_timeout_s
        while True:
            try:
                file.lock(exclusive=exclusive)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"{file.path} stayed locked by another host for "
                                           f"{self.config.lock_timeout_s:g} s") from None
                time.sleep(LOCK_RETRY_S)

    @staticmethod
    def _rewrite(file: gfapi.GlusterFile, data: dict[str, Any]) -> None:
        raw = json.dumps(data, sort_keys=True).encode()
        file.pwrite(0, raw)
        file.ftruncate(len(raw))
        file.fsync()  # the change counts only once every replica in the quorum has it

    @contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, VersionConflict, StoreUnavailable, ProtocolError):
            raise
        except BackendUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None
        except OSError as exc:
            what = "quorum lost (read-only)" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
            raise StoreUnavailable(f"gluster {self.config.volume}:{path}: {what}") from None


def _decode(path: str, raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None  # created, never written: no record
    try:
        data = json.loads(raw)
    except ValueError:
        raise ProtocolError(f"gluster {path} is not a lease record (corrupt JSON)") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"gluster {path} is not a lease record")
    return data
