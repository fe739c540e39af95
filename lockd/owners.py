"""Owner processes: a pid plus its start time, so a reused pid is never mistaken for the owner.

The start time is field 22 of /proc/PID/stat (clock ticks since boot). A process handle (pidfd) is opened
once per owner: it becomes readable when the process exits (the manager releases its leases then) and
``pidfd_send_signal`` can kill exactly that process, never a successor that reused the pid.

Stand-ins (``stand_in``): the processes that benches, baselines and scenarios register as owners in place
of a QEMU. They die with their spawner on every path, a crash or SIGKILL of the spawner included: a
``sleep 3600`` left by a compare process that died of SIGSEGV held its caller's output pipe for minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# -- stand-ins for owners ------------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STAND_IN_ARGV = ("sleep", "3600")


def spawn_stand_in(argv: Sequence[str] = STAND_IN_ARGV, **popen: Any) -> subprocess.Popen[Any]:
    """Start a process standing for a lease owner; the kernel SIGKILLs it when its spawner dies.

    The child sets PR_SET_PDEATHSIG before it execs, and exits at once if its parent is already gone by
    then (it died between fork and prctl). The kernel's "parent" is the spawning *thread*: a stand-in
    spawned on a thread that ends dies with that thread, so spawn it on one that outlives its use.
    ``popen`` goes to ``subprocess.Popen`` as is. The caller still ends it on its normal paths
    (``end_stand_in``, or use ``stand_in()``).
    """
    import ctypes  # only benches and scenarios spawn stand-ins: the daemon does not carry ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    parent = os.getpid()

    def die_with_parent() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            os._exit(0)

    return subprocess.Popen(list(argv), preexec_fn=die_with_parent, **popen)


def end_stand_in(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a stand-in (if it still runs) and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait()


@contextmanager
def stand_in(argv: Sequence[str] = STAND_IN_ARGV, **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """A stand-in owner for the ``with`` block (``spawn_stand_in``), ended on every way out of it."""
    process = spawn_stand_in(argv, **popen)
    try:
        yield process
    finally:
        end_stand_in(process)
