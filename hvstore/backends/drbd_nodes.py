"""How the DRBD backend reaches its nodes: one executor interface, as Ganeti's node daemon or LINSTOR's
satellites give their masters.

``NodeExecutor.call(argv, stdin)`` runs one command on one node and returns its exit code and raw output;
``run`` wraps it into ``hvstore.run.Completed`` and raises ``ToolFailed``. Two implementations:

- ``AgentExecutor``: the lab's DRBD node VMs. Each VM runs a tiny busybox-sh agent on a virtio-serial
  port that QEMU exposes on the host as a UNIX socket (``-chardev socket,server=on``). Why virtio-serial and
  not ssh or a serial console: no keys, ports or network set-up to manage (a UNIX socket in the lab
  directory, reachable only by root), it does not share a line with the kernel console (so kernel
  messages cannot corrupt the framing), and it moves binary data at memory speed, which BlockIO needs.
  Wire format (no quoting): the host sends ``"<id> <argv_len> <stdin_len>\\n"`` followed by the
  argv (one argument per line, so arguments cannot contain newlines) and the stdin bytes; the agent
  answers ``"<id> <rc> <out_len> <err_len>\\n"`` followed by stdout and stderr. One request per
  connection; a host-side ``flock`` per socket keeps concurrent hvstore processes from interleaving.
  Answers whose id does not match (left over from a client that timed out) are skipped.
- ``LocalExecutor``: this host, through ``hvstore.run`` (drbdadm's dry-run/validation; there is no DRBD
  kernel module here, ENVIRONMENT.md).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hvstore.errors import BackendUnavailable, ToolFailed
from hvstore.run import Completed, run


@dataclass(frozen=True)
class RawResult:
    returncode: int
    stdout: bytes
    stderr: bytes


class NodeExecutor(ABC):
    """Runs commands on one DRBD node. ``name`` is the node's hostname (``on NAME`` in resource files)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def call(self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 60) -> RawResult:
        """Run ``argv`` on the node; raises BackendUnavailable when the node cannot be reached."""

    def run(self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 60,
            check: bool = True) -> Completed:
        """``call`` with text output; ToolFailed (naming the node) when ``check`` and the exit code is not 0."""
        raw = self.call(argv, stdin=stdin, timeout_s=timeout_s)
        done = Completed([str(a) for a in argv], raw.returncode, raw.stdout.decode(errors="replace"),
                         raw.stderr.decode(errors="replace"))
        if check and raw.returncode != 0:
            raise ToolFailed([f"{argv[0]}@{self.name}", *map(str, argv[1:])], raw.returncode,
                             done.stderr or done.stdout)
        return done


class AgentExecutor(NodeExecutor):
    """A node VM's agent on a virtio-serial port, reached through QEMU's UNIX socket."""

    def __init__(self, name: str, socket_path: str | Path) -> None:
        super().__init__(name)
        self.socket_path = Path(socket_path)

    def call(self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 60) -> RawResult:
        if any("\n" in str(a) for a in argv):
            raise ValueError(f"DRBD node agent: arguments cannot contain newlines: {argv!r}")
        args = b"".join(str(a).encode() + b"\n" for a in argv)
        request_id = secrets.token_hex(6)
        deadline = time.monotonic() + timeout_s
        lock_path = self.socket_path.with_suffix(".lock")
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(max(deadline - time.monotonic(), 0.1))
                    sock.connect(str(self.socket_path))
                    sock.sendall(f"{request_id} {len(args)} {len(stdin)}\n".encode() + args + stdin)
                    reader = _Reader(sock)
                    while True:
                        header = reader.line().split()
                        if len(header) != 4:
                            raise BackendUnavailable(f"DRBD node {self.name}: garbled agent answer {header!r}")
                        rc, out_len, err_len = (int(x) for x in header[1:])
                        out, err = reader.exact(out_len), reader.exact(err_len)
                        if header[0].decode() == request_id:
                            return RawResult(rc, out, err)
            except (OSError, TimeoutError) as exc:
                raise BackendUnavailable(
                    f"DRBD node {self.name}: agent at {self.socket_path} not answering ({exc}); "
                    f"is the lab up? (hvstore lab up drbd)") from None


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("agent closed the connection")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def exact(self, length: int) -> bytes:
        while len(self.buf) < length:
            self._fill()
        data, self.buf = self.buf[:length], self.buf[length:]
        return data


class LocalExecutor(NodeExecutor):
    """This host (text in and out only): used to validate resource files with the host's drbdadm."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name or os.uname().nodename)

    def call(self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 60) -> RawResult:
        done = run(argv, timeout_s=timeout_s, check=False, input_text=stdin.decode() if stdin else None)
        return RawResult(done.returncode, done.stdout.encode(), done.stderr.encode())
