"""Lease store in a directory on a POSIX filesystem (local, or shared by NFS/CephFS/FUSE with POSIX locks).

Layout under ``root``::

    <lockspace>/.lock                   fcntl (POSIX record) lock taken around every read-modify-write
    <lockspace>/heartbeats.json         {"version": N, "hosts": {host: heartbeat text}}
    <lockspace>/resources/<key>.json    {"version": N, "record": resource text}   (key %-quoted)

Every change is read-modify-write under the lockspace's exclusive lock, written to a temporary file, fsync'd,
renamed over the old one and the directory fsync'd, so a crash leaves the old or the new record, never a torn
one. Readers need no lock (rename is atomic). POSIX locks belong to the process, so a thread lock per
directory serializes this process's own threads and store objects.

Limit: a writer frozen (SIGSTOP, a stalled NFS client) while it holds a lockspace's lock blocks every other
writer of that lockspace until it resumes or dies, so every host's renewals there fail and they self-fence.

It is the embedded default for one host and for unit tests. Fencing: none beyond the holder's self-fence, so a
taker relies on the full TTL (``fence_client`` does nothing).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from lockd.errors import ProtocolError, StoreUnavailable
from lockd.lease import Heartbeat, Resource, Versioned, validate_lockspace
from lockd.stores.base import LeaseStore, updated_heartbeats, updated_resource

HEARTBEATS = "heartbeats.json"
RESOURCES = "resources"
MAX_QUOTED_NAME = 200  # + ".json" and the temporary file's suffix stay below NAME_MAX (255)


_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(root: Path) -> threading.Lock:
    """One thread lock per directory and process. POSIX locks do not exclude the threads of one process
    from each other (and closing any fd of the file drops them all), so every store object of this process
    on the same directory must take the same thread lock first."""
    key = os.path.realpath(root)
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(key, threading.Lock())


class FileLeaseStore(LeaseStore):
    kind: ClassVar[str] = "file"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._thread_lock = _process_lock(self.root)

    @property
    def describe(self) -> str:
        return f"file:{self.root}"

    def connect(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"lease directory {self.root}: {exc.strerror}") from None

    def lockspaces(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            raise StoreUnavailable(f"lease directory {self.root}: {exc.strerror}") from None

    def read_heartbeats(self, lockspace: str) -> dict[str, Heartbeat]:
        data = self._read_json(self._space(lockspace) / HEARTBEATS)
        if data is None:
            return {}
        return {host: Heartbeat.decode(text) for host, text in data.get("hosts", {}).items()}

    def write_heartbeat(self, lockspace: str, heartbeat: Heartbeat, *, expected: Heartbeat | None) -> None:
        path = self._space(lockspace) / HEARTBEATS
        with self._locked(lockspace):
            self._write_json(path, updated_heartbeats(self._read_json(path), lockspace, heartbeat, expected))

    def read_resource(self, lockspace: str, key: str) -> Versioned[Resource] | None:
        data = self._read_json(self._resource_path(lockspace, key))
        if data is None:
            return None
        return Versioned(Resource.decode(data["record"]), int(data["version"]))

    def write_resource(self, lockspace: str, record: Resource, *, expected_version: int | None) -> int:
        path = self._resource_path(lockspace, record.key)
        with self._locked(lockspace):
            document = updated_resource(self._read_json(path), lockspace, record, expected_version)
            path.parent.mkdir(exist_ok=True)
            self._write_json(path, document)
            return int(document["version"])

    def list_resources(self, lockspace: str) -> list[Versioned[Resource]]:
        directory = self._space(lockspace) / RESOURCES
        try:
            names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".json"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreUnavailable(f"lease directory {directory}: {exc.strerror}") from None
        records = []
        for name in names:
            data = self._read_json(directory / name)
            if data is not None:
                records.append(Versioned(Resource.decode(data["record"]), int(data["version"])))
        return sorted(records, key=lambda v: v.value.key)

    # -- private helpers

    def _space(self, lockspace: str) -> Path:
        return self.root / validate_lockspace(lockspace)

    def _resource_path(self, lockspace: str, key: str) -> Path:
        # quote() maps every byte outside [A-Za-z0-9_.-~] so any key is one safe file name. Keys too long
        # for NAME_MAX (255) use their SHA-256 behind "%%", which quote() never produces; the record itself
        # carries the key, so listing never decodes file names.
        name = quote(key, safe="")
        if len(name) > MAX_QUOTED_NAME:
            name = "%%sha256-" + hashlib.sha256(key.encode()).hexdigest()
        return self._space(lockspace) / RESOURCES / (name + ".json")

    @contextmanager
    def _locked(self, lockspace: str) -> Iterator[None]:
        space = self._space(lockspace)
        with self._thread_lock:
            try:
                space.mkdir(parents=True, exist_ok=True)
                fd = os.open(space / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StoreUnavailable(f"lease directory {space}: {exc.strerror}") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing drops the POSIX lock

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise ProtocolError(f"{path} is not a lease record (corrupt JSON)") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"{path} is not a lease record")
        return data

    @staticmethod
    def _write_json(path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(data, sort_keys=True).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreUnavailable(f"cannot write {path}: {exc.strerror}") from None
