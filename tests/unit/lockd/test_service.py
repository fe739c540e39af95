"""VirtlockdService: the lease manager (file store) behind the real virtlockd-protocol server.

A child process plays QEMU (REGISTER + RESTRICT on a connection it keeps open, so SO_PEERCRED sees its
pid); this test plays libvirtd (REGISTER with the child's pid, then ACQUIRE on a short-lived connection).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from lockd.lease import Mode
from lockd.manager import LeaseManager, ManagerConfig
from lockd.rpc.server import RpcServer
from lockd.rpc.virnet import Message, MessageStatus, WireError, decode_frame
from lockd.rpc.virtlockd import AcquireFlags, Owner, Procedure, RegisterArgs, ResourceArgs, encode_call
from lockd.service import DIRECT_LOCKSPACE, VirtlockdService
from lockd.stores.file import FileLeaseStore

REPO = Path(__file__).resolve().parents[3]
ROOT = "/var/lib/libvirt/lockd"
TIMEOUT_S = 20
FAKE_QEMU = """
import os, socket, sys
from lockd.rpc.virtlockd import Owner, Procedure, RegisterArgs, RestrictArgs, encode_call
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
owner = Owner(bytes(16), sys.argv[2], int(sys.argv[3]), os.getpid())
for serial, (proc, args) in enumerate([(Procedure.REGISTER, RegisterArgs(owner)),
                                       (Procedure.RESTRICT, RestrictArgs())]):
    sock.sendall(encode_call(proc, serial, args).encode())
    assert sock.recv(28)[24:28] == bytes(4)
print(os.getpid(), flush=True)
sys.stdin.read()
"""


@asynccontextmanager
async def fake_qemu(path: str, name: str, domain_id: int) -> AsyncIterator[asyncio.subprocess.Process]:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", FAKE_QEMU, path, name, str(domain_id),
                                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None
        assert int(await asyncio.wait_for(child.stdout.readline(), TIMEOUT_S)) == child.pid
        yield child
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def call(path: str, calls: list[tuple[Procedure, object]]) -> list[int | WireError]:
    reader, writer = await asyncio.open_unix_connection(path)
    statuses: list[int | WireError] = []
    try:
        for serial, (proc, args) in enumerate(calls):
            writer.write(encode_call(proc, serial, args).encode())  # type: ignore[arg-type]
            length = await asyncio.wait_for(reader.readexactly(4), TIMEOUT_S)
            reply: Message = decode_frame(length + await reader.readexactly(int.from_bytes(length, "big") - 4))
            ok = reply.header.status == MessageStatus.OK
            statuses.append(0 if ok else WireError.decode(reply.payload_reader()))
    finally:
        writer.close()
        await writer.wait_closed()
    return statuses


def test_libvirt_lease_flow_through_the_manager() -> None:
    async def scenario(tmp: Path) -> None:
        manager = LeaseManager(ManagerConfig(host="hosta", state_dir=tmp / "run"), FileLeaseStore(tmp / "store"))
        await manager.start()
        path = str(tmp / "virtlockd-sock")
        lease = ResourceArgs(f"{ROOT}/hvstore-ceph", "vm-1-disk-0")
        async with asyncio.TaskGroup() as tg:
            manager.run(tg)
            async with RpcServer.bind(path, VirtlockdService(manager, lease_root=ROOT)):
                async with fake_qemu(path, "vm1", 1) as qemu1, fake_qemu(path, "vm2", 2) as qemu2:
                    vm1, vm2 = Owner(bytes(16), "vm1", 1, qemu1.pid), Owner(bytes(16), "vm2", 2, qemu2.pid)
                    assert await call(path, [(Procedure.REGISTER, RegisterArgs(vm1)),
                                             (Procedure.ACQUIRE_RESOURCE, lease)]) == [0, 0]
                    held = manager.held("hvstore-ceph", "vm-1-disk-0")
                    assert held is not None and {p.pid for p in held.owners} == {qemu1.pid}
                    busy = await call(path, [(Procedure.REGISTER, RegisterArgs(vm2)),
                                             (Procedure.ACQUIRE_RESOURCE, lease)])
                    assert isinstance(busy[1], WireError) and busy[1].code == 87
                    # the same owner again, exclusive: busy too (virtlockd semantics)
                    again = await call(path, [(Procedure.REGISTER, RegisterArgs(vm1)),
                                              (Procedure.ACQUIRE_RESOURCE, lease)])
                    assert isinstance(again[1], WireError) and again[1].code == 87
                    # a direct-mode disk (path "") and a shared lease
                    disk = ResourceArgs("", "/srv/images/shared.img", int(AcquireFlags.SHARED))
                    for vm in (vm1, vm2):
                        assert await call(path, [(Procedure.REGISTER, RegisterArgs(vm)),
                                                 (Procedure.ACQUIRE_RESOURCE, disk)]) == [0, 0]
                    shared = manager.held(DIRECT_LOCKSPACE, "/srv/images/shared.img")
                    assert shared is not None and shared.mode == Mode.SHARED and len(shared.owners) == 2
                    # QEMU 1 exits: its connection closes, its leases go, QEMU 2 gets the disk.
                    assert qemu1.stdin is not None
                    qemu1.stdin.close()
                    await asyncio.wait_for(qemu1.wait(), TIMEOUT_S)
                    async with asyncio.timeout(TIMEOUT_S):
                        while manager.held("hvstore-ceph", "vm-1-disk-0") is not None:
                            await asyncio.sleep(0.01)
                    assert await call(path, [(Procedure.REGISTER, RegisterArgs(vm2)),
                                             (Procedure.ACQUIRE_RESOURCE, lease)]) == [0, 0]
                    assert await call(path, [(Procedure.REGISTER, RegisterArgs(vm2)),
                                             (Procedure.RELEASE_RESOURCE, lease)]) == [0, 0]
                    assert (await manager.peek("hvstore-ceph", "vm-1-disk-0")).free
                    not_locked = await call(path, [(Procedure.REGISTER, RegisterArgs(vm2)),
                                                   (Procedure.RELEASE_RESOURCE, lease)])
                    assert isinstance(not_locked[1], WireError)
            await manager.stop()

    with tempfile.TemporaryDirectory(prefix="lockd-svc-") as tmp:
        asyncio.run(asyncio.wait_for(scenario(Path(tmp)), 3 * TIMEOUT_S))
