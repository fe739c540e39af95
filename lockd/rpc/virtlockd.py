"""virtlockd's lock program (0x0EA7BEEF v1), sans-I/O: typed calls, dispatch, and libvirt error replies.

libvirt 9.0's stock ``lockd`` lock-manager plugin speaks this program to whatever listens on the
virtlockd socket; lockd answers it so that ``lock_manager = "lockd"`` works unchanged. This module
decodes a CALL into a typed request, runs virtlockd's own checks (flags, restricted connection,
registered owner) in virtlockd's order, hands the lock work to a ``LockService`` (the lease manager
implements it), and encodes the answer: a 28-byte void REPLY, or a REPLY/ERROR carrying a
``virNetMessageError`` built in exactly one place, ``to_wire_error()``, byte-for-byte like
virtlockd's (see ../shared/docs/virtlockd-protocol.md §2.7, §3, §6.8 and the recorded traffic).

It contains no I/O code whatsoever; ``server.py`` owns sockets. It cannot pass file descriptors
(CALL_WITH_FDS closes the connection; lockd.so never sends one). Fencing is not done here: whether a
closed connection kills its QEMU is the service's decision (``LockService.connection_closed``).

Lease mapping: libvirt sends ``<lease><lockspace>LS</lockspace><key>K</key><target path='D'/>`` as
ACQUIRE(path "D/LS", name K, flags 0) and file/block disks in direct mode as ACQUIRE(path "", name =
disk path). ``parse_resource()`` turns such a pair into a ``LockspaceLease`` or a ``DiskLease``.
"""

from __future__ import annotations

import enum
import logging
import os
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from lockd.errors import InvalidRequest, LeaseHeld, LockdError, NotFound, ProtocolError, UserError
from lockd.rpc.virnet import (
    Header,
    Message,
    MessageStatus,
    MessageType,
    WireError,
    error_reply,
    is_keepalive,
    keepalive_answer,
    void_reply,
)
from lockd.rpc.xdr import XdrError, XdrReader, XdrWriter

log = logging.getLogger(__name__)

PROGRAM = 0x0EA7BEEF
VERSION = 1
# virLockSpaceProtocolNonNullString is string<VIR_LOCK_SPACE_PROTOCOL_STRING_MAX>.
STRING_MAX = 65536
UUID_BYTES = 16


class Procedure(enum.IntEnum):
    REGISTER = 1
    RESTRICT = 2
    NEW = 3
    CREATE_RESOURCE = 4
    DELETE_RESOURCE = 5
    ACQUIRE_RESOURCE = 6
    RELEASE_RESOURCE = 7
    CREATE_LOCKSPACE = 8


class AcquireFlags(enum.IntFlag):
    SHARED = 1
    AUTOCREATE = 2


class ErrorCode(enum.IntEnum):
    """The virErrorNumber values this program sends."""

    INTERNAL_ERROR = 1
    INVALID_ARG = 8
    OPERATION_DENIED = 29
    SYSTEM_ERROR = 38
    RPC = 39
    OPERATION_INVALID = 55
    RESOURCE_BUSY = 87


class ErrorDomain(enum.IntEnum):
    """virErrorDomain: RPC for the dispatcher's own checks, LOCKSPACE for lock-table outcomes."""

    RPC = 7
    LOCKSPACE = 51


# libvirt's virErrorMsg(): the message format for each code when detail text is given. libvirt puts
# this format in str1 and the detail in str2, and the user reads format % detail.
_MESSAGE_FORMAT: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL_ERROR: "internal error: %s",
    ErrorCode.OPERATION_DENIED: "operation forbidden: %s",
    ErrorCode.SYSTEM_ERROR: "%s",
    ErrorCode.RPC: "%s",
    ErrorCode.OPERATION_INVALID: "Requested operation is not valid: %s",
    ErrorCode.RESOURCE_BUSY: "resource busy: %s",
}


# ---------------------------------------------------------------------------------------------------
# Errors a LockService raises besides lockd.errors.LeaseHeld (they exist because virtlockd answers
# each case with its own code and text, which users and libvirt know).


class LockspaceNotFound(NotFound):
    """The lockspace path is not one lockd serves (outside the lease root and never created)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"Lockspace for path {path} does not exist")
        self.path = path


class LockspaceExists(UserError):
    """NEW was asked for a lockspace that already exists."""

    def __init__(self, path: str) -> None:
        super().__init__(f"Lockspace for path {path} already exists")
        self.path = path


class ResourceNotLocked(NotFound):
    """RELEASE of a resource nobody holds."""


class NotResourceOwner(UserError):
    """RELEASE by an owner pid that does not hold the resource (someone else does)."""


# ---------------------------------------------------------------------------------------------------
# Wire types


@dataclass(frozen=True)
class Owner:
    """``virLockSpaceProtocolOwner``: the domain and its QEMU pid, as REGISTER sends them."""

    uuid: bytes
    name: str
    id: int
    pid: int

    def encode(self, writer: XdrWriter) -> None:
        writer.opaque_fixed(self.uuid, UUID_BYTES)
        _write_string(writer, self.name)
        writer.uint32(self.id)
        writer.uint32(self.pid)

    @classmethod
    def decode(cls, reader: XdrReader) -> Owner:
        return cls(uuid=reader.opaque_fixed(UUID_BYTES), name=_read_string(reader), id=reader.uint32(),
                   pid=reader.uint32())


@dataclass(frozen=True)
class RegisterArgs:
    owner: Owner
    flags: int = 0

    def encode(self, writer: XdrWriter) -> None:
        self.owner.encode(writer)
        writer.uint32(self.flags)

    @classmethod
    def decode(cls, reader: XdrReader) -> RegisterArgs:
        return cls(owner=Owner.decode(reader), flags=reader.uint32())


@dataclass(frozen=True)
class RestrictArgs:
    flags: int = 0

    def encode(self, writer: XdrWriter) -> None:
        writer.uint32(self.flags)

    @classmethod
    def decode(cls, reader: XdrReader) -> RestrictArgs:
        return cls(flags=reader.uint32())


@dataclass(frozen=True)
class NewArgs:
    path: str
    flags: int = 0

    def encode(self, writer: XdrWriter) -> None:
        _write_string(writer, self.path)
        writer.uint32(self.flags)

    @classmethod
    def decode(cls, reader: XdrReader) -> NewArgs:
        return cls(path=_read_string(reader), flags=reader.uint32())


@dataclass(frozen=True)
class ResourceArgs:
    """The shared shape of CREATE/DELETE/ACQUIRE/RELEASE_RESOURCE: lockspace path, resource name, flags."""

    path: str
    name: str
    flags: int = 0

    def encode(self, writer: XdrWriter) -> None:
        _write_string(writer, self.path)
        _write_string(writer, self.name)
        writer.uint32(self.flags)

    @classmethod
    def decode(cls, reader: XdrReader) -> ResourceArgs:
        return cls(path=_read_string(reader), name=_read_string(reader), flags=reader.uint32())


@dataclass(frozen=True)
class CreateLockspaceArgs:
    """CREATE_LOCKSPACE has no flags field."""

    path: str

    def encode(self, writer: XdrWriter) -> None:
        _write_string(writer, self.path)

    @classmethod
    def decode(cls, reader: XdrReader) -> CreateLockspaceArgs:
        return cls(path=_read_string(reader))


CallArgs = RegisterArgs | RestrictArgs | NewArgs | ResourceArgs | CreateLockspaceArgs


def encode_call(proc: Procedure, serial: int, args: CallArgs) -> Message:
    """A CALL of this program (used by tests and by lockd's own client tools)."""
    writer = XdrWriter()
    args.encode(writer)
    return Message(Header(PROGRAM, VERSION, proc, MessageType.CALL, serial, MessageStatus.OK), bytes(writer))


def _write_string(writer: XdrWriter, value: str) -> None:
    writer.string(value, STRING_MAX)


def _read_string(reader: XdrReader) -> str:
    value = reader.string(STRING_MAX)
    # libvirt's C side would silently cut the string at the NUL, i.e. lock a different name than the
    # one sent; refusing is the only safe answer.
    if "\0" in value:
        raise XdrError("string contains a NUL byte")
    return value


# ---------------------------------------------------------------------------------------------------
# Connection state and the service the dispatcher drives


@dataclass
class ConnectionState:
    """What one client connection has told us; owned by that connection's coroutine in server.py.

    ``peer_pid``/``peer_uid`` come from SO_PEERCRED at accept time. The connection whose peer pid is
    the registered owner pid is the one QEMU inherited (spec §4.2): its end means QEMU is gone.
    """

    peer_pid: int
    peer_uid: int
    owner: Owner | None = None
    restricted: bool = False

    @property
    def registered(self) -> bool:
        # virtlockd tests the stored owner pid, not the id (REGISTER refuses id 0 itself).
        return self.owner is not None and self.owner.pid != 0

    @property
    def held_by_owner(self) -> bool:
        """True for the connection QEMU keeps open for its whole life."""
        return self.owner is not None and self.owner.pid != 0 and self.owner.pid == self.peer_pid


class ConnectionEnd(enum.Enum):
    """Why a connection ended. Only PEER_CLOSED says anything about the peer: the others are our doing,
    and a QEMU whose connection we closed may well still be running."""

    PEER_CLOSED = "peer closed"  # EOF or reset from the client: for QEMU's connection, QEMU exited
    PROTOCOL_ERROR = "protocol error"  # we closed it after a malformed frame
    SERVER_ERROR = "server error"  # we closed it after a bug of ours while serving it
    SERVER_SHUTDOWN = "server shutdown"  # lockd is stopping: leases must survive (unlike virtlockd)


class LockService(Protocol):
    """The lock work behind the wire; lockd/manager.py implements it, tests use a fake.

    Owners are identified by ``owner.pid`` (the QEMU pid), never by the connection: libvirtd sends
    ACQUIRE on a short-lived connection and the lease stays with the pid after it closes. Every method
    returns None on success and raises on refusal; ``to_wire_error`` turns the exception into the
    answer libvirt expects:

    - ``lockd.errors.LeaseHeld``: busy (87) "Lockspace resource 'NAME' is locked" (acquire, create,
      delete; on release it means "held by someone else", prefer ``NotResourceOwner`` there);
    - ``LockspaceNotFound`` / ``LockspaceExists``: the lockspace path is unknown / already exists;
    - ``ResourceNotLocked`` / ``NotResourceOwner``: release of a free resource / of someone else's
      (the wire texts are virtlockd's, built from the request, whatever the exception's message);
    - ``OSError`` with an errno: a system error (38) naming the resource file, like virtlockd;
    - any other ``LockdError`` (``StoreUnavailable``, ``LeaseLost``, ``InvalidRequest``...): an
      internal error (1) carrying the exception's one-line message.
    """

    async def register(self, conn: ConnectionState, owner: Owner) -> None:
        """A connection announced its owner (already validated: id != 0). May be called again."""

    async def create_lockspace(self, path: str) -> None:
        """CREATE_LOCKSPACE: make ``path`` a known lockspace; idempotent."""

    async def new_lockspace(self, path: str) -> None:
        """NEW: like ``create_lockspace`` but raises ``LockspaceExists`` when it exists (path != "")."""

    async def create_resource(self, path: str, name: str) -> None:
        """CREATE_RESOURCE: make the resource exist without locking it; ``LeaseHeld`` if held."""

    async def delete_resource(self, path: str, name: str) -> None:
        """DELETE_RESOURCE: remove the resource; absent is fine; ``LeaseHeld`` if held."""

    async def acquire(self, owner: Owner, path: str, name: str, flags: AcquireFlags) -> None:
        """ACQUIRE_RESOURCE for ``owner.pid``: at once or ``LeaseHeld``, never waiting a TTL.

        Exclusive conflicts with anything, including the same owner again (virtlockd semantics);
        SHARED adds the pid to a shared holding. ``parse_resource`` maps (path, name) to a lease.
        """

    async def release(self, owner: Owner, path: str, name: str) -> None:
        """RELEASE_RESOURCE: drop one holding of ``owner.pid``."""

    async def connection_closed(self, conn: ConnectionState, end: ConnectionEnd) -> None:
        """A connection ended. virtlockd's rule (§6.5): when ``conn.held_by_owner`` and ``end`` is
        PEER_CLOSED, QEMU is gone: release every lease of that pid (and kill it if it still runs and
        held any). For any other ``end`` the peer may be alive: on SERVER_SHUTDOWN nothing may be
        released or killed (VMs keep running, the next lockd re-adopts their leases); after
        PROTOCOL_ERROR/SERVER_ERROR the owner's process handle, not this socket, tells when it exits."""


# ---------------------------------------------------------------------------------------------------
# The lease mapping (pure)


@dataclass(frozen=True)
class LockspaceLease:
    """A ``<lease>``: lockspace ``LS`` (relative to the lease root, may contain '/') and key ``K``."""

    lockspace: str
    key: str


@dataclass(frozen=True)
class DiskLease:
    """A file/block disk locked in virtlockd's direct mode (default lockspace ""): its absolute path."""

    path: str


def parse_resource(path: str, name: str, *, lease_root: str) -> LockspaceLease | DiskLease:
    """Map an ACQUIRE/RELEASE (path, name) onto what lockd locks.

    ``path == ""`` is the default lockspace: ``name`` is an absolute disk path. Any other ``path`` must
    be a normalised absolute path strictly under ``lease_root``; the part below the root is the
    lockspace and ``name`` the key (a single path component, as virtlockd makes it a file name).
    Raises ``LockspaceNotFound`` for a path outside the root (virtlockd's answer for an unknown
    lockspace) and ``lockd.errors.InvalidRequest`` for a name that cannot be a key or disk path.
    """
    if path == "":
        if not name.startswith("/") or posixpath.normpath(name) != name:
            raise InvalidRequest(f"disk path {name!r} in the default lockspace is not a normalised "
                                 "absolute path")
        return DiskLease(name)
    root = posixpath.normpath(lease_root)
    # virtlockd keys lockspaces by the exact string ("D/LS/" is not "D/LS"), so only the normal form
    # maps onto a lockspace; anything else is unknown rather than silently aliased.
    if posixpath.normpath(path) != path or not path.startswith(root.rstrip("/") + "/"):
        raise LockspaceNotFound(path)
    lockspace = path[len(root.rstrip("/")) + 1:]
    if not name or "/" in name or name in (".", ".."):
        raise InvalidRequest(f"lease key {name!r} in lockspace {lockspace!r} must be one non-empty path "
                             "component")
    return LockspaceLease(lockspace=lockspace, key=name)


# ---------------------------------------------------------------------------------------------------
# Errors: the one conversion to the wire


def libvirt_error(code: ErrorCode, domain: ErrorDomain, detail: str, *, errno_value: int = -1) -> WireError:
    """The error struct libvirt's virReportError()/virReportSystemError() would produce for ``detail``."""
    if code is ErrorCode.SYSTEM_ERROR:
        # virReportSystemError: the full text in message and str2, "%s" in str1, the errno in int1.
        return WireError(code=code, domain=domain, message=detail, str1="%s", str2=detail, int1=errno_value)
    message_format = _MESSAGE_FORMAT[code]
    return WireError(code=code, domain=domain, message=message_format.replace("%s", detail),
                     str1=message_format, str2=detail)


def invalid_flags_error(proc: Procedure, unsupported: int) -> WireError:
    """virCheckFlags() failing inside virLockSpaceProtocolDispatch<Proc>: str1 names the function."""
    function = "virLockSpaceProtocolDispatch" + "".join(part.capitalize() for part in proc.name.split("_"))
    return WireError(code=ErrorCode.INVALID_ARG, domain=ErrorDomain.RPC,
                     message=f"unsupported flags (0x{unsupported:x}) in function {function}",
                     str1=function, str2="flags", int1=0, int2=0)


def rpc_error(detail: str) -> WireError:
    """An error of the RPC layer itself (code 39, domain RPC)."""
    return libvirt_error(ErrorCode.RPC, ErrorDomain.RPC, detail)


def to_wire_error(error: BaseException, proc: Procedure, args: CallArgs | None,
                  owner: Owner | None = None) -> WireError:
    """Convert what a LockService raised while serving ``proc`` for ``owner`` into the error libvirt
    users know. This is the only place where lockd's exceptions become libvirt error codes and texts.
    """
    name = args.name if isinstance(args, ResourceArgs) else ""
    path = getattr(args, "path", "")
    if isinstance(error, NotResourceOwner) or (isinstance(error, LeaseHeld)
                                               and proc is Procedure.RELEASE_RESOURCE):
        # virtlockd's text names the pid, whatever words the service chose.
        pid = owner.pid if owner is not None else 0
        return libvirt_error(ErrorCode.INTERNAL_ERROR, ErrorDomain.LOCKSPACE,
                             f"owner {pid} does not hold the resource lock")
    if isinstance(error, LeaseHeld):
        return libvirt_error(ErrorCode.RESOURCE_BUSY, ErrorDomain.LOCKSPACE,
                             f"Lockspace resource '{name}' is locked")
    if isinstance(error, ResourceNotLocked):
        return libvirt_error(ErrorCode.RESOURCE_BUSY, ErrorDomain.LOCKSPACE,
                             f"Lockspace resource '{name}' is not locked")
    if isinstance(error, LockspaceNotFound | LockspaceExists):
        # virtlockd reports these from its dispatcher, hence domain RPC, not LOCKSPACE.
        return libvirt_error(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, str(error))
    if isinstance(error, OSError) and error.errno is not None:
        file_path = error.filename if error.filename is not None else _resource_file(path, name)
        autocreate = isinstance(args, ResourceArgs) and bool(args.flags & AcquireFlags.AUTOCREATE)
        action = "Unable to open/create resource" if autocreate else "Unable to open resource"
        return libvirt_error(ErrorCode.SYSTEM_ERROR, ErrorDomain.LOCKSPACE,
                             f"{action} {file_path}: {os.strerror(error.errno)}", errno_value=error.errno)
    if isinstance(error, LockdError):
        return libvirt_error(ErrorCode.INTERNAL_ERROR, ErrorDomain.LOCKSPACE, _one_line(str(error)))
    # A bug in lockd, not a refusal: say so without leaking a traceback to libvirt.
    return libvirt_error(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC,
                         _one_line(f"lockd failed unexpectedly in {proc.name}: {type(error).__name__}: {error}"))


def _resource_file(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------
# Dispatch


@dataclass(frozen=True)
class ProcedureSpec:
    """One row of PROCEDURES: how to decode the args, which flags and checks apply, what runs."""

    decode: Callable[[XdrReader], CallArgs]
    allowed_flags: int | None  # None: the args have no flags field (CREATE_LOCKSPACE)
    needs_owner: bool
    handler: Callable[[LockService, ConnectionState, CallArgs], Awaitable[None]]


_REGISTRATION_MISSING = "lock owner details have not been registered"


class _Refused(Exception):
    """A check of the dispatcher itself failed; carries the ready wire error."""

    def __init__(self, wire: WireError) -> None:
        super().__init__(wire.message)
        self.wire = wire


async def handle_register(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    assert isinstance(args, RegisterArgs)
    if args.owner.id == 0:
        raise _Refused(libvirt_error(ErrorCode.OPERATION_INVALID, ErrorDomain.RPC, _REGISTRATION_MISSING))
    await service.register(conn, args.owner)
    conn.owner = args.owner


async def handle_restrict(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    conn.restricted = True


async def handle_new(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    assert isinstance(args, NewArgs)
    if args.path == "":
        raise _Refused(libvirt_error(ErrorCode.OPERATION_INVALID, ErrorDomain.RPC,
                                     "the default lockspace already exists"))
    await service.new_lockspace(args.path)


async def handle_create_resource(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    assert isinstance(args, ResourceArgs)
    await service.create_resource(args.path, args.name)


async def handle_delete_resource(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    assert isinstance(args, ResourceArgs)
    await service.delete_resource(args.path, args.name)


async def handle_acquire(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    assert isinstance(args, ResourceArgs) and conn.owner is not None
    await service.acquire(conn.owner, args.path, args.name, AcquireFlags(args.flags))


async def handle_release(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    assert isinstance(args, ResourceArgs) and conn.owner is not None
    await service.release(conn.owner, args.path, args.name)


async def handle_create_lockspace(service: LockService, conn: ConnectionState, args: CallArgs) -> None:
    assert isinstance(args, CreateLockspaceArgs)
    await service.create_lockspace(args.path)


PROCEDURES: dict[Procedure, ProcedureSpec] = {
    Procedure.REGISTER: ProcedureSpec(RegisterArgs.decode, 0, False, handle_register),
    Procedure.RESTRICT: ProcedureSpec(RestrictArgs.decode, 0, True, handle_restrict),
    Procedure.NEW: ProcedureSpec(NewArgs.decode, 0, True, handle_new),
    Procedure.CREATE_RESOURCE: ProcedureSpec(ResourceArgs.decode, 0, True, handle_create_resource),
    Procedure.DELETE_RESOURCE: ProcedureSpec(ResourceArgs.decode, 0, True, handle_delete_resource),
    Procedure.ACQUIRE_RESOURCE: ProcedureSpec(ResourceArgs.decode, AcquireFlags.SHARED | AcquireFlags.AUTOCREATE,
                                              True, handle_acquire),
    Procedure.RELEASE_RESOURCE: ProcedureSpec(ResourceArgs.decode, 0, True, handle_release),
    Procedure.CREATE_LOCKSPACE: ProcedureSpec(CreateLockspaceArgs.decode, None, False, handle_create_lockspace),
}


class CloseConnection(ProtocolError):
    """The message cannot be answered within the protocol; the server must close the connection."""


async def handle_message(message: Message, conn: ConnectionState, service: LockService) -> Message | None:
    """Answer one decoded message the way virtlockd does; ``None`` means send nothing.

    Raises ``CloseConnection`` for what libvirt answers by closing (CALL_WITH_FDS, which would need fd
    passing). Never raises for a bad payload or a refused call: those become error replies.
    """
    header = message.header
    if is_keepalive(header) and header.type == MessageType.MESSAGE and header.vers == 1:
        return keepalive_answer(header)
    is_call = header.type in (MessageType.CALL, MessageType.CALL_WITH_FDS)
    if header.prog != PROGRAM or header.vers != VERSION:
        if not is_call:
            return None  # libvirt drops non-calls for unknown programs (stray replies, events)
        # libvirt formats both with %d, so a program number above 2^31 prints negative.
        prog = header.prog - 2**32 if header.prog >= 2**31 else header.prog
        vers = header.vers - 2**32 if header.vers >= 2**31 else header.vers
        return error_reply(header, rpc_error(f"Cannot find program {prog} version {vers}"))
    if header.type == MessageType.CALL_WITH_FDS:
        raise CloseConnection("CALL_WITH_FDS needs file-descriptor passing, which the lock program never uses")
    if not is_call:
        # REPLY, MESSAGE, STREAM, STREAM_HOLE sent to a server: virtlockd logs and sends no bytes.
        return None
    if header.status != MessageStatus.OK:
        status = header.status & 0xFFFFFFFF  # libvirt prints it with %u
        return error_reply(header, rpc_error(f"Unexpected message status {status}"))
    try:
        proc = Procedure(header.proc)
    except ValueError:
        return error_reply(header, rpc_error(f"unknown procedure: {header.proc}"))
    spec = PROCEDURES[proc]
    try:
        args = spec.decode(message.payload_reader())
    except XdrError:
        # libvirt does not check for trailing bytes after the args, and neither do we.
        return error_reply(header, rpc_error("Unable to decode message payload"))
    try:
        _check_allowed(proc, spec, conn, args)
        await spec.handler(service, conn, args)
    except _Refused as refused:
        return error_reply(header, refused.wire)
    except Exception as error:  # every refusal or failure of the service becomes an error reply
        if not isinstance(error, LockdError | OSError):
            log.exception("lockd bug while serving %s for pid %s", proc.name, conn.peer_pid)
        return error_reply(header, to_wire_error(error, proc, args, conn.owner))
    return void_reply(header)


def _check_allowed(proc: Procedure, spec: ProcedureSpec, conn: ConnectionState, args: CallArgs) -> None:
    """virtlockd's checks, in its order: flags, restricted connection, registered owner."""
    if spec.allowed_flags is not None:
        # int(): ~ on an IntFlag complements within the flag's own bits only and would hide unknown ones.
        unsupported = int(getattr(args, "flags", 0)) & ~int(spec.allowed_flags)
        if unsupported:
            raise _Refused(invalid_flags_error(proc, unsupported))
    if conn.restricted:
        raise _Refused(libvirt_error(ErrorCode.OPERATION_DENIED, ErrorDomain.RPC,
                                     "lock manager connection has been restricted"))
    if spec.needs_owner and not conn.registered:
        raise _Refused(libvirt_error(ErrorCode.OPERATION_INVALID, ErrorDomain.RPC, _REGISTRATION_MISSING))

