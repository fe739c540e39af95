"""The interface every lease store implements: versioned records changed only by compare-and-swap.

Per lockspace a store keeps

* the heartbeats of every host, readable in **one** read (``read_heartbeats``), each written by
  compare-and-swap on its exact previous text (``write_heartbeat(expected=...)``), so a taker can evict a
  host by replacing the exact counter it judged dead, and a renewal racing with it loses;
* one ownership record per lease, versioned, written by compare-and-swap on that version.

Calls are blocking (the daemon runs them in ``asyncio.to_thread`` under ``asyncio.timeout``) and safe to call
from several threads at once. A lost compare-and-swap raises ``VersionConflict``; an unreachable store raises
``StoreUnavailable``. Constructors only store their config; ``connect()`` (or ``with store:``) opens it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, ClassVar, Self

from lockd.errors import VersionConflict
from lockd.lease import Heartbeat, Resource, Versioned


class LeaseStore(ABC):
    """Lifecycle: constructed -> ``connect()`` -> calls -> ``close()``."""

    kind: ClassVar[str]

    def connect(self) -> None:  # noqa: B027 - optional hook: stores without a session need nothing
        """Open the store (cluster handle, directory checks). Idempotent."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the session. Idempotent."""

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def describe(self) -> str:
        """Where the records live, for status output (never a secret)."""
        return self.kind

    @abstractmethod
    def lockspaces(self) -> list[str]:
        """Every lockspace that has heartbeats or records in this store, sorted."""

    @abstractmethod
    def read_heartbeats(self, lockspace: str) -> dict[str, Heartbeat]:
        """All heartbeats of ``lockspace`` by host id, in one read (empty when the lockspace is new)."""

    @abstractmethod
    def write_heartbeat(self, lockspace: str, heartbeat: Heartbeat, *, expected: Heartbeat | None) -> None:
        """Replace the heartbeat of ``heartbeat.host`` if it is still exactly ``expected`` (None: if the host
        has none). Raises VersionConflict otherwise; nothing is written then."""

    @abstractmethod
    def read_resource(self, lockspace: str, key: str) -> Versioned[Resource] | None:
        """The ownership record of one lease with its version; None if it was never written."""

    @abstractmethod
    def write_resource(self, lockspace: str, record: Resource, *, expected_version: int | None) -> int:
        """Write ``record`` if its current version is ``expected_version`` (None: if it does not exist yet).
        Returns the new version. Raises VersionConflict otherwise; nothing is written then."""

    @abstractmethod
    def list_resources(self, lockspace: str) -> list[Versioned[Resource]]:
        """Every ownership record of ``lockspace`` (free ones included), sorted by key. Costs one read per
        record on some stores: for status, not for the renewal path."""

    def client_id(self) -> str:
        """This process's store client as another host would name it to cut it off ('' if none)."""
        return ""

    def fence_client(self, lockspace: str, heartbeat: Heartbeat) -> str:
        """Cut off the store client named in a dead host's heartbeat, and return once it is effective.
        Returns what was done, for the log. The default (stores without clients to cut off) does nothing."""
        return "none: this store has no client fencing; relying on the holder's self-fence"


# -- the record documents of the file-like stores (file, gluster) -------------------------------------------
# Both keep a lockspace's heartbeats in one JSON document {"version": N, "hosts": {host: encoded}} and each
# lease in one {"version": N, "record": encoded}; these give the guarded update, the store does the locked I/O.

def updated_heartbeats(document: dict[str, Any] | None, lockspace: str, heartbeat: Heartbeat,
                       expected: Heartbeat | None) -> dict[str, Any]:
    """The heartbeat document with ``heartbeat`` in it, if the host's entry is still ``expected`` (None: absent);
    VersionConflict otherwise."""
    document = document or {"version": 0, "hosts": {}}
    wanted = expected.encode() if expected is not None else None
    if document["hosts"].get(heartbeat.host) != wanted:
        raise VersionConflict(f"heartbeat of {heartbeat.host} in {lockspace} changed under us")
    document["hosts"][heartbeat.host] = heartbeat.encode()
    document["version"] += 1
    return document


def updated_resource(document: dict[str, Any] | None, lockspace: str, record: Resource,
                     expected_version: int | None) -> dict[str, Any]:
    """The lease document holding ``record``, if its version is still ``expected_version`` (None: absent);
    VersionConflict otherwise."""
    current_version = int(document["version"]) if document is not None else None
    if current_version != expected_version:
        raise VersionConflict(f"lease {lockspace}/{record.key} changed under us "
                              f"(version {current_version}, expected {expected_version})")
    return {"version": (current_version or 0) + 1, "record": record.encode()}
