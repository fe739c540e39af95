"""A pure-Python client of Sheepdog 1.0's wire protocol: the connection and the VDI operations.

Why our own: Sheepdog was archived upstream in 2016, QEMU 6.0 and libvirt 8.8 dropped their drivers and
no Python binding exists, so hvstore speaks the protocol itself (the byte format lives in the sans-I/O
``hvstore.protocols.sheepdog_codec``; this module adds sockets and the multi-request operations dog and
QEMU performed; ``hvstore.protocols.sheepdog_io`` reads and writes a VDI's bytes). Reached over TCP
(``HOST:PORT``, default port 7000) or sheep's UNIX socket (``unix:/STORE/sock``); there is no
handshake, authentication or encryption.

What it cannot do: shrink (sheep has no such operation), rename (sheep finds VDIs by hashing the name),
hypervolume (B-tree, store_policy 1) or erasure-coded layouts beyond passing the policy through.
Concurrency: nothing in sheep serialises two writers of one VDI (the inode index update is
last-writer-wins), and its VDI lock is advisory, per sheep node and never expires — see ``lock_vdi``.
Fencing: none exists on the sheep side.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

from hvstore.errors import (
    AlreadyExists,
    BackendUnavailable,
    Busy,
    HvstoreError,
    InvalidArgument,
    NotFound,
)
from hvstore.protocols.sheepdog_codec import (
    DEFAULT_PORT,
    HEADER_SIZE,
    INDEX_BATCH,
    INODE_HEADER_SIZE,
    INODE_TAG_OFFSET,
    MAX_DATA_OBJS,
    PROTO_VER,
    SHEEP_PROTO_VER,
    TAG_LEN,
    VDI_BITMAP_BYTES,
    VDI_STATE_SIZE,
    ClusterDefault,
    Flag,
    InodeHeader,
    LockType,
    ObjFields,
    Opcode,
    ProtocolError,
    Request,
    Response,
    Result,
    VdiFields,
    VdiState,
    data_oid,
    decode_index,
    decode_inode_header,
    decode_response,
    decode_vdi_states,
    encode_index,
    encode_inode_header,
    encode_name,
    encode_name_tag,
    encode_request,
    index_offset,
    inode_oid,
    result_text,
    vids_in_bitmap,
)

_NOT_FOUND = {Result.NO_VDI, Result.NO_TAG, Result.NO_BASE_VDI, Result.NO_OBJ}
_UNAVAILABLE = {Result.STARTUP, Result.SHUTDOWN, Result.WAIT_FOR_FORMAT, Result.WAIT_FOR_JOIN,
                Result.JOIN_FAILED, Result.HALT, Result.NOT_FORMATTED}


class SheepdogError(HvstoreError):
    """sheep answered a request with a failure that is not the caller's fault (EIO, NO_SPACE, ...)."""

    def __init__(self, message: str, result: int) -> None:
        super().__init__(message)
        self.result = result


def parse_address(address: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """``unix:/path/sock`` | ``HOST:PORT`` | ``[V6]:PORT`` | ``HOST`` (port 7000) -> (family, sockaddr)."""
    if address.startswith("unix:"):
        return socket.AF_UNIX, address[len("unix:"):]
    host, port_text = address, str(DEFAULT_PORT)
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else port_text
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgument(f"invalid sheepdog address {address!r}: use HOST:PORT or unix:/path/to/sock")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(port_text))


class SheepdogConnection:
    """One socket to one sheep; requests are matched to responses by id.

    sheep answers in completion order, so ``wait`` keeps answers to other ids until they are asked for;
    several requests may be in flight (``submit`` several, then ``wait`` for each). A connection is not a
    session for sheep: closing it releases nothing (no lock, no open VDI).
    """

    def __init__(self, address: str, *, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._next_id = 1
        self._answers: dict[int, tuple[Response, bytes]] = {}

    def connect(self) -> None:
        """Open the socket. Raises BackendUnavailable (one line, with the address) when sheep is unreachable."""
        if self._sock is not None:
            return
        family, sockaddr = parse_address(self.address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise BackendUnavailable(f"sheepdog at {self.address} unreachable: {reason} "
                                     "(is sheep running? check the store's 'address')") from None
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._answers.clear()

    def __enter__(self) -> SheepdogConnection:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, opcode: Opcode, fields: ObjFields | VdiFields | bytes = b"\0" * 32, *,
               payload: bytes = b"", read_length: int = 0, flags: int = 0) -> int:
        """Send one request and return its id. A payload sets Flag.WRITE; otherwise ``read_length`` is the
        number of bytes wanted back."""
        self.connect()
        request_id = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        if payload:
            flags |= Flag.WRITE
        request = Request(opcode, request_id, len(payload) if payload else read_length, fields, flags,
                          proto_ver=SHEEP_PROTO_VER if opcode.internal else PROTO_VER)
        self._io(lambda sock: sock.sendall(encode_request(request) + payload), "send")
        return request_id

    def wait(self, request_id: int) -> tuple[Response, bytes]:
        """The answer to ``request_id`` (header, data); answers to other ids are kept for their ``wait``."""
        while request_id not in self._answers:
            header = decode_response(self._recv_exact(HEADER_SIZE))
            data = self._recv_exact(header.data_length) if header.data_length else b""
            self._answers[header.id] = (header, data)
        return self._answers.pop(request_id)

    def call(self, opcode: Opcode, fields: ObjFields | VdiFields | bytes = b"\0" * 32, *,
             payload: bytes = b"", read_length: int = 0, flags: int = 0) -> tuple[Response, bytes]:
        return self.wait(self.submit(opcode, fields, payload=payload, read_length=read_length, flags=flags))

    def _recv_exact(self, length: int) -> bytes:
        buf = bytearray(length)
        view = memoryview(buf)
        got = 0
        while got < length:
            n = self._io(lambda sock, v=view[got:]: sock.recv_into(v), "receive")
            if n == 0:
                self.close()
                raise BackendUnavailable(f"sheepdog at {self.address} closed the connection mid-answer")
            got += n
        return bytes(buf)

    def _io(self, action: object, what: str) -> int:
        assert self._sock is not None and callable(action)
        try:
            return action(self._sock) or 0
        except TimeoutError:
            self.close()
            raise BackendUnavailable(f"sheepdog at {self.address}: no answer within {self.timeout_s:g} s") from None
        except OSError as exc:
            self.close()
            raise BackendUnavailable(f"sheepdog at {self.address}: {what} failed: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class VdiHandle:
    """What a lookup returns: the VDI's current id (it changes with every snapshot) and layout."""

    name: str
    vid: int
    copies: int
    block_size_shift: int

    @property
    def object_size(self) -> int:
        return 1 << self.block_size_shift


class SheepdogClient:
    """VDI operations over one connection, each a short sequence of requests as dog and QEMU sent them.

    Errors: NotFound (no VDI/tag/object), AlreadyExists, Busy (VDI_LOCKED), InvalidArgument,
    BackendUnavailable (unreachable, not formatted, halted), SheepdogError (anything else sheep reports).
    """

    def __init__(self, connection: SheepdogConnection) -> None:
        self.conn = connection

    # -- cluster ------------------------------------------------------------------------------------
    def cluster_default(self) -> ClusterDefault:
        rsp, _ = self.conn.call(Opcode.GET_CLUSTER_DEFAULT, VdiFields())
        self.raise_for(rsp, "read the cluster defaults")
        return rsp.cluster_default

    def vdi_ids(self) -> list[int]:
        """Ids of every VDI sheep has allocated and not marked deleted (tombstones included)."""
        rsp, bitmap = self.conn.call(Opcode.READ_VDIS, VdiFields(), read_length=VDI_BITMAP_BYTES)
        self.raise_for(rsp, "list VDIs")
        in_use = set(vids_in_bitmap(bitmap))
        rsp, deleted = self.conn.call(Opcode.READ_DEL_VDIS, b"\0" * 32, read_length=VDI_BITMAP_BYTES)
        if rsp.ok:  # internal opcode: a sheep that refuses it just gives us tombstones to skip later
            in_use -= set(vids_in_bitmap(deleted))
        return sorted(in_use)

    def list_vdis(self) -> list[InodeHeader]:
        """Inode headers of every live VDI and snapshot (deleted ones, whose name is empty, skipped)."""
        pending = [self.conn.submit(Opcode.READ_OBJ, ObjFields(inode_oid(vid)), read_length=INODE_HEADER_SIZE)
                   for vid in self.vdi_ids()]
        inodes = []
        for request_id in pending:
            rsp, data = self.conn.wait(request_id)
            if rsp.result == Result.NO_OBJ:
                continue  # a slot taken by a failed create
            self.raise_for(rsp, "read an inode")
            inode = decode_inode_header(data)
            if not inode.is_deleted:
                inodes.append(inode)
        return inodes

    def vdi_states(self) -> list[VdiState]:
        """sheep's in-memory per-VDI state, including lock state and owner (GET_VDI_COPIES)."""
        count = 1024
        while True:
            rsp, data = self.conn.call(Opcode.GET_VDI_COPIES, b"\0" * 32, read_length=count * VDI_STATE_SIZE)
            if rsp.result != Result.BUFFER_SMALL or count >= 1 << 16:
                break
            count *= 4
        self.raise_for(rsp, "read VDI states")
        return decode_vdi_states(data)

    # -- VDIs ---------------------------------------------------------------------------------------
    def lookup(self, name: str, *, tag: str = "", snap_id: int = 0) -> VdiHandle:
        """The working VDI ``name``, or its snapshot by ``tag`` or ``snap_id``. Raises NotFound."""
        rsp, _ = self.conn.call(Opcode.GET_VDI_INFO, VdiFields(snapid=snap_id), payload=encode_name_tag(name, tag))
        self.raise_for(rsp, "look up", _subject(name, tag, snap_id))
        result = rsp.vdi
        return VdiHandle(name, result.vdi_id, result.copies, result.block_size_shift)

    def read_inode(self, vid: int) -> InodeHeader:
        rsp, data = self.conn.call(Opcode.READ_OBJ, ObjFields(inode_oid(vid)), read_length=INODE_HEADER_SIZE)
        self.raise_for(rsp, "read the inode of", f"VDI 0x{vid:06x}")
        return decode_inode_header(data)

    def read_index(self, vid: int, first: int, count: int) -> list[int]:
        """``data_vdi_id[first:first+count]`` of VDI ``vid``: owner vid per object, 0 = unallocated."""
        if count == 0:
            return []
        rsp, data = self.conn.call(Opcode.READ_OBJ, ObjFields(inode_oid(vid), offset=index_offset(first)),
                                   read_length=4 * count)
        self.raise_for(rsp, "read the object index of", f"VDI 0x{vid:06x}")
        return decode_index(data)

    def write_index(self, vid: int, first: int, owners: list[int], *, copies: int) -> None:
        rsp, _ = self.conn.call(Opcode.WRITE_OBJ, ObjFields(inode_oid(vid), copies=copies,
                                                           offset=index_offset(first)),
                                payload=encode_index(owners))
        self.raise_for(rsp, "update the object index of", f"VDI 0x{vid:06x}")

    def create_vdi(self, name: str, size_bytes: int, *, copies: int = 0, block_size_shift: int = 0) -> int:
        """Create an empty (thin) VDI; returns its vid. Raises AlreadyExists. 0 = the cluster default."""
        rsp, _ = self.conn.call(Opcode.NEW_VDI, VdiFields(vdi_size=size_bytes, copies=copies,
                                                          block_size_shift=block_size_shift),
                                payload=encode_name(name))
        self.raise_for(rsp, "create", name)
        return rsp.vdi.vdi_id

    def delete_vdi(self, name: str, *, tag: str = "", snap_id: int = 0) -> None:
        """Delete the working VDI ``name`` or one snapshot of it.

        The object index is zeroed first (read 128 entries, write zeros where any is set — dog's way):
        that drops the references, so sheep removes objects nobody else shares. A bare DEL_VDI on a VDI
        that still references objects answers SUCCESS but leaves it half-deleted and its objects leaked.
        """
        handle = self.lookup(name, tag=tag, snap_id=snap_id)
        inode = self.read_inode(handle.vid)
        for first in range(0, inode.nr_objects, INDEX_BATCH):
            count = min(INDEX_BATCH, inode.nr_objects - first)
            if any(self.read_index(handle.vid, first, count)):
                self.write_index(handle.vid, first, [0] * count, copies=inode.nr_copies)
        rsp, _ = self.conn.call(Opcode.DEL_VDI, VdiFields(snapid=snap_id), payload=encode_name_tag(name, tag))
        self.raise_for(rsp, "delete", _subject(name, tag, snap_id))

    def resize_vdi(self, name: str, size_bytes: int) -> InodeHeader:
        """Grow the working VDI (rewrite vdi_size in its inode header). Shrinking raises InvalidArgument."""
        handle = self.lookup(name)
        inode = self.read_inode(handle.vid)
        if size_bytes < inode.vdi_size:
            raise InvalidArgument(f"sheepdog cannot shrink VDI {name} ({inode.vdi_size} -> {size_bytes} bytes)")
        limit = MAX_DATA_OBJS << inode.block_size_shift
        if size_bytes > limit:
            raise InvalidArgument(f"sheepdog VDI {name}: {size_bytes} bytes exceeds the {limit}-byte maximum "
                                  f"of {inode.object_size}-byte objects")
        grown = inode.with_size(size_bytes)
        rsp, _ = self.conn.call(Opcode.WRITE_OBJ, ObjFields(inode_oid(handle.vid), copies=inode.nr_copies),
                                payload=encode_inode_header(grown))
        self.raise_for(rsp, "resize", name)
        return grown

    def snapshot_vdi(self, name: str, tag: str) -> int:
        """Snapshot the working VDI under ``tag``; returns the *new working* vid (the snapshot keeps the old
        one). sheep does not refuse a tag in use (lookups would then find either): check ``tag_exists``
        first, as dog does."""
        handle = self.lookup(name)
        inode = self.read_inode(handle.vid)
        self._write_tag(handle.vid, tag, inode.nr_copies)
        try:
            rsp, _ = self.conn.call(Opcode.NEW_VDI, _like(inode, base_vdi_id=handle.vid, snapid=1),
                                    payload=encode_name(name))
            self.raise_for(rsp, "snapshot", name)
        except HvstoreError:
            self._write_tag(handle.vid, "", inode.nr_copies)  # the working VDI must not keep the tag
            raise
        return rsp.vdi.vdi_id

    def rollback_vdi(self, name: str, tag: str) -> InodeHeader:
        """Make snapshot ``tag`` the working state again. sheep turns the current working VDI into an
        untagged snapshot; its inode (as it was) is returned so the caller can delete it."""
        previous = self.read_inode(self.lookup(name).vid)
        snap = self.lookup(name, tag=tag)
        inode = self.read_inode(snap.vid)
        rsp, _ = self.conn.call(Opcode.NEW_VDI, _like(inode, base_vdi_id=snap.vid, snapid=1),
                                payload=encode_name(name))
        self.raise_for(rsp, "roll back", f"{name}@{tag}")
        return previous

    def clone_vdi(self, name: str, tag: str, new_name: str) -> int:
        """A new VDI sharing every object of snapshot ``name@tag`` (copy-on-write); returns its vid.

        sheep itself would also clone a writable VDI, sharing objects that VDI can still overwrite; like
        dog and QEMU, only snapshots are accepted here.
        """
        snap = self.lookup(name, tag=tag)
        inode = self.read_inode(snap.vid)
        if not inode.is_snapshot:
            raise InvalidArgument(f"sheepdog VDI {name}@{tag} is not a snapshot; only snapshots can be cloned")
        rsp, _ = self.conn.call(Opcode.NEW_VDI, _like(inode, base_vdi_id=snap.vid, snapid=0),
                                payload=encode_name(new_name))
        self.raise_for(rsp, "clone", f"{name}@{tag} to {new_name}")
        return rsp.vdi.vdi_id

    def allocate_holes(self, name: str, *, batch: int = 256) -> int:
        """Give every unallocated object of the working VDI an (empty, sparse) object of its own; returns
        how many. Objects shared with snapshots stay shared. For readers that mishandle holes (tgt's
        sheepdog store, see ``hvstore.backends.sheepdog``): afterwards every object index entry is set."""
        handle = self.lookup(name)
        inode = self.read_inode(handle.vid)
        holes = [idx for idx, owner in enumerate(self.read_index(handle.vid, 0, inode.nr_objects)) if not owner]
        for start in range(0, len(holes), batch):
            chunk = holes[start:start + batch]
            pending = [self.conn.submit(Opcode.CREATE_AND_WRITE_OBJ,
                                        ObjFields(data_oid(handle.vid, idx), copies=inode.nr_copies),
                                        payload=b"\0") for idx in chunk]
            for request_id in pending:
                rsp, _ = self.conn.wait(request_id)
                self.raise_for(rsp, "allocate an object of", name)
            for first, count in _runs(chunk):  # publish them, one index write per contiguous run
                self.write_index(handle.vid, first, [handle.vid] * count, copies=inode.nr_copies)
        return len(holes)

    def lock_vdi(self, name: str, *, shared: bool = False) -> int:
        """Take sheep's VDI lock; returns the vid. Raises Busy (VDI_LOCKED).

        Only clusters formatted with ``dog cluster format --lock`` enforce it; elsewhere this is a lookup
        that always succeeds. The owner is the sheep *node* that received the request, not this client;
        the lock survives the client's and even that node's death and never expires (``release_vdi`` or
        ``dog vdi lock unlock`` ends it). Reads and writes ignore it: it only makes the next lock fail.
        """
        lock_type = LockType.SHARED if shared else LockType.NORMAL
        rsp, _ = self.conn.call(Opcode.LOCK_VDI, VdiFields(lock_type=lock_type), payload=encode_name_tag(name))
        self.raise_for(rsp, "lock", name)
        return rsp.vdi.vdi_id

    def release_vdi(self, name: str, vid: int, *, shared: bool = False) -> None:
        """Release a lock (sheep does not check who asks; releasing an unlocked VDI succeeds)."""
        lock_type = LockType.SHARED if shared else LockType.NORMAL
        rsp, _ = self.conn.call(Opcode.RELEASE_VDI, VdiFields(base_vdi_id=vid, lock_type=lock_type),
                                payload=name.encode() + b"\0")  # sheep ignores it; QEMU sent the name
        self.raise_for(rsp, "release the lock of", name)

    # -- helpers ------------------------------------------------------------------------------------
    def tag_exists(self, name: str, tag: str) -> bool:
        try:
            self.lookup(name, tag=tag)
        except NotFound:
            return False
        return True

    def _write_tag(self, vid: int, tag: str, copies: int) -> None:
        payload = tag.encode().ljust(TAG_LEN, b"\0")
        if len(payload) > TAG_LEN:
            raise InvalidArgument(f"sheepdog snapshot tag {tag[:20]!r}... is longer than {TAG_LEN - 1} bytes")
        rsp, _ = self.conn.call(Opcode.WRITE_OBJ, ObjFields(inode_oid(vid), copies=copies,
                                                           offset=INODE_TAG_OFFSET), payload=payload)
        self.raise_for(rsp, "write the snapshot tag of", f"VDI 0x{vid:06x}")

    def raise_for(self, rsp: Response, operation: str, subject: str = "") -> None:
        """Raise the hvstore error for a failed answer; one place maps every result code."""
        if rsp.ok:
            return
        what = f"sheepdog at {self.conn.address}: cannot {operation}{' ' + subject if subject else ''}: " \
               f"{result_text(rsp.result)}"
        if rsp.result in _NOT_FOUND:
            raise NotFound(what)
        if rsp.result == Result.VDI_EXIST:
            raise AlreadyExists(what)
        if rsp.result in (Result.VDI_LOCKED, Result.COLLECTING_CINFO):
            raise Busy(what)
        if rsp.result == Result.INVALID_PARMS:
            raise InvalidArgument(what)
        if rsp.result in _UNAVAILABLE:
            raise BackendUnavailable(what)
        raise SheepdogError(what, rsp.result)


def _runs(indices: list[int]) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of consecutive integers in a sorted list."""
    first = previous = None
    for idx in indices:
        if first is None or previous is None or idx != previous + 1:
            if first is not None and previous is not None:
                yield first, previous - first + 1
            first = idx
        previous = idx
    if first is not None and previous is not None:
        yield first, previous - first + 1


def _subject(name: str, tag: str, snap_id: int) -> str:
    if tag:
        return f"{name}@{tag}"
    return f"{name} (snapshot id {snap_id})" if snap_id else name


def _like(inode: InodeHeader, *, base_vdi_id: int, snapid: int) -> VdiFields:
    """NEW_VDI fields that keep ``inode``'s size and layout (snapshot, rollback, clone)."""
    return VdiFields(vdi_size=inode.vdi_size, base_vdi_id=base_vdi_id, copies=inode.nr_copies,
                     copy_policy=inode.copy_policy, store_policy=inode.store_policy,
                     block_size_shift=inode.block_size_shift, snapid=snapid)


__all__ = ["ProtocolError", "SheepdogClient", "SheepdogConnection", "SheepdogError", "VdiHandle", "parse_address"]
