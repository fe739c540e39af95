"""The lock work behind libvirt's virtlockd protocol: ``lockd.rpc.virtlockd.LockService`` on a LeaseManager.

Mapping (``lockd.rpc.virtlockd.parse_resource``): a ``<lease>`` arrives as path ``<lease_root>/<LS>`` and
name ``<KEY>`` and becomes lease ``LS/KEY``; a file/block disk in virtlockd's direct mode (path "") becomes
lease ``direct/<disk path>``. Records are never deleted (a fencing token must never go back), so
DELETE_RESOURCE only checks that nobody holds the lease.
"""

from __future__ import annotations

from lockd.errors import LeaseHeld, NotFound
from lockd.lease import Mode, validate_lockspace
from lockd.manager import LeaseManager
from lockd.rpc.virtlockd import (
    AcquireFlags,
    ConnectionEnd,
    ConnectionState,
    DiskLease,
    LockspaceExists,
    NotResourceOwner,
    Owner,
    ResourceNotLocked,
    parse_resource,
)

DIRECT_LOCKSPACE = "direct"


class VirtlockdService:
    def __init__(self, manager: LeaseManager, *, lease_root: str) -> None:
        self.manager = manager
        self.lease_root = lease_root

    def lease(self, path: str, name: str) -> tuple[str, str]:
        """(lockspace, key) for a virtlockd (path, name)."""
        parsed = parse_resource(path, name, lease_root=self.lease_root)
        if isinstance(parsed, DiskLease):
            return DIRECT_LOCKSPACE, parsed.path
        return validate_lockspace(parsed.lockspace), parsed.key

    def lockspace(self, path: str) -> str:
        if path == "":
            return DIRECT_LOCKSPACE
        return self.lease(path, "probe")[0]

    async def register(self, conn: ConnectionState, owner: Owner) -> None:
        """Nothing to do until ACQUIRE: the owner is the pid, checked (with its start time) there."""

    async def create_lockspace(self, path: str) -> None:
        self.lockspace(path)  # lockspaces exist implicitly once valid; joined on first acquire

    async def new_lockspace(self, path: str) -> None:
        lockspace = self.lockspace(path)
        if path and lockspace in self.manager.status_lockspaces():
            raise LockspaceExists(path)

    async def create_resource(self, path: str, name: str) -> None:
        await self._refuse_if_held(*self.lease(path, name))

    async def delete_resource(self, path: str, name: str) -> None:
        await self._refuse_if_held(*self.lease(path, name))

    async def acquire(self, owner: Owner, path: str, name: str, flags: AcquireFlags) -> None:
        lockspace, key = self.lease(path, name)
        mode = Mode.SHARED if flags & AcquireFlags.SHARED else Mode.EXCLUSIVE
        held = self.manager.held(lockspace, key)
        if held is not None and mode == Mode.EXCLUSIVE:
            # virtlockd: an exclusive lock conflicts with anything, the same owner's included.
            raise LeaseHeld(f"lease {lockspace}/{key} is held on this host", reason="held on this host",
                            retry_after_s=None)
        await self.manager.acquire(lockspace, key, owner.pid, mode=mode)

    async def release(self, owner: Owner, path: str, name: str) -> None:
        lockspace, key = self.lease(path, name)
        held = self.manager.held(lockspace, key)
        if held is None:
            raise ResourceNotLocked(f"Lockspace resource '{name}' is not locked")
        if not any(p.pid == owner.pid for p in held.owners):
            raise NotResourceOwner(f"Lockspace resource '{name}' is not locked by pid {owner.pid}")
        try:
            await self.manager.release(lockspace, key, owner.pid)
        except NotFound:
            raise NotResourceOwner(f"Lockspace resource '{name}' is not locked by pid {owner.pid}") from None

    async def connection_closed(self, conn: ConnectionState, end: ConnectionEnd) -> None:
        if end is ConnectionEnd.SERVER_SHUTDOWN or not conn.held_by_owner or conn.owner is None:
            return
        # QEMU's own connection closed: it is gone (or must be): release its leases, killing it if it runs.
        await self.manager.release_pid(conn.owner.pid, kill=True)

    async def _refuse_if_held(self, lockspace: str, key: str) -> None:
        record = await self.manager.peek(lockspace, key)
        if record is not None and not record.free:
            raise LeaseHeld(f"lease {lockspace}/{key} is held by {', '.join(map(str, record.holders))}",
                            reason="held", retry_after_s=None, holders=tuple(map(str, record.holders)))
