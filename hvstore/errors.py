"""One exception tree for the storage library.

The CLI converts these to exit codes in exactly one place (``hvstore.cli.app``): a ``UserError`` is
something the caller can fix (exit 2), anything else is a failure of the store or of a tool (exit 1).
Messages are one line and name the store, the volume and, where there is one, the next step.
"""

from __future__ import annotations


class HvstoreError(Exception):
    """Base of every error hvstore raises on purpose."""

    exit_code = 1


class UserError(HvstoreError):
    """The request itself is wrong: unknown store, bad name or size, missing volume, ..."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration file is missing, unreadable or names an unknown backend or key."""


class InvalidArgument(UserError):
    """A name, size or option that can never be valid."""


class NotFound(UserError):
    """The store, volume or snapshot does not exist."""


class AlreadyExists(UserError):
    """A volume or snapshot of that name exists already."""


class Busy(UserError):
    """The object is in use (open watchers, clones, a protected snapshot); ``--force`` may override."""


class Unsupported(UserError):
    """The backend cannot do this; its capability table says why."""

    def __init__(self, backend: str, operation: str, reason: str) -> None:
        super().__init__(f"{backend} cannot {operation}: {reason}")
        self.backend = backend
        self.operation = operation
        self.reason = reason


class BackendUnavailable(HvstoreError):
    """The storage service cannot be reached (not running, wrong address, refused credentials)."""


class ToolFailed(HvstoreError):
    """An external tool (qemu-img, rbd, tgtadm, ...) exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr_tail: str) -> None:
        tail = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else "no output"
        super().__init__(f"{argv[0]} failed (exit {returncode}): {tail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail
