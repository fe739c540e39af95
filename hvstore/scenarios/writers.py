"""Where a scenario's writers run and how they reach the volume: one writer path per kind of store.

A writer writes its byte pattern over the scenario's region, chunk by chunk, every round in an order of
its own (``WriterJob.rounds``), optionally reading each round back. Two paths exist:

- ``QemuIoWriters`` (every store whose volume QEMU on this host can open): ``qemu-io -t none`` on the
  URI of the writer's host (``Backend.uri(host=)``: its cephx user on rbd, its initiator IQN on iscsi,
  which is what storage fencing cuts off). The process starts gated (``sh -c 'read && exec qemu-io'``) so
  its pid can own a lease before it opens the volume.
- ``NodeWriters`` (DRBD: the device exists only inside the store's nodes): a busybox-sh loop of
  ``dd oflag=direct`` on the node that scenario host *i* stands for (the store's node *i*), started in the
  background through the backend's node executor and gated on a file. Every write DRBD acknowledged is
  logged with the node's uptime, which gives the longest I/O stall. Their lease is owned by a stand-in
  process on this host (lockd's owners are local pids), which lockd's self-fence can kill but which cannot
  stop the writer in the node: only the store's fencing can.

Each path also knows how the store itself refuses a second writer (``Refusal``): QEMU's image lock, or
DRBD refusing to open a Secondary's device.

Both produce qemu-io-like output lines (``Pattern verification failed at offset N``, one line per
failed write), so the runner judges them the same way. ``WRITER_PATHS`` maps a backend kind to its path;
stores not listed use ``QemuIoWriters``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from hvstore.errors import HvstoreError
from lockd.owners import end_stand_in, spawn_stand_in

NODE_DIR = "/tmp/hvstore-writers"
_OPS_PER_S = re.compile(r" ops; .* and (\S+) ops/sec\)")  # "inf" when it took no measurable time
NODE_POLL_S = 0.3


@dataclass(frozen=True)
class Refusal:
    """How a writer's error shows that the store itself refused it as a second writer (no lockd needed)."""

    what: str  # for people: which mechanism refused
    pattern: str  # a regular expression found in the error

    def matches(self, error: str) -> bool:
        return re.search(self.pattern, error) is not None


@dataclass(frozen=True)
class WriterJob:
    """What one writer does: ``rounds`` is one list of chunk indices per round, in writing order."""

    name: str
    host: str
    pattern: int
    chunk_bytes: int
    rounds: tuple[tuple[int, ...], ...]
    verify: bool


class WriterProcess(ABC):
    """One started writer. ``lease_pid`` is the pid on this host a lease is taken for (None: none)."""

    lease_pid: int | None = None

    @abstractmethod
    def let_go(self) -> None:
        """Open the gate: the writer starts writing."""

    @abstractmethod
    def cancel(self) -> None:
        """Never let it go (its lease was refused): it exits without opening the volume."""

    @abstractmethod
    def poll(self) -> int | None:
        """Its exit code once it ended (negative: killed by that signal), else None."""

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for it to end; its exit code, or None if it still runs."""
        deadline = time.monotonic() + timeout_s
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(min(NODE_POLL_S, max(deadline - time.monotonic(), 0.01)))
        return code

    @abstractmethod
    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGSTOP: a hung host, SIGCONT, SIGKILL: a dead host); no-op once it ended."""

    def kill(self) -> None:
        """End it now, frozen or not: SIGCONT, then SIGKILL (a no-op once it ended)."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)

    @abstractmethod
    def output(self) -> list[str]:
        """Its output lines (progress, errors), once it ended."""

    def write_seconds(self) -> list[float]:
        """How long each acknowledged write took, in order (once it ended): the longest is the I/O stall a
        fault caused. Empty where the path cannot tell."""
        return []

    @property
    @abstractmethod
    def ident(self) -> str:
        """How events name it (a pid, node:pid)."""


class WriterPath(ABC):
    """How the writers of one store run. ``reason`` says why they cannot, or None."""

    refusal: Refusal = Refusal("QEMU image lock", r"Failed to get .*lock")
    # Why a ``takeover`` (another host's writer taking over the volume) cannot be shown here, or None.
    takeover_reason: str | None = None

    def __init__(self, backend: Any, volume: str, hosts: tuple[str, ...]) -> None:
        self.backend = backend
        self.volume = volume
        self.hosts = hosts

    @abstractmethod
    def reason(self, *, lease: bool = False) -> str | None:
        """None when writers (with a lease, if ``lease``) can run on this store, else why not."""

    @abstractmethod
    def start(self, job: WriterJob) -> WriterProcess:
        """Start the writer gated (it writes nothing before ``let_go``)."""

    def where(self, host: str) -> str:
        """Where scenario host ``host``'s writers run (for events)."""
        return host


# -- qemu-io on this host -------------------------------------------------------------------------------
class QemuIoWriters(WriterPath):
    def reason(self, *, lease: bool = False) -> str | None:
        uri = self.backend.uri(self.volume)
        if not (uri.partition(":")[0].isalpha() and ":" in uri) and not Path(uri).exists():
            return f"{uri} is not on this host (the volume lives inside the store's nodes)"
        return None

    def start(self, job: WriterJob) -> WriterProcess:
        # The host's identity must be admitted before its writer logs in (iscsi: its initiator in the
        # target's ACL, which is what fencing removes again); a no-op where access is not per host.
        self.backend.grant(self.volume, host=job.host)
        try:
            uri = self.backend.uri(self.volume, host=job.host)
        except HvstoreError:
            uri = self.backend.uri(self.volume)  # the store has no per-host identity
        commands: list[str] = []
        for order in job.rounds:
            commands += [arg for c in order for arg in ("-c", f"write -P {job.pattern} {c * job.chunk_bytes} "
                                                              f"{job.chunk_bytes}")]
            if job.verify:  # read the round back: a chunk that is not ours was overwritten under us
                commands += [arg for c in order for arg in ("-c", f"read -P {job.pattern} {c * job.chunk_bytes} "
                                                                  f"{job.chunk_bytes}")]
        argv = ["qemu-io", "-f", self.backend.qemu_format(self.volume), "-t", "none", *commands, uri]
        return _QemuIoProcess(argv)


class _QemuIoProcess(WriterProcess):
    def __init__(self, argv: list[str]) -> None:
        # stderr goes to a file: a writer failing thousands of writes would fill a pipe and hang.
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["sh", "-c", 'read _gate && exec "$@"', "writer", *argv],
                                     stdin=subprocess.PIPE, stdout=self.errors, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.lease_pid = self.proc.pid
        self.lines: list[str] | None = None

    @property
    def ident(self) -> str:
        return str(self.proc.pid)

    def _open_gate(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            if line:
                self.proc.stdin.write(line)
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def let_go(self) -> None:
        self._open_gate(b"go\n")

    def cancel(self) -> None:
        self._open_gate(b"")  # EOF: `read` fails and the shell exits before qemu-io starts

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def output(self) -> list[str]:
        if self.lines is None:
            self.errors.seek(0)
            self.lines = self.errors.read().decode(errors="replace").strip().splitlines()
            self.errors.close()
        return self.lines

    def write_seconds(self) -> list[float]:
        """From qemu-io's report after each write ("64 KiB, 1 ops; 00.00 sec (... and N ops/sec)"): 1/N,
        finer than its printed time (10 ms steps)."""
        seconds, after_write = [], False
        for line in self.output():
            if line.startswith("wrote "):
                after_write = True
            elif after_write and (match := _OPS_PER_S.search(line)):
                seconds.append(1 / float(match.group(1)))  # 1/inf == 0.0
                after_write = False
        return seconds


# -- dd inside the store's nodes ----------------------------------------------------------------------
# The writer loop on the node, ``sh DIR/NAME.sh DIR NAME DEVICE PATTERN_OCTAL CHUNK VERIFY``: waits for
# NAME.go (or NAME.cancel), writes the rounds of NAME.order (one line of chunk indices per round), logs
# acknowledgements to NAME.acks and leaves its exit code in NAME.rc.
_WRITER = r"""d=$1; n=$2; dev=$3; chunk=$5; verify=$6
while [ ! -e $d/$n.go ]; do [ -e $d/$n.cancel ] && { echo 125 > $d/$n.rc; exit 0; }; sleep 0.05; done
read up _ < /proc/uptime; echo "start $up" > $d/$n.acks
rc=0
while read -r order; do
  for c in $order; do
    if dd if=$d/$n.pat of=$dev bs=$chunk seek=$c count=1 oflag=direct conv=notrunc 2>$d/$n.err; then
      read up _ < /proc/uptime; echo "$c $up" >> $d/$n.acks
    else
      echo "write failed at offset $((c * chunk)): $(tail -n 1 $d/$n.err)"; rc=1
    fi
  done
  if [ "$verify" = 1 ]; then
    for c in $order; do
      if dd if=$dev of=$d/$n.back bs=$chunk skip=$c count=1 iflag=direct 2>$d/$n.err; then
        cmp -s $d/$n.back $d/$n.pat || echo "Pattern verification failed at offset $((c * chunk))"
      else
        echo "read failed at offset $((c * chunk)): $(tail -n 1 $d/$n.err)"; rc=1
      fi
    done
  fi
done < $d/$n.order
echo $rc > $d/$n.rc.tmp && mv $d/$n.rc.tmp $d/$n.rc
"""
# Started as ``sh -c _LAUNCH launch DIR NAME DEVICE PATTERN_OCTAL CHUNK VERIFY`` once the script and the
# order are in place; prints the background writer's pid (fd 3 is the agent's port: not inherited).
_LAUNCH = ('d=$1; n=$2; head -c $5 /dev/zero | tr "\\0" "$4" > $d/$n.pat; '
           'sh $d/$n.sh "$@" < /dev/null > $d/$n.out 2>&1 3>&- & echo $!')
_PUT = 'mkdir -p "$1" && cat > "$1/$2"'


class NodeWriters(WriterPath):
    """Writers inside the store's nodes (``backend.nodes``: name -> NodeExecutor, in the store's order).
    A lease is owned by a stand-in process on this host (lockd needs a local pid); it lives as long as the
    node writer, and what happens to the host (freeze, kill) happens to both, but lockd's self-fence can
    only kill the stand-in, never the writer inside the node."""

    # DRBD 8.4 refuses to open a Secondary's device: EROFS for writing, EMEDIUMTYPE for reading.
    refusal = Refusal("DRBD: a Secondary's device cannot be opened", r"Read-only file system|Wrong medium type")
    takeover_reason = ("a takeover needs the new holder's node promoted to Primary (and the old one fenced by "
                       "outdating it, with lockd's hosts named after the nodes); this runner does not do that, "
                       "so the new holder could only be refused by DRBD")

    def _node(self, host: str) -> Any:
        names = list(self.backend.nodes)
        index = self.hosts.index(host)
        if index >= len(names):
            raise HvstoreError(f"scenario host {host} has no node: store {self.backend.store} has "
                               f"{len(names)} ({', '.join(names)})")
        return self.backend.nodes[names[index]]

    def reason(self, *, lease: bool = False) -> str | None:
        return None

    def where(self, host: str) -> str:
        return f"{host} (node {self._node(host).name})"

    def start(self, job: WriterJob) -> WriterProcess:
        node = self._node(job.host)
        device = self.backend.uri(self.volume)
        order = "".join(" ".join(map(str, r)) + "\n" for r in job.rounds).encode()
        node.run(["sh", "-c", f'rm -f "$1/{job.name}".*', "clean", NODE_DIR])
        node.run(["sh", "-c", _PUT, "put", NODE_DIR, f"{job.name}.sh"], stdin=_WRITER.encode())
        node.run(["sh", "-c", _PUT, "put", NODE_DIR, f"{job.name}.order"], stdin=order)
        done = node.run(["sh", "-c", _LAUNCH, "launch", NODE_DIR, job.name, device, f"\\{job.pattern:03o}",
                         str(job.chunk_bytes), "1" if job.verify else "0"])
        return _NodeProcess(node, job.name, int(done.stdout.split()[-1]))



class _NodeProcess(WriterProcess):
    def __init__(self, node: Any, name: str, pid: int) -> None:
        self.node = node
        self.base = f"{NODE_DIR}/{name}"
        self.pid = pid
        self.killed_by: int | None = None
        # The lease owner on this host standing for the writer in the node (a daemon-like child for the
        # writer's lifetime, so not through hvstore.run).
        self.stand_in = spawn_stand_in(("sleep", "infinity"), start_new_session=True)
        self.lease_pid = self.stand_in.pid

    @property
    def ident(self) -> str:
        return f"{self.node.name}:{self.pid}"

    def let_go(self) -> None:
        self.node.run(["touch", f"{self.base}.go"])

    def cancel(self) -> None:
        self.node.run(["touch", f"{self.base}.cancel"])

    def poll(self) -> int | None:
        done = self.node.run(["sh", "-c", f'cat {self.base}.rc 2>/dev/null || {{ kill -0 {self.pid} 2>/dev/null '
                                          '&& echo running || echo gone; }'])
        answer = done.stdout.strip()
        if answer == "running":
            return None
        self._end_stand_in()
        if answer == "gone":
            return -(self.killed_by or signal.SIGKILL)
        return int(answer)

    def _end_stand_in(self) -> None:
        end_stand_in(self.stand_in)

    def signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            self.killed_by = sig
        self.node.run(["kill", f"-{sig.name.removeprefix('SIG')}", str(self.pid)], check=False)
        if self.stand_in.poll() is None:
            self.stand_in.send_signal(sig)

    def output(self) -> list[str]:
        return self.node.run(["sh", "-c", f"cat {self.base}.out 2>/dev/null; true"]).stdout.strip().splitlines()

    def write_seconds(self) -> list[float]:
        """Gaps between the node uptimes logged at the start and after each acknowledged write."""
        text = self.node.run(["sh", "-c", f"cat {self.base}.acks 2>/dev/null; true"]).stdout
        times = [float(line.split()[1]) for line in text.splitlines() if len(line.split()) == 2]
        return [later - earlier for earlier, later in pairwise(times)]


WRITER_PATHS: dict[str, type[WriterPath]] = {"drbd": NodeWriters}


def writer_path(backend: Any, volume: str, hosts: tuple[str, ...]) -> WriterPath:
    """The writer path for ``backend``'s kind (``QemuIoWriters`` unless the table names another)."""
    return WRITER_PATHS.get(backend.kind, QemuIoWriters)(backend, volume, hosts)
