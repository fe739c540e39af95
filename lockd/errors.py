"""One exception tree for lockd.

It is converted at exactly two boundaries: the CLI maps ``exit_code`` to the process exit status (2 for
anything the caller got wrong or can retry, 1 for a failure of the store or the daemon), and the admin API
and the virtlockd RPC layer turn an error into their wire form with ``to_wire()`` / ``from_wire()``.
Messages are one line and name the lockspace, the key or the host, and where there is one, the next step.
"""

from __future__ import annotations

from typing import Any


class LockdError(Exception):
    """Base of every error lockd raises on purpose."""

    exit_code = 1

    def details(self) -> dict[str, Any]:
        """Extra machine-readable fields for ``--json`` and the admin API (none by default)."""
        return {}

    def to_wire(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self), "exit_code": self.exit_code,
                **self.details()}


class UserError(LockdError):
    """The request itself is wrong or cannot succeed now; the caller can fix or retry it (exit 2)."""

    exit_code = 2


class ConfigError(UserError):
    """The lockd config file is missing, unreadable or invalid."""


class InvalidRequest(UserError):
    """A lockspace, key, pid or option that can never be valid."""


class NotFound(UserError):
    """No such lease, owner or host."""


class LeaseHeld(UserError):
    """ACQUIRE cannot be granted now: another owner holds the lease, or its holder is not yet known dead.

    ``retry_after_s`` is the earliest time (seconds from now) at which a retry could succeed if nothing
    changes; ``None`` when only a release by the holder can free it.
    """

    def __init__(self, message: str, *, reason: str, retry_after_s: float | None,
                 holders: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.holders = holders

    def details(self) -> dict[str, Any]:
        return {"reason": self.reason, "retry_after_s": self.retry_after_s, "holders": list(self.holders)}


class LeaseLost(LockdError):
    """This host no longer holds a lease it thought it held (evicted, taken over, or renewal too late)."""


class StoreUnavailable(LockdError):
    """The lease store cannot be reached or did not answer in time."""


class VersionConflict(LockdError):
    """A compare-and-swap lost: the record changed since it was read. Callers re-read and decide again."""


class DaemonUnavailable(LockdError):
    """The CLI cannot reach lockd's admin socket (daemon not running, wrong path, permission)."""


class ProtocolError(LockdError):
    """A malformed request or reply on the admin socket or the virtlockd socket."""


class FenceFailed(LockdError):
    """Storage-side fencing of a dead host did not complete; its leases are not taken over."""


_BY_NAME: dict[str, type[LockdError]] = {
    cls.__name__: cls
    for cls in (LockdError, UserError, ConfigError, InvalidRequest, NotFound, LeaseHeld, LeaseLost,
                StoreUnavailable, VersionConflict, DaemonUnavailable, ProtocolError, FenceFailed)
}


def from_wire(payload: dict[str, Any]) -> LockdError:
    """Rebuild an error sent by ``to_wire`` (the CLI side of the admin API)."""
    name = str(payload.get("type", "LockdError"))
    message = str(payload.get("message", "unknown error"))
    cls = _BY_NAME.get(name, LockdError)
    if cls is LeaseHeld:
        return LeaseHeld(message, reason=str(payload.get("reason", "")),
                         retry_after_s=payload.get("retry_after_s"),
                         holders=tuple(payload.get("holders", ())))
    error = cls(message)
    if cls is LockdError and payload.get("exit_code") == 2:
        error = UserError(message)
    return error


def first_lockd_error(group: BaseExceptionGroup) -> BaseException | None:
    """The first lockd error inside an exception group (a TaskGroup raises those), however deeply nested;
    None when the group holds none, so the caller re-raises what it does not know."""
    matched, _ = group.split(LockdError)
    first: BaseException | None = matched
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
