"""How a dead holder is cut off from a volume's data path, seen from lockd.

QEMU opens the disk with its own storage client, so cutting off the dead host's *lockd* (the lease store's
``fence_client``) stops none of its VMs. Data-path fencing belongs to the volume's backend (the hvstore
``fence`` verb: RBD blocklists the dead host's watchers of the image header, iSCSI removes its initiators
from the ACL, DRBD outdates the dead node); lockd calls it through this small ``Fencer`` protocol, so lockd
does not depend on how.

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
    could be done and the caller relies on self-fence). ``detail`` is one line for the log; ``fenced`` the
    clients/initiators/nodes cut off."""

    done: bool
    method: str
    detail: str
    fenced: tuple[str, ...] = ()


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
    (``Backend.lease``); ``fence`` calls that backend's ``fence(volume, dead_host=host, keep_host=<this
    host>)``, whatever the backend (RBD blocklists the dead host's watchers, iSCSI removes its initiators
    from the ACL, DRBD outdates the dead node; each returns once it is in force and never touches the
    keeper's clients). A backend without fencing (its capability table says why) and lockspaces that name
    no store fence nothing: the taker then relies on the holder's self-fence (result method 'none').
    """

    LOCKSPACE_PREFIX = "hvstore-"

    def __init__(self, hvstore_config: str | None = None, *, keep_host: str | None = None) -> None:
        self.hvstore_config = hvstore_config
        self.keep_host = keep_host
        self._backends: dict[str, Any] = {}
        self._lock = threading.Lock()

    def fence(self, host: str, lease: LeaseRef) -> FenceResult:
        from hvstore.errors import HvstoreError, NotFound, Unsupported

        if not lease.lockspace.startswith(self.LOCKSPACE_PREFIX):
            return NoFencer().fence(host, lease)
        store = lease.lockspace.removeprefix(self.LOCKSPACE_PREFIX)
        volume = f"{store}/{lease.key}"
        try:
            with self._lock:
                result = self._backend(store).fence(lease.key, dead_host=host, keep_host=self.keep_host)
        except Unsupported as exc:
            return FenceResult(True, "none", f"{exc}: relying on {host}'s self-fence within the TTL")
        except NotFound:
            return FenceResult(True, "none", f"{volume} does not exist: nothing to fence")
        except HvstoreError as exc:
            return FenceResult(False, "backend", f"fencing {host} off {volume}: {exc}")
        note = f"; {result.note}" if result.note else ""
        if not result.fenced:
            return FenceResult(True, result.method, f"no client of {host} has {volume} open{note}")
        return FenceResult(True, result.method, f"{result.method}: cut {', '.join(result.fenced)} of {host} off "
                                                f"{volume} in {result.seconds:.3f} s{note}", result.fenced)

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
