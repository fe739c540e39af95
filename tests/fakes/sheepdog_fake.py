"""A FAKE Sheepdog cluster: speaks enough of sheep 1.0.1's client protocol for CI. Not Sheepdog.

Why a fake: the real server cannot be installed here (not in Debian 12, PyPI or npm; upstream archived in
2016), and it is the only fake the project allows. It is checked against the headers a real sheep 1.0.1
sent (``tests/unit/protocols/test_sheepdog_transcript.py`` replays the recorded session), and it follows the
behaviour described in the shared ``sheepdog-protocol.md``: vids allocated from the FNV-1a slot of the
name, snapshots keep the old vid and the working VDI moves, copy-on-write objects, READONLY writes to
snapshot objects, DEL_VDI of a VDI that still references objects leaves it half-deleted, advisory
per-node VDI locks enforced only when "formatted with --lock", and the in-use/deleted bitmaps.

What it does NOT model: replication, recovery and node membership (the epoch only moves when a test
calls ``bump_epoch``), erasure coding, hypervolumes, VDI attributes, vmstate objects, the TGT flag's
shared-lock invalidation, internal opcodes other than READ_DEL_VDIS and GET_VDI_COPIES (they answer
INVALID_PARMS), and persistence: everything lives in memory and a restart forgets every VDI.

In-process: ``with FakeSheepdogServer(FakeSheepdogCluster()) as server: server.address``.
As a process (the lab's ``sheepdog-fake`` service): ``python -m tests.fakes.sheepdog_fake --port 7000``.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from hvstore.protocols.sheepdog_codec import (
    DEFAULT_BLOCK_SIZE_SHIFT,
    HEADER_SIZE,
    INODE_GREF_OFFSET,
    INODE_HEADER_SIZE,
    INODE_SIZE,
    MAX_BLOCK_SIZE_SHIFT,
    MAX_DATA_OBJS,
    MIN_BLOCK_SIZE_SHIFT,
    NAME_LEN,
    NR_VDIS,
    PROTO_VER,
    SHEEP_PROTO_VER,
    TAG_LEN,
    VDI_BITMAP_BYTES,
    VDI_STATE_SIZE,
    ClusterDefault,
    Flag,
    InodeHeader,
    LockState,
    LockType,
    ObjFields,
    Opcode,
    Request,
    Response,
    Result,
    VdiFields,
    VdiResult,
    VdiState,
    cluster_default_body,
    data_oid,
    decode_inode_header,
    decode_name_tag,
    decode_request,
    encode_bitmap,
    encode_inode_header,
    encode_response,
    encode_vdi_state,
    is_data_oid,
    is_inode_oid,
    obj_body,
    oid_to_index,
    oid_to_vid,
    vdi_body,
    vid_hash,
)


class _Refuse(Exception):
    """Answer the current request with this result code (and optionally a VDI body)."""

    def __init__(self, result: Result, body: bytes = b"\0" * 28) -> None:
        super().__init__(result.name)
        self.result = result
        self.body = body


@dataclass
class FakeVdi:
    """One inode: the raw 4664-byte header plus a sparse data_vdi_id[] (index -> owner vid)."""

    header: bytearray
    index: dict[int, int] = field(default_factory=dict)
    half_deleted: bool = False  # DEL_VDI arrived while it still referenced objects

    @property
    def inode(self) -> InodeHeader:
        return decode_inode_header(bytes(self.header))

    @property
    def object_size(self) -> int:
        return 1 << self.inode.block_size_shift


class FakeSheepdogCluster:
    """The cluster state every FAKE node serves; one lock around every request (sheep is not that simple).

    ``lock_enforced`` is ``dog cluster format --lock``: without it LOCK_VDI is a lookup that always
    succeeds. Nodes are identified by the address string their server passes to ``handle``.
    """

    def __init__(self, *, copies: int = 3, copy_policy: int = 0,
                 block_size_shift: int = DEFAULT_BLOCK_SIZE_SHIFT, lock_enforced: bool = False) -> None:
        self.default = ClusterDefault(copies, copy_policy, block_size_shift)
        self.lock_enforced = lock_enforced
        self.epoch = 1
        self.vdis: dict[int, FakeVdi] = {}
        self.deleted: set[int] = set()
        self.objects: dict[int, bytearray] = {}
        self.normal_locks: dict[int, str] = {}
        self.shared_locks: dict[int, set[str]] = {}
        self.mutex = threading.Lock()

    # -- what happens outside the client protocol in a real cluster (for tests) ----------------------
    def bump_epoch(self) -> int:
        """A node joined or left (the fake has no membership; only the epoch moves)."""
        with self.mutex:
            self.epoch += 1
            return self.epoch

    def force_unlock(self, name: str) -> None:
        """``dog vdi lock unlock NAME``."""
        with self.mutex:
            vid = self._lookup(name, "", 0)
            self.normal_locks.pop(vid, None)
            self.shared_locks.pop(vid, None)

    def lock_from(self, node: str, name: str, *, shared: bool) -> Result:
        """A lock taken through another sheep node (e.g. tgtd's shared lock when it exports a LU)."""
        request = Request(Opcode.LOCK_VDI, 0, 2 * NAME_LEN, VdiFields(lock_type=int(shared)), Flag.WRITE)
        payload = name.encode().ljust(NAME_LEN, b"\0") + bytes(TAG_LEN)
        response, _ = self.handle(request, payload, node)
        return Result(response.result)

    def seed_vdi(self, name: str, size_bytes: int, *, allocated: dict[int, bytes] | None = None) -> int:
        """Create a VDI directly (as dog would have, before a recorded session started); ``allocated``
        maps object index -> contents written into it."""
        with self.mutex:
            vid = self._new_inode(name, size_bytes, self.default.nr_copies, self.default.block_size_shift,
                                  snap_id=1, parent=0, index={})
            vdi = self.vdis[vid]
            for idx, data in (allocated or {}).items():
                self.objects[data_oid(vid, idx)] = bytearray(data)
                vdi.index[idx] = vid
            return vid

    # -- the protocol -------------------------------------------------------------------------------
    def handle(self, request: Request, payload: bytes, node: str) -> tuple[Response, bytes]:
        """Answer one request as sheep would; ``node`` is the address of the sheep that received it."""
        with self.mutex:
            body, data, result = b"\0" * 28, b"", Result.SUCCESS
            try:
                self._check_version(request)
                handler = self._HANDLERS.get(request.opcode)
                if handler is None:
                    raise _Refuse(Result.INVALID_PARMS)
                body, data = handler(self, request, payload, node)
            except _Refuse as refusal:
                result, body = refusal.result, refusal.body
            return Response(request.opcode, request.id, len(data), result, body, epoch=self.epoch), data

    @staticmethod
    def _check_version(request: Request) -> None:
        if request.opcode >= 0x80:
            if request.proto_ver != SHEEP_PROTO_VER:
                raise _Refuse(Result.VER_MISMATCH)
        elif request.proto_ver > PROTO_VER:
            raise _Refuse(Result.VER_MISMATCH)

    # object requests
    def _read_obj(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        fields = _obj(request)
        if is_inode_oid(fields.oid):
            vdi = self._vdi(oid_to_vid(fields.oid))
            return obj_body(), self._read_inode(vdi, fields.offset, request.data_length)
        obj = self._object(fields.oid)
        end = fields.offset + request.data_length
        if end > self._object_size(fields.oid):
            raise _Refuse(Result.INVALID_PARMS)
        return obj_body(), bytes(obj[fields.offset:end]).ljust(request.data_length, b"\0")

    def _write_obj(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        fields = _obj(request)
        if is_inode_oid(fields.oid):
            self._write_inode(self._vdi(oid_to_vid(fields.oid)), fields.offset, payload)
            return obj_body(), b""
        self._refuse_if_snapshot(fields.oid)
        obj = self._object(fields.oid)
        self._put(obj, self._object_size(fields.oid), fields.offset, payload)
        return obj_body(), b""

    def _create_and_write_obj(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        fields = _obj(request)
        if not is_data_oid(fields.oid):
            raise _Refuse(Result.INVALID_PARMS)  # the fake creates data objects only
        self._refuse_if_snapshot(fields.oid)
        owner = self.vdis.get(oid_to_vid(fields.oid))
        if owner is None:
            raise _Refuse(Result.NO_VDI)
        obj = bytearray(self._object(fields.cow_oid)) if request.flags & Flag.COW else bytearray()
        self._put(obj, owner.object_size, fields.offset, payload)
        self.objects[fields.oid] = obj
        return obj_body(), b""

    def _remove_obj(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        self._object(_obj(request).oid)
        del self.objects[_obj(request).oid]
        return obj_body(), b""

    def _discard_obj(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        oid = _obj(request).oid
        vdi = self._vdi(oid_to_vid(oid))
        self._set_index(vdi, oid_to_index(oid), 0)
        self.objects.pop(oid, None)
        return obj_body(), b""

    # VDI requests
    def _new_vdi(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        fields = _vdi(request)
        if len(payload) != NAME_LEN:
            raise _Refuse(Result.INVALID_PARMS)
        name, _ = decode_name_tag(payload)
        copies = fields.copies or self.default.nr_copies
        shift = fields.block_size_shift or self.default.block_size_shift
        if not name or not MIN_BLOCK_SIZE_SHIFT <= shift <= MAX_BLOCK_SIZE_SHIFT \
                or fields.vdi_size > MAX_DATA_OBJS << shift:
            raise _Refuse(Result.INVALID_PARMS)
        working = self._find(name, "", 0)
        base = self.vdis.get(fields.base_vdi_id) if fields.base_vdi_id else None
        if fields.base_vdi_id and (base is None or fields.base_vdi_id in self.deleted):
            raise _Refuse(Result.NO_BASE_VDI)
        if fields.snapid == 0:  # create, or clone from base
            if working is not None:
                raise _Refuse(Result.VDI_EXIST)
            snap_id = 1
        else:  # snapshot (base = working) or rollback (base = a snapshot): working becomes a snapshot
            if working is None:
                raise _Refuse(Result.NO_VDI)
            if base is None:
                raise _Refuse(Result.NO_BASE_VDI)
            struct.pack_into("<Q", self.vdis[working].header, 520, _now())  # snap_ctime
            snap_id = max(v.inode.snap_id for v in self.vdis.values() if v.inode.name == name) + 1
        vid = self._new_inode(name, fields.vdi_size, copies, shift, snap_id=snap_id,
                              parent=fields.base_vdi_id, index=dict(base.index) if base else {})
        return vdi_body(VdiResult(vid, 0, copies, shift)), b""

    def _lookup_request(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        vid = self._lookup_payload(request, payload)
        return self._vdi_answer(vid), b""

    def _lock_vdi(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        vid = self._lookup_payload(request, payload)
        answer = self._vdi_answer(vid)
        if self.lock_enforced:
            shared_holders = self.shared_locks.setdefault(vid, set())
            if _vdi(request).lock_type == LockType.SHARED:
                if vid in self.normal_locks:
                    raise _Refuse(Result.VDI_LOCKED, answer)
                shared_holders.add(node)
            else:
                if vid in self.normal_locks or shared_holders:
                    raise _Refuse(Result.VDI_LOCKED, answer)
                self.normal_locks[vid] = node
        return answer, b""

    def _release_vdi(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        fields = _vdi(request)
        if fields.lock_type == LockType.SHARED:
            self.shared_locks.get(fields.base_vdi_id, set()).discard(node)
        else:  # sheep does not check who releases a normal lock
            self.normal_locks.pop(fields.base_vdi_id, None)
        return b"\0" * 28, b""

    def _read_vdis(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        if request.data_length != VDI_BITMAP_BYTES:
            raise _Refuse(Result.INVALID_PARMS)
        wanted = self.deleted if request.opcode == Opcode.READ_DEL_VDIS else self.vdis.keys()
        return b"\0" * 28, encode_bitmap(wanted)

    def _flush_vdi(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        raise _Refuse(Result.INVALID_PARMS)  # obsolete in sheep 1.0 (observed)

    def _del_vdi(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        vid = self._lookup_payload(request, payload)
        vdi = self.vdis[vid]
        self.deleted.add(vid)
        if any(vdi.index.values()):
            vdi.half_deleted = True  # sheep logs "still has objects" and leaves it half-deleted
        else:
            vdi.header[:NAME_LEN + TAG_LEN] = bytes(NAME_LEN + TAG_LEN)  # tombstone: name zeroed, size 0
            struct.pack_into("<Q", vdi.header, 536, 0)
            self.normal_locks.pop(vid, None)
            self.shared_locks.pop(vid, None)
        return vdi_body(VdiResult(vid)), b""

    def _cluster_default(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        return cluster_default_body(self.default), b""

    def _vdi_copies(self, request: Request, payload: bytes, node: str) -> tuple[bytes, bytes]:
        if request.data_length < VDI_STATE_SIZE * len(self.vdis):
            raise _Refuse(Result.BUFFER_SMALL)
        states = []
        for vid, vdi in sorted(self.vdis.items()):
            inode = vdi.inode
            shared = self.shared_locks.get(vid, set())
            lock_state = LockState.LOCKED if vid in self.normal_locks else \
                LockState.SHARED if shared else LockState.UNLOCKED
            states.append(encode_vdi_state(VdiState(
                vid, inode.nr_copies, inode.is_snapshot, vid in self.deleted, inode.copy_policy,
                inode.block_size_shift, inode.parent_vdi_id, lock_state, self.normal_locks.get(vid, ""),
                len(shared))))
        return b"\0" * 28, b"".join(states)

    _HANDLERS = {
        Opcode.CREATE_AND_WRITE_OBJ: _create_and_write_obj,
        Opcode.READ_OBJ: _read_obj,
        Opcode.WRITE_OBJ: _write_obj,
        Opcode.REMOVE_OBJ: _remove_obj,
        Opcode.DISCARD_OBJ: _discard_obj,
        Opcode.NEW_VDI: _new_vdi,
        Opcode.LOCK_VDI: _lock_vdi,
        Opcode.RELEASE_VDI: _release_vdi,
        Opcode.GET_VDI_INFO: _lookup_request,
        Opcode.READ_VDIS: _read_vdis,
        Opcode.FLUSH_VDI: _flush_vdi,
        Opcode.DEL_VDI: _del_vdi,
        Opcode.GET_CLUSTER_DEFAULT: _cluster_default,
        Opcode.GET_VDI_COPIES: _vdi_copies,
        Opcode.READ_DEL_VDIS: _read_vdis,
    }

    # -- state helpers ------------------------------------------------------------------------------
    def _new_inode(self, name: str, size_bytes: int, copies: int, shift: int, *, snap_id: int, parent: int,
                   index: dict[int, int]) -> int:
        vid = self._free_vid(name)
        inode = InodeHeader(name=name, tag="", create_time=_now(), snap_ctime=0, vm_clock_nsec=0,
                            vdi_size=size_bytes, vm_state_size=0, copy_policy=self.default.copy_policy,
                            store_policy=0, nr_copies=copies, block_size_shift=shift, snap_id=snap_id,
                            vdi_id=vid, parent_vdi_id=parent)
        self.vdis[vid] = FakeVdi(bytearray(encode_inode_header(inode)), index)
        return vid

    def _free_vid(self, name: str) -> int:
        """Next free slot at or after the name's FNV-1a slot (0 skipped, wraps), as sheep allocates."""
        vid = vid_hash(name) or 1
        for _ in range(NR_VDIS):
            if vid not in self.vdis:
                return vid
            vid = (vid + 1) % NR_VDIS or 1
        raise _Refuse(Result.FULL_VDI)

    def _find(self, name: str, tag: str, snap_id: int) -> int | None:
        candidates = [(vid, vdi.inode) for vid, vdi in self.vdis.items() if vdi.inode.name == name]
        for vid, inode in candidates:
            if tag and inode.tag == tag:
                return vid
            if not tag and snap_id and inode.snap_id == snap_id:
                return vid
            if not tag and not snap_id and not inode.is_snapshot:
                return vid
        return None

    def _lookup(self, name: str, tag: str, snap_id: int) -> int:
        vid = self._find(name, tag, snap_id)
        if vid is not None:
            return vid
        if tag and any(v.inode.name == name for v in self.vdis.values()):
            raise _Refuse(Result.NO_TAG)
        raise _Refuse(Result.NO_VDI)

    def _lookup_payload(self, request: Request, payload: bytes) -> int:
        if not payload or len(payload) > NAME_LEN + TAG_LEN:
            raise _Refuse(Result.INVALID_PARMS)
        name, tag = decode_name_tag(payload)
        return self._lookup(name, tag, _vdi(request).snapid)

    def _vdi_answer(self, vid: int) -> bytes:
        inode = self.vdis[vid].inode
        return vdi_body(VdiResult(vid, 0, inode.nr_copies, inode.block_size_shift))

    def _vdi(self, vid: int) -> FakeVdi:
        vdi = self.vdis.get(vid)
        if vdi is None:
            raise _Refuse(Result.NO_OBJ)
        return vdi

    def _object(self, oid: int) -> bytearray:
        obj = self.objects.get(oid)
        if obj is None:
            raise _Refuse(Result.NO_OBJ)
        return obj

    def _refuse_if_snapshot(self, oid: int) -> None:
        owner = self.vdis.get(oid_to_vid(oid))
        if owner is not None and owner.inode.is_snapshot:
            raise _Refuse(Result.READONLY)

    def _object_size(self, oid: int) -> int:
        vdi = self.vdis.get(oid_to_vid(oid))
        return vdi.object_size if vdi is not None else 0

    @staticmethod
    def _put(obj: bytearray, object_size: int, offset: int, payload: bytes) -> None:
        """Write into an object kept only up to its last written byte (the rest reads as zeros, like the
        sparse files sheep keeps objects in)."""
        if offset + len(payload) > object_size:
            raise _Refuse(Result.INVALID_PARMS)
        if len(obj) < offset:
            obj.extend(bytes(offset - len(obj)))
        obj[offset:offset + len(payload)] = payload

    def _read_inode(self, vdi: FakeVdi, offset: int, length: int) -> bytes:
        if offset + length > INODE_SIZE:
            raise _Refuse(Result.INVALID_PARMS)
        end = offset + length
        out = bytearray(vdi.header[offset:min(end, INODE_HEADER_SIZE)])
        first = max(offset, INODE_HEADER_SIZE)
        last = min(end, INODE_GREF_OFFSET)
        if first < last:  # data_vdi_id[] slice, whole entries around the range then trimmed
            lo, hi = (first - INODE_HEADER_SIZE) // 4, (last - INODE_HEADER_SIZE + 3) // 4
            raw = struct.pack(f"<{hi - lo}I", *(vdi.index.get(i, 0) for i in range(lo, hi)))
            skip = first - (INODE_HEADER_SIZE + 4 * lo)
            out += raw[skip:skip + last - first]
        out += bytes(length - len(out))  # gref[]: the fake keeps no reference counts
        return bytes(out)

    def _write_inode(self, vdi: FakeVdi, offset: int, payload: bytes) -> None:
        end = offset + len(payload)
        if end > INODE_SIZE:
            raise _Refuse(Result.INVALID_PARMS)
        if offset < INODE_HEADER_SIZE:
            head_end = min(end, INODE_HEADER_SIZE)
            vdi.header[offset:head_end] = payload[:head_end - offset]
        first, last = max(offset, INODE_HEADER_SIZE), min(end, INODE_GREF_OFFSET)
        if first < last:
            lo, hi = (first - INODE_HEADER_SIZE) // 4, (last - INODE_HEADER_SIZE + 3) // 4
            current = bytearray(self._read_inode(vdi, INODE_HEADER_SIZE + 4 * lo, 4 * (hi - lo)))
            start = first - (INODE_HEADER_SIZE + 4 * lo)
            current[start:start + last - first] = payload[first - offset:last - offset]
            for i, owner in enumerate(struct.unpack(f"<{hi - lo}I", current)):
                self._set_index(vdi, lo + i, owner)
        # writes into gref[] are ignored: sheep maintains it, clients must never write it

    def _set_index(self, vdi: FakeVdi, idx: int, owner: int) -> None:
        old = vdi.index.get(idx, 0)
        if owner:
            vdi.index[idx] = owner
        else:
            vdi.index.pop(idx, None)
        if old and old != owner and not any(v.index.get(idx) == old for v in self.vdis.values()):
            self.objects.pop(data_oid(old, idx), None)  # sheep reclaims objects nobody references


def _obj(request: Request) -> ObjFields:
    assert isinstance(request.fields, ObjFields)
    return request.fields


def _vdi(request: Request) -> VdiFields:
    if isinstance(request.fields, VdiFields):
        return request.fields
    return VdiFields()


def _now() -> int:
    now = time.time_ns()
    return (now // 1_000_000_000) << 32 | now % 1_000_000_000


class _Handler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            header = _recv_exact(sock, HEADER_SIZE)
            if header is None:
                return
            request = decode_request(header)
            payload = b""
            if request.flags & Flag.WRITE and request.data_length:
                payload = _recv_exact(sock, request.data_length) or b""
            response, data = self.server.cluster.handle(request, payload, self.server.node)
            sock.sendall(encode_response(response) + data)


def _recv_exact(sock: socket.socket, length: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < length:
        try:
            chunk = sock.recv(length - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 128  # tgtd opens one connection per worker thread (16) at once
    daemon_threads = True
    cluster: FakeSheepdogCluster
    node: str


class FakeSheepdogServer:
    """One FAKE sheep node on TCP serving ``cluster`` (several servers may share one cluster)."""

    def __init__(self, cluster: FakeSheepdogCluster | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.cluster = cluster or FakeSheepdogCluster()
        self._server = _TcpServer((host, port), _Handler, bind_and_activate=True)
        self._server.cluster = self.cluster
        self._server.node = self.address
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> FakeSheepdogServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-sheep", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeSheepdogServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.sheepdog_fake",
                                     description="A FAKE Sheepdog node for tests (in memory; not Sheepdog).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--copies", type=int, default=3, help="cluster default number of copies")
    parser.add_argument("--block-size-shift", type=int, default=DEFAULT_BLOCK_SIZE_SHIFT)
    parser.add_argument("--lock", action="store_true", help="enforce VDI locks (dog cluster format --lock)")
    args = parser.parse_args(argv)
    cluster = FakeSheepdogCluster(copies=args.copies, block_size_shift=args.block_size_shift,
                                  lock_enforced=args.lock)
    server = FakeSheepdogServer(cluster, host=args.host, port=args.port)
    print(f"FAKE sheepdog node listening on {server.address} (in memory, not Sheepdog)", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
