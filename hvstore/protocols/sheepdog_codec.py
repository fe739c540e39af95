"""Sheepdog 1.0 wire format, sans-I/O: request/response headers, payloads, object ids, inode layout.

No sockets here (h11's rule): bytes in, typed values out, and back. ``hvstore.protocols.sheepdog`` adds
the connection and the VDI operations on top; the test fake (``tests.fakes.sheepdog_fake``) decodes
requests and encodes responses with the same functions, so both sides share one definition of the format.

Spec: ``docs/sheepdog-protocol.md`` of the shared docs (written from sheepdog v1.0.1's
``include/sheepdog_proto.h`` and checked against a real sheep); vectors: ``vectors/sheepdog/transcript.jsonl``.
Every header is 48 bytes, little-endian (sheep sends its x86-64 structs raw and never byte-swaps).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from hvstore.errors import InvalidArgument

HEADER_SIZE = 48
PROTO_VER = 0x02  # public opcodes (< 0x80): sheep accepts 0..2
SHEEP_PROTO_VER = 0x0A  # internal opcodes (>= 0x80) must carry exactly this
DEFAULT_PORT = 7000

NAME_LEN = 256
TAG_LEN = 256
NR_VDIS = 1 << 24  # vid is 24 bits
VDI_BITMAP_BYTES = NR_VDIS // 8  # READ_VDIS must ask for exactly this many bytes
MAX_DATA_OBJS = 1 << 20  # flat (store_policy 0) inodes address this many objects
DEFAULT_BLOCK_SIZE_SHIFT = 22  # 4 MiB objects
MIN_BLOCK_SIZE_SHIFT, MAX_BLOCK_SIZE_SHIFT = 20, 31  # what QEMU allowed

INODE_HEADER_SIZE = 4664  # SD_INODE_HEADER_SIZE: data_vdi_id[] starts here
INODE_GREF_OFFSET = INODE_HEADER_SIZE + 4 * MAX_DATA_OBJS  # gref[] (sheep's refcounts: never write)
INODE_SIZE = INODE_GREF_OFFSET + 8 * MAX_DATA_OBJS  # 12,587,576 bytes
INODE_TAG_OFFSET = NAME_LEN
INDEX_BATCH = 128  # dog zeroes data_vdi_id[] in batches of this many entries

VDI_BIT = 1 << 63
VMSTATE_BIT = 1 << 62
VDI_ATTR_BIT = 1 << 61
VDI_BTREE_BIT = 1 << 60
LEDGER_BIT = 1 << 59
VDI_SPACE_SHIFT = 32
VID_MASK = NR_VDIS - 1
INDEX_MASK = (1 << 32) - 1

VDI_STATE_SIZE = 1428  # struct vdi_state, one per VDI in GET_VDI_COPIES


class Opcode(enum.IntEnum):
    CREATE_AND_WRITE_OBJ = 0x01
    READ_OBJ = 0x02
    WRITE_OBJ = 0x03
    REMOVE_OBJ = 0x04
    DISCARD_OBJ = 0x05
    NEW_VDI = 0x11
    LOCK_VDI = 0x12
    RELEASE_VDI = 0x13
    GET_VDI_INFO = 0x14
    READ_VDIS = 0x15
    FLUSH_VDI = 0x16
    DEL_VDI = 0x17
    GET_CLUSTER_DEFAULT = 0x18
    # internal (proto_ver 0x0A)
    GET_NODE_LIST = 0x82
    STAT_CLUSTER = 0x87
    GET_VDI_ATTR = 0x89
    GET_VDI_COPIES = 0xAB
    CLUSTER_INFO = 0xBE
    READ_DEL_VDIS = 0xC9

    @property
    def internal(self) -> bool:
        return self >= 0x80


OBJ_OPCODES = frozenset({Opcode.CREATE_AND_WRITE_OBJ, Opcode.READ_OBJ, Opcode.WRITE_OBJ,
                         Opcode.REMOVE_OBJ, Opcode.DISCARD_OBJ})
VDI_OPCODES = frozenset({Opcode.NEW_VDI, Opcode.LOCK_VDI, Opcode.RELEASE_VDI, Opcode.GET_VDI_INFO,
                         Opcode.READ_VDIS, Opcode.FLUSH_VDI, Opcode.DEL_VDI, Opcode.GET_CLUSTER_DEFAULT})


class Flag(enum.IntFlag):
    WRITE = 0x01  # a payload of data_length bytes follows the header
    COW = 0x02  # CREATE_AND_WRITE: fill the new object from cow_oid first
    CACHE = 0x04
    DIRECT = 0x08
    PIGGYBACK = 0x10
    TGT = 0x20


class Result(enum.IntEnum):
    SUCCESS = 0x00
    UNKNOWN = 0x01
    NO_OBJ = 0x02
    EIO = 0x03
    VDI_EXIST = 0x04
    INVALID_PARMS = 0x05
    SYSTEM_ERROR = 0x06
    VDI_LOCKED = 0x07
    NO_VDI = 0x08
    NO_BASE_VDI = 0x09
    VDI_READ = 0x0A
    VDI_WRITE = 0x0B
    BASE_VDI_READ = 0x0C
    BASE_VDI_WRITE = 0x0D
    NO_TAG = 0x0E
    STARTUP = 0x0F
    VDI_NOT_LOCKED = 0x10
    SHUTDOWN = 0x11
    NO_MEM = 0x12
    FULL_VDI = 0x13
    VER_MISMATCH = 0x14
    NO_SPACE = 0x15
    WAIT_FOR_FORMAT = 0x16
    WAIT_FOR_JOIN = 0x17
    JOIN_FAILED = 0x18
    HALT = 0x19
    READONLY = 0x1A
    INODE_INVALIDATED = 0x1D
    NOT_FORMATTED = 0x83
    BUFFER_SMALL = 0x88
    COLLECTING_CINFO = 0x95


RESULT_TEXT: dict[int, str] = {
    Result.SUCCESS: "success",
    Result.UNKNOWN: "unknown error",
    Result.NO_OBJ: "no such object",
    Result.EIO: "I/O error",
    Result.VDI_EXIST: "VDI exists already",
    Result.INVALID_PARMS: "invalid parameters",
    Result.SYSTEM_ERROR: "system error",
    Result.VDI_LOCKED: "VDI is locked",
    Result.NO_VDI: "no such VDI",
    Result.NO_BASE_VDI: "no such base VDI",
    Result.VDI_READ: "cannot read the VDI",
    Result.VDI_WRITE: "cannot write the VDI",
    Result.BASE_VDI_READ: "cannot read the base VDI",
    Result.BASE_VDI_WRITE: "cannot write the base VDI",
    Result.NO_TAG: "no such snapshot tag",
    Result.STARTUP: "sheep is starting up",
    Result.VDI_NOT_LOCKED: "VDI is not locked",
    Result.SHUTDOWN: "sheep is shutting down",
    Result.NO_MEM: "sheep is out of memory",
    Result.FULL_VDI: "no free VDI id left",
    Result.VER_MISMATCH: "protocol version mismatch",
    Result.NO_SPACE: "cluster is out of space",
    Result.WAIT_FOR_FORMAT: "cluster is not formatted (run 'dog cluster format')",
    Result.WAIT_FOR_JOIN: "cluster is waiting for nodes to join",
    Result.JOIN_FAILED: "node failed to join the cluster",
    Result.HALT: "cluster is halted (too few nodes for the redundancy)",
    Result.READONLY: "object belongs to a snapshot (read-only)",
    Result.INODE_INVALIDATED: "inode invalidated (shared lock)",
    Result.NOT_FORMATTED: "cluster is not formatted",
    Result.BUFFER_SMALL: "buffer too small",
    Result.COLLECTING_CINFO: "a node is still collecting lock state",
}


def result_text(code: int) -> str:
    """``"no such VDI (0x08)"`` for any result code, known or not."""
    return f"{RESULT_TEXT.get(code, 'unknown result')} (0x{code:02x})"


class LockType(enum.IntEnum):
    NORMAL = 0
    SHARED = 1


class LockState(enum.IntEnum):
    """``vdi_state.lock_state`` in GET_VDI_COPIES answers."""

    UNLOCKED = 1
    LOCKED = 2
    SHARED = 3


# -- object ids --------------------------------------------------------------------------------------
def inode_oid(vid: int) -> int:
    return VDI_BIT | (vid << VDI_SPACE_SHIFT)


def data_oid(vid: int, index: int) -> int:
    return (vid << VDI_SPACE_SHIFT) | index


def oid_to_vid(oid: int) -> int:
    return (oid >> VDI_SPACE_SHIFT) & VID_MASK


def oid_to_index(oid: int) -> int:
    return oid & INDEX_MASK


def is_inode_oid(oid: int) -> bool:
    return bool(oid & VDI_BIT)


def is_data_oid(oid: int) -> bool:
    return not oid & (VDI_BIT | VMSTATE_BIT | VDI_ATTR_BIT | VDI_BTREE_BIT | LEDGER_BIT)


def index_offset(index: int) -> int:
    """Byte offset of ``data_vdi_id[index]`` inside the inode object."""
    return INODE_HEADER_SIZE + 4 * index


def vid_hash(name: str) -> int:
    """sheep's starting slot for a new VDI of this name: 64-bit FNV-1a masked to 24 bits.

    Only a hint where sheep *starts* looking for a free id (and what the fake imitates): a client must
    never derive a vid from a name, because taken slots, snapshots and deleted VDIs move it.
    """
    value = 0xCBF29CE484222325
    for byte in name.encode():
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value & VID_MASK


# -- headers ------------------------------------------------------------------------------------------
_COMMON = struct.Struct("<BBHIII")  # proto_ver, opcode, flags, epoch, id, data_length
_OBJ = struct.Struct("<QQBBBBII4x")  # oid, cow_oid, copies, copy_policy, ec_index, reserved, tgt_epoch, offset
_VDI = struct.Struct("<QIBBBBII8x")  # vdi_size, base_vdi_id, copies, copy_policy, store_policy, shift, snapid, type
_RSP = struct.Struct("<BBHIIII")  # common + result
_RSP_VDI = struct.Struct("<4xIIBB14x")  # rsvd, vdi_id, attr_id, copies, block_size_shift
_RSP_OBJ = struct.Struct("<B3xQ16x")  # copies, pad, offset
_RSP_DEFAULT = struct.Struct("<BBB25x")  # nr_copies, copy_policy, block_size_shift
assert _COMMON.size == 16 and _OBJ.size == 32 and _VDI.size == 32 and _RSP.size == 20 and _RSP_VDI.size == 28


class ProtocolError(ValueError):
    """Bytes that are not a valid Sheepdog header or payload."""


@dataclass(frozen=True)
class ObjFields:
    """The ``obj`` layout of a request (opcodes 0x01-0x05)."""

    oid: int
    cow_oid: int = 0
    copies: int = 0
    copy_policy: int = 0
    ec_index: int = 0
    tgt_epoch: int = 0
    offset: int = 0


@dataclass(frozen=True)
class VdiFields:
    """The ``vdi`` layout of a request (opcodes 0x11-0x18). ``lock_type`` is the C field ``type``."""

    vdi_size: int = 0
    base_vdi_id: int = 0
    copies: int = 0
    copy_policy: int = 0
    store_policy: int = 0
    block_size_shift: int = 0
    snapid: int = 0
    lock_type: int = 0


@dataclass(frozen=True)
class Request:
    """A request header. ``fields`` is ObjFields, VdiFields, or the raw 32 bytes of another layout."""

    opcode: int
    id: int
    data_length: int
    fields: ObjFields | VdiFields | bytes = b"\0" * 32
    flags: int = 0
    epoch: int = 0
    proto_ver: int = PROTO_VER


def encode_request(request: Request) -> bytes:
    common = _COMMON.pack(request.proto_ver, request.opcode, request.flags, request.epoch,
                          request.id, request.data_length)
    fields = request.fields
    if isinstance(fields, ObjFields):
        specific = _OBJ.pack(fields.oid, fields.cow_oid, fields.copies, fields.copy_policy,
                             fields.ec_index, 0, fields.tgt_epoch, fields.offset)
    elif isinstance(fields, VdiFields):
        specific = _VDI.pack(fields.vdi_size, fields.base_vdi_id, fields.copies, fields.copy_policy,
                             fields.store_policy, fields.block_size_shift, fields.snapid, fields.lock_type)
    else:
        if len(fields) != 32:
            raise ProtocolError(f"raw request fields must be 32 bytes, got {len(fields)}")
        specific = bytes(fields)
    return common + specific


def decode_request(data: bytes) -> Request:
    """Decode a 48-byte request header; the layout of bytes 16-47 is chosen by opcode."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"a request header is {HEADER_SIZE} bytes, got {len(data)}")
    proto_ver, opcode, flags, epoch, req_id, data_length = _COMMON.unpack_from(data)
    fields: ObjFields | VdiFields | bytes
    if opcode in OBJ_OPCODES:
        oid, cow_oid, copies, policy, ec_index, _, tgt_epoch, offset = _OBJ.unpack_from(data, 16)
        fields = ObjFields(oid, cow_oid, copies, policy, ec_index, tgt_epoch, offset)
    elif opcode in VDI_OPCODES:
        fields = VdiFields(*_VDI.unpack_from(data, 16))
    else:
        fields = bytes(data[16:])
    return Request(opcode, req_id, data_length, fields, flags, epoch, proto_ver)


@dataclass(frozen=True)
class VdiResult:
    """The VDI part of a response: GET_VDI_INFO, LOCK_VDI, NEW_VDI and DEL_VDI answers."""

    vdi_id: int
    attr_id: int = 0
    copies: int = 0
    block_size_shift: int = 0


@dataclass(frozen=True)
class ClusterDefault:
    nr_copies: int
    copy_policy: int
    block_size_shift: int


@dataclass(frozen=True)
class Response:
    """A response header. ``body`` is the raw opcode-specific part (bytes 20-47); read it through
    ``vdi``/``cluster_default`` and build it with ``vdi_body``/``cluster_default_body``."""

    opcode: int
    id: int
    data_length: int
    result: int
    body: bytes = b"\0" * 28
    flags: int = 0
    epoch: int = 0
    proto_ver: int = 0  # sheep leaves it 0 (observed)

    @property
    def ok(self) -> bool:
        return self.result == Result.SUCCESS

    @property
    def vdi(self) -> VdiResult:
        vdi_id, attr_id, copies, shift = _RSP_VDI.unpack(self.body)
        return VdiResult(vdi_id, attr_id, copies, shift)

    @property
    def cluster_default(self) -> ClusterDefault:
        return ClusterDefault(*_RSP_DEFAULT.unpack(self.body))


def vdi_body(result: VdiResult) -> bytes:
    return _RSP_VDI.pack(result.vdi_id, result.attr_id, result.copies, result.block_size_shift)


def obj_body(copies: int = 0, offset: int = 0) -> bytes:
    return _RSP_OBJ.pack(copies, offset)


def cluster_default_body(default: ClusterDefault) -> bytes:
    return _RSP_DEFAULT.pack(default.nr_copies, default.copy_policy, default.block_size_shift)


def encode_response(response: Response) -> bytes:
    if len(response.body) != 28:
        raise ProtocolError(f"a response body is 28 bytes, got {len(response.body)}")
    return _RSP.pack(response.proto_ver, response.opcode, response.flags, response.epoch, response.id,
                     response.data_length, response.result) + bytes(response.body)


def decode_response(data: bytes) -> Response:
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"a response header is {HEADER_SIZE} bytes, got {len(data)}")
    proto_ver, opcode, flags, epoch, rsp_id, data_length, result = _RSP.unpack_from(data)
    return Response(opcode, rsp_id, data_length, result, bytes(data[20:]), flags, epoch, proto_ver)


# -- payloads -----------------------------------------------------------------------------------------
def _fixed_string(text: str, size: int, what: str) -> bytes:
    raw = text.encode()
    if b"\0" in raw:
        raise InvalidArgument(f"sheepdog {what} {text!r} contains a NUL byte")
    if len(raw) >= size:  # the C side needs a terminating NUL
        raise InvalidArgument(f"sheepdog {what} {text[:20]!r}... is longer than {size - 1} bytes")
    return raw.ljust(size, b"\0")


def encode_name(name: str) -> bytes:
    """NEW_VDI's payload: the name NUL-padded to exactly 256 bytes (any other length: INVALID_PARMS)."""
    if not name:
        raise InvalidArgument("sheepdog VDI name is empty")
    return _fixed_string(name, NAME_LEN, "VDI name")


def encode_name_tag(name: str, tag: str = "") -> bytes:
    """GET_VDI_INFO/LOCK_VDI/DEL_VDI payload: name[256] followed by tag[256]."""
    return encode_name(name) + _fixed_string(tag, TAG_LEN, "snapshot tag")


def decode_c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def decode_name_tag(payload: bytes) -> tuple[str, str]:
    """Inverse of ``encode_name``/``encode_name_tag`` (a payload of <= 256 bytes has no tag)."""
    name = decode_c_string(payload[:NAME_LEN])
    tag = decode_c_string(payload[NAME_LEN:NAME_LEN + TAG_LEN]) if len(payload) > NAME_LEN else ""
    return name, tag


def encode_index(vids: Sequence[int]) -> bytes:
    """A run of ``data_vdi_id[]`` entries (u32 each)."""
    return struct.pack(f"<{len(vids)}I", *vids)


def decode_index(data: bytes) -> list[int]:
    if len(data) % 4:
        raise ProtocolError(f"data_vdi_id[] slice of {len(data)} bytes is not a multiple of 4")
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def vids_in_bitmap(bitmap: bytes) -> Iterator[int]:
    """The set bits of a READ_VDIS/READ_DEL_VDIS bitmap (bit v is byte v/8, bit v%8)."""
    for byte_index, byte in enumerate(bitmap):
        if byte:
            for bit in range(8):
                if byte >> bit & 1:
                    yield byte_index * 8 + bit


def encode_bitmap(vids: Iterator[int] | Sequence[int] | set[int], size: int = VDI_BITMAP_BYTES) -> bytes:
    bitmap = bytearray(size)
    for vid in vids:
        bitmap[vid // 8] |= 1 << (vid % 8)
    return bytes(bitmap)


_INODE = struct.Struct("<256s256sQQQQQBBBBIIII")  # through btree_counter (572 bytes)
_INODE_UNUSED = INODE_HEADER_SIZE - _INODE.size


@dataclass(frozen=True)
class InodeHeader:
    """The first 4664 bytes of an inode ("vdi") object: everything except data_vdi_id[] and gref[].

    ``unused`` keeps the bytes after ``btree_counter`` so that decode -> replace -> encode (resize)
    writes back exactly what it read apart from the changed field.
    """

    name: str
    tag: str
    create_time: int
    snap_ctime: int
    vm_clock_nsec: int
    vdi_size: int
    vm_state_size: int
    copy_policy: int
    store_policy: int
    nr_copies: int
    block_size_shift: int
    snap_id: int
    vdi_id: int
    parent_vdi_id: int
    btree_counter: int = 0
    unused: bytes = field(default=b"\0" * _INODE_UNUSED, repr=False)

    @property
    def is_snapshot(self) -> bool:
        return self.snap_ctime != 0

    @property
    def is_deleted(self) -> bool:
        return not self.name

    @property
    def is_clone(self) -> bool:
        """dog's rule: not a snapshot, snap_id 1 and a parent."""
        return not self.is_snapshot and self.snap_id == 1 and self.parent_vdi_id != 0

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift

    @property
    def nr_objects(self) -> int:
        return -(-self.vdi_size // self.object_size)

    def with_size(self, vdi_size: int) -> InodeHeader:
        return replace(self, vdi_size=vdi_size)


def decode_inode_header(data: bytes) -> InodeHeader:
    if len(data) < INODE_HEADER_SIZE:
        raise ProtocolError(f"an inode header is {INODE_HEADER_SIZE} bytes, got {len(data)}")
    (name, tag, create_time, snap_ctime, vm_clock, size, vm_state, policy, store_policy, copies, shift,
     snap_id, vdi_id, parent, btree) = _INODE.unpack_from(data)
    return InodeHeader(decode_c_string(name), decode_c_string(tag), create_time, snap_ctime, vm_clock, size,
                       vm_state, policy, store_policy, copies, shift, snap_id, vdi_id, parent, btree,
                       bytes(data[_INODE.size:INODE_HEADER_SIZE]))


def encode_inode_header(inode: InodeHeader) -> bytes:
    name = inode.name.encode().ljust(NAME_LEN, b"\0")[:NAME_LEN]
    tag = inode.tag.encode().ljust(TAG_LEN, b"\0")[:TAG_LEN]
    head = _INODE.pack(name, tag, inode.create_time, inode.snap_ctime, inode.vm_clock_nsec, inode.vdi_size,
                       inode.vm_state_size, inode.copy_policy, inode.store_policy, inode.nr_copies,
                       inode.block_size_shift, inode.snap_id, inode.vdi_id, inode.parent_vdi_id,
                       inode.btree_counter)
    return head + inode.unused.ljust(_INODE_UNUSED, b"\0")[:_INODE_UNUSED]


# -- GET_VDI_COPIES: struct vdi_state ---------------------------------------------------------------
_VDI_STATE = struct.Struct("<IBBBBB3xII16sH2x")  # through lock_owner (port @36)
_NODE_ID_SIZE = 40
MAX_PARTICIPANTS = 31


@dataclass(frozen=True)
class VdiState:
    """One entry of GET_VDI_COPIES: per-VDI state sheep keeps in memory, including the lock owner."""

    vid: int
    nr_copies: int
    snapshot: bool
    deleted: bool
    copy_policy: int
    block_size_shift: int
    parent_vid: int
    lock_state: int
    lock_owner: str  # "ADDRESS:PORT" of the sheep node holding a normal lock, "" when none
    nr_participants: int = 0


def _node_addr(raw: bytes, port: int) -> str:
    if port == 0 and not any(raw):
        return ""
    if raw[:12] == b"\0" * 12:
        return f"{'.'.join(str(b) for b in raw[12:16])}:{port}"
    return f"[{ipaddress.IPv6Address(raw)}]:{port}"


def encode_node_addr(address: str) -> tuple[bytes, int]:
    """``"127.0.0.1:7000"`` -> (addr[16] as sheep stores it, port)."""
    host, _, port = address.rpartition(":")
    octets = bytes(int(part) for part in host.split("."))
    return b"\0" * 12 + octets, int(port)


def decode_vdi_states(data: bytes) -> list[VdiState]:
    states = []
    for start in range(0, len(data) - VDI_STATE_SIZE + 1, VDI_STATE_SIZE):
        (vid, copies, snapshot, deleted, policy, shift, parent, lock_state, owner_addr,
         owner_port) = _VDI_STATE.unpack_from(data, start)
        nr_participants = struct.unpack_from("<I", data, start + 60)[0]
        states.append(VdiState(vid, copies, bool(snapshot), bool(deleted), policy, shift, parent, lock_state,
                               _node_addr(owner_addr, owner_port), nr_participants))
    return states


def encode_vdi_state(state: VdiState) -> bytes:
    addr, port = encode_node_addr(state.lock_owner) if state.lock_owner else (b"\0" * 16, 0)
    head = _VDI_STATE.pack(state.vid, state.nr_copies, int(state.snapshot), int(state.deleted),
                           state.copy_policy, state.block_size_shift, state.parent_vid, state.lock_state,
                           addr, port)
    entry = bytearray(VDI_STATE_SIZE)
    entry[:len(head)] = head
    struct.pack_into("<I", entry, 60, state.nr_participants)
    return bytes(entry)
