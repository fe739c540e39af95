"""Owner processes: a pid plus its start time, so a reused pid is never mistaken for the owner.

The start time is field 22 of /proc/PID/stat (clock ticks since boot). A process handle (pidfd) is opened
once per owner: it becomes readable when the process exits (the manager releases its leases then) and
``pidfd_send_signal`` can kill exactly that process, never a successor that reused the pid.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from lockd.errors import InvalidRequest, ProtocolError


@dataclass(frozen=True, order=True, slots=True)
class ProcessRef:
    pid: int
    start_time: int

    @classmethod
    def of_pid(cls, pid: int) -> ProcessRef:
        """The running process ``pid``; InvalidRequest if there is none."""
        if pid <= 0:
            raise InvalidRequest(f"invalid owner pid {pid}")
        start = process_start_time(pid)
        if start is None:
            raise InvalidRequest(f"no process with pid {pid}")
        return cls(pid, start)

    def alive(self) -> bool:
        """Still the same process, and not a zombie."""
        return process_start_time(self.pid) == self.start_time

    def to_json(self) -> list[int]:
        return [self.pid, self.start_time]

    @classmethod
    def from_json(cls, data: object) -> ProcessRef:
        if not (isinstance(data, list) and len(data) == 2 and all(isinstance(v, int) for v in data)):
            raise ProtocolError(f"malformed owner {data!r} (want [pid, start_time])")
        return cls(data[0], data[1])


def process_start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces and ')': split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class ProcessHandle:
    """An open pidfd on one owner; ``fileno()`` turns readable when the process exits."""

    def __init__(self, process: ProcessRef) -> None:
        self.process = process
        self.alone = (process,)  # the owners of a lease only this process holds (shared by all of them)
        self.fd = os.pidfd_open(process.pid)
        # The pid may have been reused between looking it up and opening the fd: check it is still ours.
        if not process.alive():
            os.close(self.fd)
            raise ProcessLookupError(process.pid)

    def fileno(self) -> int:
        return self.fd

    def kill(self) -> None:
        """SIGKILL exactly this process (a no-op if it has exited)."""
        try:
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
