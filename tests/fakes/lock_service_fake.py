"""FakeLockService: an in-memory LockService with virtlockd 9.0's semantics, for the rpc tests only.

A fake (the real service is lockd/manager.py). It reproduces virtlockd's lock table (spec §6): exact
lockspace keys created by CREATE_LOCKSPACE/NEW, resources owned by pids, exclusive vs SHARED, files that
must exist unless AUTOCREATE, and the EOF rule (the QEMU-held connection's close by its peer releases that
pid's resources and "kills" it if it held any: recorded in ``killed``, no signal is sent). With
``implicit_root`` set it behaves like lockd instead: any lockspace under that root exists without a
prior CREATE_LOCKSPACE and resources need no file.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from lockd.errors import LeaseHeld
from lockd.rpc.virtlockd import (
    AcquireFlags,
    ConnectionEnd,
    ConnectionState,
    LockspaceExists,
    LockspaceNotFound,
    NotResourceOwner,
    Owner,
    ResourceNotLocked,
)


@dataclass
class FakeResource:
    shared: bool
    autocreate: bool
    owners: list[int] = field(default_factory=list)


class FakeLockService:
    def __init__(self, *, existing_files: Iterable[str] = (), implicit_root: str | None = None) -> None:
        self.lockspaces: dict[str, dict[str, FakeResource]] = {"": {}}
        self.files: set[str] = set(existing_files)
        self.implicit_root = implicit_root
        self.registered: list[Owner] = []
        self.killed: list[int] = []
        self.closed: list[tuple[ConnectionState, ConnectionEnd]] = []
        self._closed_changed = asyncio.Condition()

    # LockService -------------------------------------------------------------------------------------

    async def register(self, conn: ConnectionState, owner: Owner) -> None:
        self.registered.append(owner)

    async def create_lockspace(self, path: str) -> None:
        self.lockspaces.setdefault(path, {})

    async def new_lockspace(self, path: str) -> None:
        if path in self.lockspaces:
            raise LockspaceExists(path)
        self.lockspaces[path] = {}

    async def create_resource(self, path: str, name: str) -> None:
        resources = self._lockspace(path)
        if name in resources:
            raise self._busy(path, name)
        self.files.add(_file(path, name))

    async def delete_resource(self, path: str, name: str) -> None:
        resources = self._lockspace(path)
        if name in resources:
            raise self._busy(path, name)
        self.files.discard(_file(path, name))

    async def acquire(self, owner: Owner, path: str, name: str, flags: AcquireFlags) -> None:
        resources = self._lockspace(path)
        resource = resources.get(name)
        shared = bool(flags & AcquireFlags.SHARED)
        if resource is None:
            file_path = _file(path, name)
            if flags & AcquireFlags.AUTOCREATE:
                self.files.add(file_path)
            elif self.implicit_root is None and file_path not in self.files:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), file_path)
            resources[name] = FakeResource(shared, bool(flags & AcquireFlags.AUTOCREATE), [owner.pid])
        elif resource.shared and shared:
            resource.owners.append(owner.pid)
        else:
            raise self._busy(path, name)

    async def release(self, owner: Owner, path: str, name: str) -> None:
        resources = self._lockspace(path)
        resource = resources.get(name)
        if resource is None:
            raise ResourceNotLocked(f"{path}/{name} is not locked")
        if owner.pid not in resource.owners:
            raise NotResourceOwner(f"pid {owner.pid} does not hold {path}/{name}")
        self._drop_owner(path, name, owner.pid)

    async def connection_closed(self, conn: ConnectionState, end: ConnectionEnd) -> None:
        if end is ConnectionEnd.PEER_CLOSED and conn.held_by_owner:
            assert conn.owner is not None
            held = [(path, name) for path, resources in self.lockspaces.items()
                    for name, resource in resources.items() if conn.owner.pid in resource.owners]
            for path, name in held:
                while name in self.lockspaces[path] and conn.owner.pid in self.lockspaces[path][name].owners:
                    self._drop_owner(path, name, conn.owner.pid)
            if held:
                self.killed.append(conn.owner.pid)
        async with self._closed_changed:
            self.closed.append((conn, end))
            self._closed_changed.notify_all()

    # test helpers --------------------------------------------------------------------------------------

    async def wait_closed(self, count: int) -> None:
        """Until ``count`` connections have been reported closed (the caller bounds the wait)."""
        async with self._closed_changed:
            await self._closed_changed.wait_for(lambda: len(self.closed) >= count)

    def holders(self, path: str, name: str) -> list[int]:
        resource = self.lockspaces.get(path, {}).get(name)
        return list(resource.owners) if resource is not None else []

    # internals ------------------------------------------------------------------------------------------

    def _lockspace(self, path: str) -> dict[str, FakeResource]:
        if path in self.lockspaces:
            return self.lockspaces[path]
        root = self.implicit_root
        if root is not None and path.startswith(root.rstrip("/") + "/"):
            return self.lockspaces.setdefault(path, {})
        raise LockspaceNotFound(path)

    def _drop_owner(self, path: str, name: str, pid: int) -> None:
        resource = self.lockspaces[path][name]
        resource.owners.remove(pid)
        if not resource.owners:
            del self.lockspaces[path][name]
            if resource.autocreate:
                self.files.discard(_file(path, name))

    @staticmethod
    def _busy(path: str, name: str) -> LeaseHeld:
        return LeaseHeld(f"lease {name!r} in lockspace {path!r} is held", reason="held", retry_after_s=None)


def _file(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name
