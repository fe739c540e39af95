"""Baselines for ``lockd bench``: the same figures for sanlock and virtlockd, measured in the same run.

* **sanlock** 3.8 through python3-sanlock against the lab's daemon (``hvstore lab up sanlock``: no watchdog,
  socket under ``SANLOCK_RUN_DIR``), lockspace and resource in files under ``<lab>/sanlock/leases`` (O_DIRECT
  on the lab's file system): add_lockspace time (io_timeout 1 s), acquire/release latency, daemon RSS. On
  request (``--sanlock-takeover``) the takeover time of a dead host's lease: a second, private sanlock
  daemon (host 2) takes the lease and is killed with SIGKILL; the lab's daemon (host 1) retries ACQUIRE
  until sanlock declares host 2 dead (8 x io_timeout + 60 s here, so about 70 s).
* **virtlockd** (libvirt 9.0's own lock daemon), started by this command in a private mount namespace
  (``hvstore.lab.nsexec``): it only listens at ``/run/libvirt/virtlockd-sock``, so that directory is a
  temporary one inside the namespace. It is driven with lockd's own client-side encoding of the protocol
  (``lockd.rpc.virtlockd.encode_call``), exactly as libvirt's lockd plugin talks: per VM start a new
  connection, REGISTER, ACQUIRE_RESOURCE; then RELEASE_RESOURCE. lockd is measured over the same wire
  (its ``RpcServer`` on a temporary socket), so the ratios compare like with like.

What it cannot do: sanlock without a watchdog still waits its full host-dead interval; virtlockd keeps its
locks on one host only (fcntl on local files), so it has no takeover to measure.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lockd.memory import rss_mib
from lockd.owners import spawn_stand_in, stand_in
from lockd.rpc.virnet import FrameDecoder, Message, MessageStatus, WireError
from lockd.rpc.virtlockd import (
    CallArgs,
    CreateLockspaceArgs,
    Owner,
    Procedure,
    RegisterArgs,
    ResourceArgs,
    encode_call,
)

SANLOCK_IO_TIMEOUT_S = 1
ONE_MIB = 1 << 20


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50 and p99 of durations in seconds, in ms (p99: the value at rank 0.99 n, no interpolation)."""
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered) * 1e3, 3),
            "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3, 3)}


# -- the virtlockd protocol, client side ----------------------------------------------------------------
class WireClient:
    """One blocking connection speaking libvirt's lock-daemon protocol (what libvirt's lockd plugin does)."""

    def __init__(self, path: str, *, timeout_s: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(path)
        self.decoder = FrameDecoder()
        self.serial = 0
        self.pending: list[Message] = []

    def call(self, proc: Procedure, args: CallArgs) -> None:
        """Send one CALL and wait for its REPLY; RuntimeError with virtlockd's message on an error reply."""
        serial, self.serial = self.serial, self.serial + 1
        self.sock.sendall(encode_call(proc, serial, args).encode())
        while True:
            for message in self.pending:
                if message.header.serial == serial and message.header.proc == proc:
                    self.pending.remove(message)
                    if message.header.status != MessageStatus.OK:
                        error = WireError.decode(message.payload_reader())
                        raise RuntimeError(f"{proc.name}: {error.message}")
                    return
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError(f"{proc.name}: connection closed by the lock daemon")
            self.pending.extend(self.decoder.feed(data))

    def close(self) -> None:
        self.sock.close()


def wire_setup(socket_path: str, lease_path: str, owner_pid: int, *, keys: int = 10) -> None:
    """CREATE_LOCKSPACE, then CREATE_RESOURCE of the keys ``wire_latency`` uses (virtlockd needs them)."""
    client = WireClient(socket_path)
    try:
        client.call(Procedure.CREATE_LOCKSPACE, CreateLockspaceArgs(lease_path))
    except RuntimeError as exc:
        if "exists" not in str(exc):
            raise
    finally:
        client.close()
    client = WireClient(socket_path)
    try:
        client.call(Procedure.REGISTER, RegisterArgs(Owner(uuid.uuid4().bytes, "bench-setup", 1, owner_pid)))
        for i in range(keys):
            client.call(Procedure.CREATE_RESOURCE, ResourceArgs(lease_path, f"key-{i}"))
    finally:
        client.close()


def wire_latency(socket_path: str, lease_path: str, owner_pid: int, rounds: int) -> dict[str, Any]:
    """Per round, as a VM start and stop: connect + REGISTER + ACQUIRE_RESOURCE, then RELEASE_RESOURCE.
    ``owner_pid`` must be a process of its own: a lock daemon may signal it when a connection closes."""
    owner = Owner(uuid.uuid4().bytes, "bench-vm", 1, owner_pid)
    acquire_s, release_s = [], []
    for i in range(rounds):
        key = f"key-{i % 10}"
        t0 = time.perf_counter()
        client = WireClient(socket_path)
        try:
            client.call(Procedure.REGISTER, RegisterArgs(owner))
            client.call(Procedure.ACQUIRE_RESOURCE, ResourceArgs(lease_path, key))
            t1 = time.perf_counter()
            client.call(Procedure.RELEASE_RESOURCE, ResourceArgs(lease_path, key))
            t2 = time.perf_counter()
        finally:
            client.close()
        acquire_s.append(t1 - t0)
        release_s.append(t2 - t1)
    return {"register_acquire_ms": summary_ms(acquire_s), "release_ms": summary_ms(release_s)}


# -- virtlockd --------------------------------------------------------------------------------------------
@contextmanager
def private_virtlockd() -> Iterator[tuple[str, int, Path]]:
    """libvirt's virtlockd in a private mount namespace: (socket path as seen here, pid, scratch dir)."""
    with tempfile.TemporaryDirectory(prefix="lockd-bench-virtlockd-") as tmp:
        scratch = Path(tmp)
        run_dir = scratch / "run"
        run_dir.mkdir()
        conf = scratch / "virtlockd.conf"
        conf.write_text("")  # defaults: no auto disk leases, nothing of the host's /etc/libvirt
        log = open(scratch / "virtlockd.log", "wb")
        argv = [sys.executable, "-m", "hvstore.lab.nsexec", "--bind", f"{run_dir}:/run/libvirt", "--",
                "virtlockd", "-f", str(conf), "-p", str(scratch / "virtlockd.pid")]
        daemon = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": _repo()})
        try:
            sock = run_dir / "virtlockd-sock"
            deadline = time.monotonic() + 20
            while not sock.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"virtlockd did not start: {(scratch / 'virtlockd.log').read_text()[-300:]}")
                time.sleep(0.02)
            yield str(sock), daemon.pid, scratch  # nsexec exec()s virtlockd: same pid
        finally:
            stop_daemon(daemon)
            log.close()


def stop_daemon(daemon: subprocess.Popen[Any], *, grace_s: float = 10.0) -> None:
    """Stop a measured daemon as its service manager would: SIGTERM, then SIGKILL if it is still running
    after ``grace_s``; reaped either way (a no-op if it has exited already)."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def virtlockd_figures(rounds: int, progress: Callable[[str], None]) -> dict[str, Any]:
    progress(f"virtlockd: REGISTER+ACQUIRE/RELEASE x{rounds}")
    with stand_in() as owner, private_virtlockd() as (sock, pid, scratch):
        lockspace = str(scratch / "leases" / "bench")
        (scratch / "leases").mkdir()
        wire_setup(sock, lockspace, owner.pid)
        figures = wire_latency(sock, lockspace, owner.pid, rounds)
        figures["daemon_rss_mib"] = rss_mib(pid)
    return figures


# -- sanlock ----------------------------------------------------------------------------------------------
def sanlock_figures(rounds: int, *, takeover: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    from hvstore.lab import LabController
    from hvstore.lab.sanlock import SanlockService

    controller = LabController()
    controller.up(["sanlock"])
    service = SanlockService(controller.lab)
    os.environ.update(service.client_env())  # before the first sanlock call: its socket is in the lab
    import sanlock  # python3-sanlock (Debian); imported late: only this baseline needs it

    name = f"bench{uuid.uuid4().hex[:8]}".encode()
    ls_path = service.lease_dir / f"{name.decode()}.lockspace"
    res_path = service.lease_dir / f"{name.decode()}.resource"
    for path in (ls_path, res_path):
        with open(path, "wb") as f:
            f.truncate(ONE_MIB)
    figures: dict[str, Any] = {"io_timeout_s": SANLOCK_IO_TIMEOUT_S}
    disks = [(str(res_path), 0)]
    try:
        sanlock.write_lockspace(name, str(ls_path), iotimeout=SANLOCK_IO_TIMEOUT_S)
        sanlock.write_resource(name, b"disk", disks)
        progress("sanlock: add_lockspace")
        t0 = time.perf_counter()
        sanlock.add_lockspace(name, 1, str(ls_path), iotimeout=SANLOCK_IO_TIMEOUT_S)
        figures["add_lockspace_s"] = round(time.perf_counter() - t0, 2)
        progress(f"sanlock: acquire/release x{rounds}")
        fd = sanlock.register()
        acquire_s, release_s = [], []
        try:
            for _ in range(rounds):
                t0 = time.perf_counter()
                sanlock.acquire(name, b"disk", disks, slkfd=fd)
                t1 = time.perf_counter()
                sanlock.release(name, b"disk", disks, slkfd=fd)
                acquire_s.append(t1 - t0)
                release_s.append(time.perf_counter() - t1)
        finally:
            os.close(fd)
        figures["acquire_ms"] = summary_ms(acquire_s)
        figures["release_ms"] = summary_ms(release_s)
        daemon = controller.lab.daemon_pid("sanlock")
        figures["daemon_rss_mib"] = rss_mib(daemon) if daemon else None
        if takeover:
            progress("sanlock: takeover of a dead host's lease (about 8 x io_timeout + 60 s)")
            figures["takeover_s"] = _sanlock_takeover(sanlock, service, name, ls_path, disks)
    finally:
        try:
            sanlock.rem_lockspace(name, 1, str(ls_path))
        except sanlock.SanlockException:
            pass  # never added, or already gone
        ls_path.unlink(missing_ok=True)
        res_path.unlink(missing_ok=True)
    return figures


_HOLDER = """
import os, sys, time, sanlock
name, ls_path, res_path = sys.argv[1].encode(), sys.argv[2], sys.argv[3]
sanlock.add_lockspace(name, 2, ls_path, iotimeout=int(sys.argv[4]))
fd = sanlock.register()
sanlock.acquire(name, b"disk", [(res_path, 0)], slkfd=fd)
print("held", flush=True)
time.sleep(3600)
"""


def _sanlock_takeover(sanlock: Any, service: Any, name: bytes, ls_path: Path,
                      disks: list[tuple[str, int]]) -> float:
    """Host 2 (a private sanlock daemon) holds the lease and dies (SIGKILL of its daemon and owner);
    host 1 (the lab's daemon) retries ACQUIRE every 0.5 s: seconds from the death until it gets it."""
    with tempfile.TemporaryDirectory(prefix="lockd-bench-sanlock-") as tmp:
        env = {**os.environ, "SANLOCK_RUN_DIR": tmp}
        shim = service.dir / "setrlimit_clamp.so"  # built by the lab service (no CAP_SYS_RESOURCE here)
        daemon = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "0", "-G", "0"],
                                  env={**env, "LD_PRELOAD": str(shim)}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        holder = None
        try:
            deadline = time.monotonic() + 20
            while not Path(tmp, "sanlock.sock").exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the second sanlock daemon did not start")
                time.sleep(0.05)
            holder = spawn_stand_in([sys.executable, "-c", _HOLDER, name.decode(), str(ls_path), disks[0][0],
                                     str(SANLOCK_IO_TIMEOUT_S)], env=env, stdout=subprocess.PIPE, text=True)
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "held":
                raise RuntimeError("host 2 did not get the sanlock lease")
            daemon.kill()
            holder.kill()
            died = time.monotonic()
            fd = sanlock.register()
            try:
                while True:
                    try:
                        sanlock.acquire(name, b"disk", disks, slkfd=fd)
                        took = time.monotonic() - died
                        sanlock.release(name, b"disk", disks, slkfd=fd)
                        return round(took, 1)
                    except sanlock.SanlockException:
                        if time.monotonic() - died > 600:
                            raise
                        time.sleep(0.5)
            finally:
                os.close(fd)
        finally:
            for process in (holder, daemon):
                if process is not None and process.poll() is None:
                    process.kill()
                if process is not None:
                    process.wait()


def _repo() -> str:
    return str(Path(__file__).resolve().parents[1])
