"""The lock program's dispatcher: virtlockd's checks and error texts, the lease mapping, and a fuzz test.

Expected texts come from the spec (../shared/docs/virtlockd-protocol.md §2.7, §3.2, §6.8), which
records them from the real daemon.
"""

from __future__ import annotations

import asyncio
import errno
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockd.errors import InvalidRequest, LeaseHeld, StoreUnavailable
from lockd.rpc.virnet import FrameDecoder, FrameError, Header, Message, MessageStatus, MessageType, WireError
from lockd.rpc.virtlockd import (
    PROCEDURES,
    PROGRAM,
    AcquireFlags,
    CloseConnection,
    ConnectionState,
    CreateLockspaceArgs,
    DiskLease,
    ErrorCode,
    ErrorDomain,
    LockspaceLease,
    LockspaceNotFound,
    NewArgs,
    Owner,
    Procedure,
    RegisterArgs,
    ResourceArgs,
    RestrictArgs,
    encode_call,
    handle_message,
    parse_resource,
    to_wire_error,
)
from lockd.rpc.xdr import XdrWriter
from tests.fakes.lock_service_fake import FakeLockService

QEMU_PID = 8936
OWNER = Owner(uuid=bytes.fromhex("aaaaaaaa000000000000000000000001"), name="vm1", id=41, pid=QEMU_PID)
LEASES = "/var/lib/lockd/leases"


def _run(calls: list[tuple[Procedure, object]], *, conn: ConnectionState | None = None,
         service: FakeLockService | None = None) -> list[Message | None]:
    conn = conn or ConnectionState(peer_pid=1000, peer_uid=0)
    service = service or FakeLockService(implicit_root=LEASES)

    async def go() -> list[Message | None]:
        return [await handle_message(encode_call(proc, serial, args), conn, service)  # type: ignore[arg-type]
                for serial, (proc, args) in enumerate(calls)]

    return asyncio.run(go())


def _error(reply: Message | None) -> WireError:
    assert reply is not None and reply.header.status == MessageStatus.ERROR
    assert reply.header.type == MessageType.REPLY
    return WireError.decode(reply.payload_reader())


def _ok(reply: Message | None) -> None:
    assert reply is not None
    assert reply.header.status == MessageStatus.OK and reply.payload == b"", reply


def test_every_procedure_has_one_table_row():
    assert set(PROCEDURES) == set(Procedure)


def test_register_acquire_release_happy_path_echoes_serials():
    replies = _run([(Procedure.REGISTER, RegisterArgs(OWNER)),
                    (Procedure.ACQUIRE_RESOURCE, ResourceArgs(f"{LEASES}/ls1", "key1")),
                    (Procedure.RELEASE_RESOURCE, ResourceArgs(f"{LEASES}/ls1", "key1"))])
    for serial, reply in enumerate(replies):
        _ok(reply)
        assert reply is not None and reply.header == Header(PROGRAM, 1, reply.header.proc, 1, serial, 0)
        assert len(reply.encode()) == 28


def test_busy_is_87_with_virtlockds_text():
    service = FakeLockService(implicit_root=LEASES)
    _run([(Procedure.REGISTER, RegisterArgs(OWNER)),
          (Procedure.ACQUIRE_RESOURCE, ResourceArgs(f"{LEASES}/ls1", "key1"))], service=service)
    other = Owner(OWNER.uuid, "vm2", 42, 8937)
    replies = _run([(Procedure.REGISTER, RegisterArgs(other)),
                    (Procedure.ACQUIRE_RESOURCE, ResourceArgs(f"{LEASES}/ls1", "key1"))], service=service)
    error = _error(replies[1])
    assert (error.code, error.domain) == (87, 51)
    assert error.message == "resource busy: Lockspace resource 'key1' is locked"
    assert (error.str1, error.str2, error.int1, error.int2) == ("resource busy: %s",
                                                                "Lockspace resource 'key1' is locked", -1, -1)


def test_calls_before_register_are_refused_with_55():
    for proc, args in [(Procedure.RESTRICT, RestrictArgs()), (Procedure.NEW, NewArgs("/x")),
                       (Procedure.ACQUIRE_RESOURCE, ResourceArgs("", "/disk")),
                       (Procedure.RELEASE_RESOURCE, ResourceArgs("", "/disk"))]:
        error = _error(_run([(proc, args)])[0])
        assert (error.code, error.domain) == (55, 7)
        assert error.message == "Requested operation is not valid: lock owner details have not been registered"


def test_register_with_id_zero_is_refused_and_does_not_register():
    conn = ConnectionState(peer_pid=1, peer_uid=0)
    replies = _run([(Procedure.REGISTER, RegisterArgs(Owner(OWNER.uuid, "vm", 0, 5)))], conn=conn)
    assert _error(replies[0]).code == 55
    assert conn.owner is None


def test_restricted_connection_refuses_everything_with_29():
    conn = ConnectionState(peer_pid=QEMU_PID, peer_uid=0)
    replies = _run([(Procedure.REGISTER, RegisterArgs(OWNER)), (Procedure.RESTRICT, RestrictArgs()),
                    (Procedure.REGISTER, RegisterArgs(OWNER)), (Procedure.RESTRICT, RestrictArgs()),
                    (Procedure.CREATE_LOCKSPACE, CreateLockspaceArgs("/x")),
                    (Procedure.ACQUIRE_RESOURCE, ResourceArgs("", "/disk"))], conn=conn)
    _ok(replies[0])
    _ok(replies[1])
    for reply in replies[2:]:
        error = _error(reply)
        assert (error.code, error.domain) == (29, 7)
        assert error.message == "operation forbidden: lock manager connection has been restricted"
    assert conn.held_by_owner


def test_unsupported_flags_name_the_dispatch_function():
    replies = _run([(Procedure.REGISTER, RegisterArgs(OWNER)),
                    (Procedure.RELEASE_RESOURCE, ResourceArgs("", "/disk", AcquireFlags.SHARED)),
                    (Procedure.ACQUIRE_RESOURCE, ResourceArgs("", "/disk", 0x7))])
    release = _error(replies[1])
    assert (release.code, release.domain) == (8, 7)
    assert release.message == "unsupported flags (0x1) in function virLockSpaceProtocolDispatchReleaseResource"
    assert (release.str1, release.str2, release.int1, release.int2) == (
        "virLockSpaceProtocolDispatchReleaseResource", "flags", 0, 0)
    acquire = _error(replies[2])
    assert acquire.message == "unsupported flags (0x4) in function virLockSpaceProtocolDispatchAcquireResource"


def test_flags_are_checked_before_restriction_and_registration():
    error = _error(_run([(Procedure.RESTRICT, RestrictArgs(flags=8))])[0])
    assert error.code == ErrorCode.INVALID_ARG


def test_new_and_create_lockspace():
    service = FakeLockService()
    replies = _run([(Procedure.CREATE_LOCKSPACE, CreateLockspaceArgs("/ls")),
                    (Procedure.CREATE_LOCKSPACE, CreateLockspaceArgs("/ls")),
                    (Procedure.REGISTER, RegisterArgs(OWNER)),
                    (Procedure.NEW, NewArgs("")), (Procedure.NEW, NewArgs("/ls")), (Procedure.NEW, NewArgs("/b"))],
                   service=service)
    _ok(replies[0])
    _ok(replies[1])  # idempotent
    assert _error(replies[3]).message == "Requested operation is not valid: the default lockspace already exists"
    exists = _error(replies[4])
    assert (exists.code, exists.domain) == (1, 7)
    assert exists.message == "internal error: Lockspace for path /ls already exists"
    _ok(replies[5])
    assert "/b" in service.lockspaces


def test_release_errors():
    service = FakeLockService(implicit_root=LEASES)
    _run([(Procedure.REGISTER, RegisterArgs(OWNER)),
          (Procedure.ACQUIRE_RESOURCE, ResourceArgs(f"{LEASES}/a", "k"))], service=service)
    other = Owner(OWNER.uuid, "vm2", 42, 77)
    replies = _run([(Procedure.REGISTER, RegisterArgs(other)),
                    (Procedure.RELEASE_RESOURCE, ResourceArgs(f"{LEASES}/a", "free")),
                    (Procedure.RELEASE_RESOURCE, ResourceArgs(f"{LEASES}/a", "k"))], service=service)
    not_locked = _error(replies[1])
    assert (not_locked.code, not_locked.domain) == (87, 51)
    assert not_locked.message == "resource busy: Lockspace resource 'free' is not locked"
    not_owner = _error(replies[2])
    assert (not_owner.code, not_owner.domain) == (1, 51)
    assert not_owner.message == "internal error: owner 77 does not hold the resource lock"
    assert service.holders(f"{LEASES}/a", "k") == [QEMU_PID]


def test_shared_holders_and_exclusive_reacquire():
    service = FakeLockService()
    first = _run([(Procedure.REGISTER, RegisterArgs(OWNER)),
                  (Procedure.ACQUIRE_RESOURCE, ResourceArgs("", "/img", AcquireFlags.SHARED | AcquireFlags.AUTOCREATE)),
                  (Procedure.ACQUIRE_RESOURCE, ResourceArgs("", "/img", AcquireFlags.SHARED)),
                  (Procedure.ACQUIRE_RESOURCE, ResourceArgs("", "/img"))], service=service)
    _ok(first[1])
    _ok(first[2])
    assert _error(first[3]).code == 87
    assert service.holders("", "/img") == [QEMU_PID, QEMU_PID]


@pytest.mark.parametrize(("error", "proc", "args", "expected"), [
    (LeaseHeld("held by host b", reason="live", retry_after_s=3.0), Procedure.ACQUIRE_RESOURCE,
     ResourceArgs("/p", "k"), (87, 51, "resource busy: Lockspace resource 'k' is locked")),
    (LeaseHeld("x", reason="r", retry_after_s=None), Procedure.DELETE_RESOURCE, ResourceArgs("/p", "k"),
     (87, 51, "resource busy: Lockspace resource 'k' is locked")),
    (LockspaceNotFound("/p"), Procedure.ACQUIRE_RESOURCE, ResourceArgs("/p", "k"),
     (1, 7, "internal error: Lockspace for path /p does not exist")),
    (FileNotFoundError(errno.ENOENT, "x", "/p/k"), Procedure.ACQUIRE_RESOURCE, ResourceArgs("/p", "k"),
     (38, 51, "Unable to open resource /p/k: No such file or directory")),
    (PermissionError(errno.EACCES, "x"), Procedure.ACQUIRE_RESOURCE, ResourceArgs("/p", "k", AcquireFlags.AUTOCREATE),
     (38, 51, f"Unable to open/create resource /p/k: {os.strerror(errno.EACCES)}")),
    (StoreUnavailable("rados: pool lockd did not answer within 5 s\nretry"), Procedure.ACQUIRE_RESOURCE,
     ResourceArgs("/p", "k"), (1, 51, "internal error: rados: pool lockd did not answer within 5 s retry")),
    (InvalidRequest("bad key"), Procedure.ACQUIRE_RESOURCE, ResourceArgs("/p", "k"),
     (1, 51, "internal error: bad key")),
    (RuntimeError("boom"), Procedure.CREATE_LOCKSPACE, CreateLockspaceArgs("/p"),
     (1, 7, "internal error: lockd failed unexpectedly in CREATE_LOCKSPACE: RuntimeError: boom")),
])
def test_to_wire_error(error: BaseException, proc: Procedure, args: object, expected: tuple[int, int, str]):
    wire = to_wire_error(error, proc, args)  # type: ignore[arg-type]
    assert (wire.code, wire.domain, wire.message) == expected
    assert wire.level == 2 and wire.dom is None and wire.net is None and wire.str3 is None
    if wire.code == ErrorCode.SYSTEM_ERROR:
        assert wire.int1 == error.errno and wire.str1 == "%s"  # type: ignore[attr-defined]


def test_system_error_carries_errno_like_the_recording():
    wire = to_wire_error(FileNotFoundError(errno.ENOENT, "x", "/f"), Procedure.ACQUIRE_RESOURCE, ResourceArgs("", "/f"))
    assert (wire.str1, wire.str2, wire.int1, wire.int2) == ("%s", wire.message, 2, -1)
    assert wire.domain == ErrorDomain.LOCKSPACE


# ---- generic RPC answers (spec §2.7) ---------------------------------------------------------------


def _raw(header: Header, payload: bytes = b"") -> Message | None:
    async def go() -> Message | None:
        return await handle_message(Message(header, payload), ConnectionState(1, 0), FakeLockService())

    return asyncio.run(go())


def test_unknown_program_or_version():
    error = _error(_raw(Header(0x12345678, 1, 1, 0, 3, 0)))
    assert (error.code, error.domain, error.message) == (39, 7, "Cannot find program 305419896 version 1")
    error = _error(_raw(Header(PROGRAM, 2, 1, 0, 3, 0)))
    assert error.message == "Cannot find program 245874415 version 2"
    assert _error(_raw(Header(0xFFFFFFFF, 1, 1, 0, 0, 0))).message == "Cannot find program -1 version 1"
    assert _raw(Header(0x12345678, 1, 1, MessageType.REPLY, 3, 0)) is None


def test_unknown_procedure_status_and_undecodable_payload():
    for proc in (0, 9, -1):
        assert _error(_raw(Header(PROGRAM, 1, proc, 0, 0, 0))).message == f"unknown procedure: {proc}"
    assert _error(_raw(Header(PROGRAM, 1, 1, 0, 0, 2))).message == "Unexpected message status 2"
    assert _error(_raw(Header(PROGRAM, 1, 6, 0, 0, 0), b"\x00\x00")).message == "Unable to decode message payload"
    too_long = XdrWriter()
    too_long.string("x" * 65537)
    reply = _raw(Header(PROGRAM, 1, 8, 0, 0, 0), bytes(too_long))
    assert _error(reply).message == "Unable to decode message payload"
    nul = XdrWriter()
    nul.string("/a\0b")
    assert _error(_raw(Header(PROGRAM, 1, 8, 0, 0, 0), bytes(nul))).code == 39


def test_non_calls_get_no_answer_and_fd_calls_close():
    for message_type in (MessageType.REPLY, MessageType.MESSAGE, MessageType.STREAM, MessageType.STREAM_HOLE,
                         MessageType.REPLY_WITH_FDS, 99):
        assert _raw(Header(PROGRAM, 1, 1, message_type, 0, 0)) is None
    with pytest.raises(CloseConnection):
        _raw(Header(PROGRAM, 1, 1, MessageType.CALL_WITH_FDS, 0, 0), bytes(4))


# ---- lease mapping -------------------------------------------------------------------------------


def test_parse_resource_maps_leases_and_disks():
    assert parse_resource(f"{LEASES}/ls1", "key1", lease_root=LEASES) == LockspaceLease("ls1", "key1")
    assert parse_resource(f"{LEASES}/a/b", "k", lease_root=LEASES + "/") == LockspaceLease("a/b", "k")
    assert parse_resource("", "/var/lib/images/d.img", lease_root=LEASES) == DiskLease("/var/lib/images/d.img")


@pytest.mark.parametrize("path", ["/elsewhere/ls1", LEASES, LEASES + "/", f"{LEASES}/ls1/", f"{LEASES}/../x",
                                  f"{LEASES}//ls1", f"{LEASES}x/ls1", "relative/ls1"])
def test_parse_resource_refuses_lockspaces_outside_the_root(path: str):
    with pytest.raises(LockspaceNotFound):
        parse_resource(path, "k", lease_root=LEASES)


@pytest.mark.parametrize(("path", "name"), [(f"{LEASES}/ls", ""), (f"{LEASES}/ls", "a/b"), (f"{LEASES}/ls", ".."),
                                            ("", "relative.img"), ("", "/a/../b")])
def test_parse_resource_refuses_bad_names(path: str, name: str):
    with pytest.raises(InvalidRequest):
        parse_resource(path, name, lease_root=LEASES)


# ---- fuzz ----------------------------------------------------------------------------------------

_valid_frames = st.sampled_from([
    encode_call(Procedure.REGISTER, 0, RegisterArgs(OWNER)).encode(),
    encode_call(Procedure.ACQUIRE_RESOURCE, 1, ResourceArgs(f"{LEASES}/ls1", "key1", 2)).encode(),
    encode_call(Procedure.CREATE_LOCKSPACE, 0, CreateLockspaceArgs(f"{LEASES}/ls1")).encode(),
    encode_call(Procedure.RESTRICT, 2, RestrictArgs()).encode(),
])


@st.composite
def _mutated_streams(draw: st.DrawFn) -> bytes:
    """Valid frames with bytes flipped, cut, inserted, or header fields replaced; or plain noise."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    frame = bytearray(draw(_valid_frames))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "field", "length"]))
        if action == "flip" and frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
        elif action == "cut":
            del frame[draw(st.integers(0, len(frame))):]
        elif action == "insert":
            at = draw(st.integers(0, len(frame)))
            frame[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif action == "field" and len(frame) >= 28:
            at = draw(st.sampled_from([4, 8, 12, 16, 20, 24, 28]))
            frame[at:at + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
        elif action == "length" and len(frame) >= 4:
            frame[:4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    return bytes(frame)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutated_streams(), min_size=1, max_size=4), st.integers(1, 64))
def test_fuzzed_streams_never_crash_and_get_a_clean_reply_or_close(streams: list[bytes], piece: int):
    async def serve() -> None:
        service = FakeLockService(implicit_root=LEASES)
        conn = ConnectionState(peer_pid=QEMU_PID, peer_uid=0)
        decoder = FrameDecoder(max_frame_bytes=1 << 20)
        data = b"".join(streams)
        try:
            for start in range(0, len(data), piece):
                for message in decoder.feed(data[start:start + piece]):
                    reply = await handle_message(message, conn, service)
                    if reply is None:
                        continue
                    header = reply.header
                    # A reply always answers the call it belongs to and is itself well-formed.
                    assert (header.prog, header.vers, header.proc, header.serial) == (
                        message.header.prog, message.header.vers, message.header.proc, message.header.serial)
                    assert header.type == MessageType.REPLY
                    if header.status == MessageStatus.ERROR:
                        error = WireError.decode(reply.payload_reader())
                        assert error.code in {e.value for e in ErrorCode} and error.message
                    else:
                        assert reply.payload == b""
        except (FrameError, CloseConnection):
            pass  # the server closes the connection: an allowed answer

    asyncio.run(serve())


def test_release_refusals_use_virtlockds_text_whatever_the_service_says():
    from lockd.rpc.virtlockd import NotResourceOwner

    for error in (NotResourceOwner("lease ls/k belongs to pid 9"), LeaseHeld("x", reason="r", retry_after_s=None)):
        wire = to_wire_error(error, Procedure.RELEASE_RESOURCE, ResourceArgs("/p", "k"), OWNER)
        assert (wire.code, wire.domain) == (1, 51)
        assert wire.message == f"internal error: owner {QEMU_PID} does not hold the resource lock"
