"""server.py over real UNIX sockets with the fake lock service.

The QEMU role is played by a child process, so SO_PEERCRED sees a real, different pid: it registers
itself and RESTRICTs, keeping its connection open as QEMU does (spec §4.2); this test process plays
libvirtd (REGISTER with the child's pid, then ACQUIRE on a short-lived connection).
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from lockd.errors import ConfigError
from lockd.rpc.server import RpcServer, bind_unix_socket, peer_credentials
from lockd.rpc.virnet import Message, MessageStatus, WireError, decode_frame, ping
from lockd.rpc.virtlockd import (
    ConnectionEnd,
    Owner,
    Procedure,
    RegisterArgs,
    ResourceArgs,
    RestrictArgs,
    encode_call,
)
from tests.fakes.lock_service_fake import FakeLockService

REPO = Path(__file__).resolve().parents[3]
LEASES = "/var/lib/lockd/leases"
LEASE = ResourceArgs(f"{LEASES}/ls1", "key1")
TIMEOUT_S = 20

# A stand-in for QEMU: connects, REGISTERs itself, RESTRICTs, then holds the connection until stdin closes.
FAKE_QEMU = """
import os, socket, sys
from lockd.rpc.virtlockd import Owner, Procedure, RegisterArgs, RestrictArgs, encode_call
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
owner = Owner(bytes(16), sys.argv[2], int(sys.argv[3]), os.getpid())
calls = [(Procedure.REGISTER, RegisterArgs(owner)), (Procedure.RESTRICT, RestrictArgs())]
for serial, (proc, args) in enumerate(calls):
    sock.sendall(encode_call(proc, serial, args).encode())
    reply = sock.recv(28)
    assert reply[24:28] == bytes(4), reply.hex()
print(os.getpid(), flush=True)
sys.stdin.read()
"""


@contextmanager
def _socket_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="lockd-rpc-") as tmp:
        yield str(Path(tmp) / "virtlockd-sock")


@asynccontextmanager
async def _fake_qemu(path: str, name: str, domain_id: int) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", FAKE_QEMU, path, name, str(domain_id),
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), TIMEOUT_S)
        assert int(line) == child.pid
        yield child
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def _call(path: str, calls: list[tuple[Procedure, object]]) -> list[Message]:
    """One short-lived connection, as libvirtd makes per operation."""
    reader, writer = await asyncio.open_unix_connection(path)
    replies = []
    try:
        for serial, (proc, args) in enumerate(calls):
            writer.write(encode_call(proc, serial, args).encode())  # type: ignore[arg-type]
            replies.append(await _read_frame(reader))
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


async def _read_frame(reader: asyncio.StreamReader) -> Message:
    length = await asyncio.wait_for(reader.readexactly(4), TIMEOUT_S)
    return decode_frame(length + await reader.readexactly(int.from_bytes(length, "big") - 4))


def _status(reply: Message) -> int | WireError:
    if reply.header.status == MessageStatus.OK:
        return 0
    return WireError.decode(reply.payload_reader())


def test_busy_then_free_after_qemus_connection_closes():
    async def scenario(path: str) -> None:
        service = FakeLockService(implicit_root=LEASES)
        async with RpcServer.bind(path, service):
            async with _fake_qemu(path, "vm1", 41) as qemu1, _fake_qemu(path, "vm2", 42) as qemu2:
                vm1 = Owner(bytes(16), "vm1", 41, qemu1.pid)
                vm2 = Owner(bytes(16), "vm2", 42, qemu2.pid)
                first = await _call(path, [(Procedure.REGISTER, RegisterArgs(vm1)),
                                           (Procedure.ACQUIRE_RESOURCE, LEASE)])
                assert [_status(reply) for reply in first] == [0, 0]
                assert service.holders(LEASE.path, LEASE.name) == [qemu1.pid]  # survives libvirtd's close

                second = await _call(path, [(Procedure.REGISTER, RegisterArgs(vm2)),
                                            (Procedure.ACQUIRE_RESOURCE, LEASE)])
                busy = _status(second[1])
                assert isinstance(busy, WireError) and (busy.code, busy.domain) == (87, 51)
                assert busy.message == "resource busy: Lockspace resource 'key1' is locked"

                # QEMU 1 exits: its inherited connection closes and its lease goes with it.
                closed_before = len(service.closed)
                assert qemu1.stdin is not None
                qemu1.stdin.close()
                await asyncio.wait_for(qemu1.wait(), TIMEOUT_S)
                await asyncio.wait_for(service.wait_closed(closed_before + 1), TIMEOUT_S)
                conn, end = service.closed[-1]
                assert (conn.peer_pid, end, conn.held_by_owner) == (qemu1.pid, ConnectionEnd.PEER_CLOSED, True)
                assert service.killed == [qemu1.pid]
                assert service.holders(LEASE.path, LEASE.name) == []

                third = await _call(path, [(Procedure.REGISTER, RegisterArgs(vm2)),
                                           (Procedure.ACQUIRE_RESOURCE, LEASE)])
                assert [_status(reply) for reply in third] == [0, 0]
                assert service.holders(LEASE.path, LEASE.name) == [qemu2.pid]
        assert not os.path.exists(path)

    with _socket_dir() as path:
        asyncio.run(asyncio.wait_for(scenario(path), 3 * TIMEOUT_S))


def test_stopping_the_server_releases_nothing():
    """Unlike virtlockd, stopping lockd must not drop leases (nor kill QEMU): the service hears SHUTDOWN."""
    async def scenario(path: str) -> None:
        service = FakeLockService(implicit_root=LEASES)
        server = RpcServer.bind(path, service)
        await server.start()
        async with _fake_qemu(path, "vm1", 41) as qemu:
            owner = Owner(bytes(16), "vm1", 41, qemu.pid)
            await _call(path, [(Procedure.REGISTER, RegisterArgs(owner)), (Procedure.ACQUIRE_RESOURCE, LEASE)])
            assert server.connection_count >= 1
            await server.stop()
            assert service.holders(LEASE.path, LEASE.name) == [qemu.pid]
            assert service.killed == []
            assert [end for _conn, end in service.closed if _conn.peer_pid == qemu.pid] == [
                ConnectionEnd.SERVER_SHUTDOWN]

    with _socket_dir() as path:
        asyncio.run(asyncio.wait_for(scenario(path), 2 * TIMEOUT_S))


def test_keepalive_bad_frames_and_peer_credentials():
    async def scenario(path: str) -> None:
        service = FakeLockService()
        async with RpcServer.bind(path, service):
            reader, writer = await asyncio.open_unix_connection(path)
            pid, uid = peer_credentials(writer.get_extra_info("socket"))
            assert (pid, uid) == (os.getpid(), os.geteuid())
            writer.write(ping().encode())
            pong = await _read_frame(reader)
            assert pong.encode().hex() == "0000001c6b656570000000010000000200000002" + "0" * 16
            # An unknown procedure gets an error reply and the connection stays usable ...
            writer.write(bytes.fromhex("0000001c0ea7beef00000001000000630000000000000005" + "00000000"))
            error = _status(await _read_frame(reader))
            assert isinstance(error, WireError) and error.message == "unknown procedure: 99"
            writer.write(ping().encode())
            assert (await _read_frame(reader)).header.proc == 2
            # ... while a length word below the header size closes it (libvirt does the same).
            writer.write(bytes.fromhex("00000008deadbeef"))
            assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
            writer.close()
            await asyncio.wait_for(service.wait_closed(1), TIMEOUT_S)
            assert service.closed[0][1] is ConnectionEnd.PROTOCOL_ERROR

    with _socket_dir() as path:
        asyncio.run(asyncio.wait_for(scenario(path), TIMEOUT_S))


def test_peers_with_other_uids_are_closed_without_a_word():
    async def scenario(path: str) -> None:
        service = FakeLockService()
        async with RpcServer.bind(path, service, allowed_uids={os.geteuid() + 12345}):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(ping().encode())
            # virtlockd's refusal showed up as ECONNRESET (spec §1.2): our unread PING makes it a reset too.
            try:
                assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
            except ConnectionResetError:
                pass
            writer.close()
        assert service.closed == []  # it never became a connection

    with _socket_dir() as path:
        asyncio.run(asyncio.wait_for(scenario(path), TIMEOUT_S))


def test_bind_makes_a_0600_socket_and_refuses_a_live_one():
    with _socket_dir() as path:
        sock = bind_unix_socket(path)
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with pytest.raises(ConfigError, match="already listens"):
                bind_unix_socket(path)
        finally:
            sock.close()
        # Nobody listens any more: the stale socket file is replaced.
        bind_unix_socket(path).close()
        Path(path).unlink()
        Path(path).write_text("not a socket")
        with pytest.raises(ConfigError, match="not a socket"):
            bind_unix_socket(path)


# Runs the server on a socket handed over the way systemd does: fd 3, LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES.
SOCKET_ACTIVATED = """
import asyncio, os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="virtlockd.socket")
from lockd.rpc.server import RpcServer
from tests.fakes.lock_service_fake import FakeLockService

async def main():
    server = RpcServer.from_systemd(FakeLockService())
    assert server is not None and "LISTEN_FDS" not in os.environ
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_systemd_passed_socket_is_served():
    with _socket_dir() as path:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(8)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen([sys.executable, "-c", SOCKET_ACTIVATED, str(listener.fileno())],
                                 pass_fds=(listener.fileno(),), stdout=subprocess.PIPE, env=env)
        listener.close()
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(TIMEOUT_S)
            client.connect(path)
            client.sendall(encode_call(Procedure.RESTRICT, 0, RestrictArgs()).encode())
            reply = decode_frame(client.recv(4096))
            error = WireError.decode(reply.payload_reader())
            assert error.message == "Requested operation is not valid: lock owner details have not been registered"
            client.close()
        finally:
            child.kill()
            child.wait()


def test_systemd_variables_for_another_process_are_ignored(monkeypatch: pytest.MonkeyPatch):
    from lockd.rpc.server import systemd_listen_socket

    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd_listen_socket() is None
    assert os.environ["LISTEN_FDS"] == "1"  # not ours to consume
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert systemd_listen_socket() is None
    assert "LISTEN_PID" not in os.environ  # consumed, so children do not inherit them


class _GatedService(FakeLockService):
    """Acquire waits for a gate: a lease operation that is in flight when the server stops."""

    def __init__(self) -> None:
        super().__init__(implicit_root=LEASES)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def acquire(self, owner, path, name, flags):  # type: ignore[no-untyped-def]
        self.entered.set()
        await self.gate.wait()
        await super().acquire(owner, path, name, flags)


def test_stop_lets_a_started_call_finish_instead_of_cancelling_it():
    async def scenario(path: str) -> None:
        service = _GatedService()
        server = RpcServer.bind(path, service)
        await server.start()
        owner = Owner(bytes(16), "vm1", 41, 4242)
        client = asyncio.create_task(_call(path, [(Procedure.REGISTER, RegisterArgs(owner)),
                                                  (Procedure.ACQUIRE_RESOURCE, LEASE)]))
        await asyncio.wait_for(service.entered.wait(), TIMEOUT_S)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0)  # let stop() cancel the connection while the acquire is in flight
        service.gate.set()
        await asyncio.wait_for(stopping, TIMEOUT_S)
        assert service.holders(LEASE.path, LEASE.name) == [4242]  # completed, not cut in half
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)

    with _socket_dir() as path:
        asyncio.run(asyncio.wait_for(scenario(path), TIMEOUT_S))
