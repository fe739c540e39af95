"""Guest-visible bytes of a Sheepdog VDI over ``hvstore.protocols.sheepdog``: per-object reads and writes,
allocation on first write and copy-on-write of objects shared with snapshots, the way QEMU's removed
sheepdog driver did it.
"""

from __future__ import annotations

from collections.abc import Iterator

from hvstore.errors import InvalidArgument
from hvstore.protocols.sheepdog import SheepdogClient
from hvstore.protocols.sheepdog_codec import Flag, ObjFields, Opcode, Result, data_oid


class VdiIO:
    """Guest-visible bytes of one working VDI: reads and writes split into per-object requests.

    Writes follow QEMU's sheepdog driver: an object this VDI owns is overwritten in place; an unallocated
    one is created (CREATE_AND_WRITE, sheep makes a sparse full-size object) and then published in the
    inode's data_vdi_id[]; an object still shared with a snapshot or a clone's parent is copied on write
    (CREATE_AND_WRITE with Flag.COW from the owner's object) and published. A READONLY answer means
    someone snapshotted the VDI meanwhile (its vid moved): the VDI is looked up again and the write resent.

    The object index is cached from ``open``: this handle assumes it is the VDI's only writer, which is
    all sheep offers (nothing serialises two writers). sheep acknowledges a write once every replica has
    it (1.0 has no object cache, FLUSH_VDI is obsolete), so ``flush`` has nothing to wait for.
    """

    def __init__(self, client: SheepdogClient, name: str, *, writable: bool) -> None:
        self.client = client
        self.name = name
        self.writable = writable
        self._load()

    def _load(self) -> None:
        handle = self.client.lookup(self.name)
        self.inode = self.client.read_inode(handle.vid)
        self.vid = handle.vid
        self.index = self.client.read_index(self.vid, 0, self.inode.nr_objects)

    @property
    def size(self) -> int:
        return self.inode.vdi_size

    @property
    def object_size(self) -> int:
        return self.inode.object_size

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        conn = self.client.conn
        pieces: list[int | bytes] = []
        for idx, start, count in self._pieces(offset, length):
            owner = self.index[idx]
            if owner == 0:
                pieces.append(bytes(count))
            else:
                pieces.append(conn.submit(Opcode.READ_OBJ, ObjFields(data_oid(owner, idx), offset=start),
                                          read_length=count))
        out = bytearray()
        for piece, (_idx, _start, count) in zip(pieces, self._pieces(offset, length), strict=True):
            if isinstance(piece, bytes):
                out += piece
                continue
            rsp, data = conn.wait(piece)
            self.client.raise_for(rsp, "read", self.name)
            out += data.ljust(count, b"\0")
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        if not self.writable:
            raise InvalidArgument(f"sheepdog VDI {self.name} was opened read-only")
        self._check_range(offset, len(data))
        view = memoryview(data)
        pos = 0
        for idx, start, count in self._pieces(offset, len(data)):
            chunk = bytes(view[pos:pos + count])
            pos += count
            try:
                self._write_object(idx, start, chunk)
            except _Readonly:
                self._load()  # snapshotted meanwhile: the working VDI has a new vid
                self._write_object(idx, start, chunk)

    def allocated_extents(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of every allocated object, adjacent ones merged; the rest reads as zeros."""
        run_start: int | None = None
        for idx, owner in enumerate([*self.index, 0]):
            if owner and run_start is None:
                run_start = idx
            elif not owner and run_start is not None:
                start = run_start * self.object_size
                yield start, min(idx * self.object_size, self.size) - start
                run_start = None

    def _write_object(self, idx: int, start: int, chunk: bytes) -> None:
        owner, copies = self.index[idx], self.inode.nr_copies
        conn = self.client.conn
        if owner == self.vid:
            rsp, _ = conn.call(Opcode.WRITE_OBJ, ObjFields(data_oid(self.vid, idx), copies=copies, offset=start),
                               payload=chunk)
        else:
            cow = owner != 0
            rsp, _ = conn.call(Opcode.CREATE_AND_WRITE_OBJ,
                               ObjFields(data_oid(self.vid, idx), cow_oid=data_oid(owner, idx) if cow else 0,
                                         copies=copies, offset=start),
                               payload=chunk, flags=Flag.COW if cow else 0)
        if rsp.result == Result.READONLY:
            raise _Readonly
        self.client.raise_for(rsp, "write", self.name)
        if owner != self.vid:
            self.client.write_index(self.vid, idx, [self.vid], copies=copies)
            self.index[idx] = self.vid

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """(object index, offset inside the object, byte count) for a byte range."""
        end = offset + length
        while offset < end:
            idx, start = divmod(offset, self.object_size)
            count = min(self.object_size - start, end - offset)
            yield idx, start, count
            offset += count

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise InvalidArgument(f"sheepdog VDI {self.name}: range {offset}+{length} is outside its "
                                  f"{self.size} bytes")


class _Readonly(Exception):
    """A write hit an object of a snapshot (READONLY): reload and retry."""
