"""How a dead holder is cut off from a volume's data path, seen from lockd.

QEMU opens the disk with its own storage client, so cutting off the dead host's *lockd* (the lease store's
``fence_client``) stops none of its VMs. Data-path fencing belongs to the volume's backend (the hvstore
``fence`` verb: RBD blocklists the dead host's watchers of the image header, iSCSI removes its initiators
from the ACL); lockd calls it through this small ``Fencer`` protocol, so lockd does not depend on how.

``NoFencer`` is what the file store (and any store without data-path fencing) uses: it fences nothing and
says so; the taker then relies on the holder's self-fence, which the liveness rule (a full TTL of
observation) already waits for. ``BackendFencer`` goes through the hvstore backend of the lease's store
(config ``fencer = "hvstore"``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class LeaseRef:
    """A lease by lockspace and key; the lockspace names the store, the key the volume."""

    lockspace: str
    key: str

    def __str__(self) -> str:
        return f"{self.lockspace}/{self.key}"


@dataclass(frozen=True)
class FenceResult:
    """``done``: the dead host can no longer write to the lease's volume (or, with method 'none', nothing
    could be done and the caller relies on self-fence). ``detail`` is one line for the log."""

    done: bool
    method: str
    detail: str


class Fencer(Protocol):
    def fence(self, host: str, lease: LeaseRef) -> FenceResult:
        """Cut ``host`` off the volume behind ``lease``; block until effective (e.g. every OSD has the new
        osdmap epoch). Must never cut off this host's own clients. Idempotent. Blocking (run in a thread)."""
        ...


class NoFencer:
    """No data-path fencing: rely on the holder's self-fence and the full TTL."""

    def fence(self, host: str, lease: LeaseRef) -> FenceResult:
        return FenceResult(True, "none", f"no data-path fencing for {lease}: relying on {host}'s self-fence "
                                         "within the TTL")


class BackendFencer:
    """Data-path fencing through the hvstore volume backend of the lease's store.

    A lease's lockspace ``hvstore-<store>`` names the store in hvstore.toml and its key the volume
    (``Backend.lease``). A backend that can fence (RBD: ``watchers``/``identify_watchers``/
    ``fence_watchers``) blocklists the clients of the dead host's cephx identity (``client.<host>``) that
    have the image open, and returns once every OSD enforces it; every other watcher, the acquirer's new
    QEMU included, is left alone. Other backends, and lockspaces that name no store, fence nothing: the
    taker then relies on the holder's self-fence (result method 'none').
    """

    LOCKSPACE_PREFIX = "hvstore-"

    def __init__(self, hvstore_config: str | None = None) -> None:
        self.hvstore_config = hvstore_config
        self._backends: dict[str, Any] = {}
        self._lock = threading.Lock()

    def fence(self, host: str, lease: LeaseRef) -> FenceResult:
        from hvstore.errors import HvstoreError, NotFound

        if not lease.lockspace.startswith(self.LOCKSPACE_PREFIX):
            return NoFencer().fence(host, lease)
        store = lease.lockspace.removeprefix(self.LOCKSPACE_PREFIX)
        try:
            with self._lock:
                backend = self._backend(store)
                if not hasattr(backend, "fence_watchers"):
                    return FenceResult(True, "none", f"store {store} ({backend.kind}) has no data-path fencing: "
                                                     f"relying on {host}'s self-fence within the TTL")
                try:
                    watchers = backend.identify_watchers(backend.watchers(lease.key))
                except NotFound:
                    return FenceResult(True, "rbd-blocklist", f"{store}/{lease.key} does not exist: nothing to fence")
                victims = [w for w in watchers if w.entity == f"client.{host}"]
                unknown = sum(1 for w in watchers if w.entity is None)
                if victims:
                    backend.fence_watchers(lease.key, victims)
        except HvstoreError as exc:
            return FenceResult(False, "rbd-blocklist", f"{store}/{lease.key}: {exc}")
        note = f"; {unknown} watcher(s) of unknown identity left alone" if unknown else ""
        if not victims:
            return FenceResult(True, "rbd-blocklist", f"no client of {host} has {store}/{lease.key} open{note}")
        return FenceResult(True, "rbd-blocklist", f"blocklisted {', '.join(w.addr for w in victims)} "
                                                  f"(client.{host}) on {store}/{lease.key}{note}")

    def close(self) -> None:
        with self._lock:
            for backend in self._backends.values():
                backend.close()
            self._backends.clear()

    def _backend(self, store: str) -> Any:
        backend = self._backends.get(store)
        if backend is None:
            from hvstore.config import load_config

            backend = load_config(self.hvstore_config).store(store).backend()
            backend.connect()
            self._backends[store] = backend
        return backend
