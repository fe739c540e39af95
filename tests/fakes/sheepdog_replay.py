"""The recorded sheep 1.0.1 session (tests/data/sheepdog/1.0.1-transcript.jsonl) and how to replay it
against the FAKE Sheepdog cluster.

Each line holds one request header and the header of sheep's answer (hex), plus length, sha256 and the
first 64 bytes of each payload. The session was recorded from a scratch client; anything other tools did
meanwhile (dog creating 'vol', killing a sheep, ``dog vdi lock unlock``, tgtd's lock) is not in it. Those
out-of-band events are listed here, each with the evidence for it, and applied to the fake before the
entry that first depends on them.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hvstore.protocols.sheepdog_codec import (
    HEADER_SIZE,
    INODE_HEADER_SIZE,
    INODE_TAG_OFFSET,
    NAME_LEN,
    Flag,
    ObjFields,
    Opcode,
    Request,
    Result,
    VdiFields,
    data_oid,
    decode_c_string,
    decode_request,
    decode_response,
    encode_index,
    encode_inode_header,
    index_offset,
    inode_oid,
    is_inode_oid,
    oid_to_vid,
)
from tests.fakes.sheepdog_fake import FakeSheepdogCluster, FakeSheepdogServer

TRANSCRIPT = Path(__file__).resolve().parents[1] / "data" / "sheepdog" / "1.0.1-transcript.jsonl"
MiB = 1 << 20


@dataclass(frozen=True)
class Entry:
    number: int
    request: bytes
    request_len: int
    request_sha256: str
    request_head: bytes
    response: bytes
    response_len: int
    response_sha256: str
    response_head: bytes


def load() -> list[Entry]:
    entries = []
    for number, line in enumerate(TRANSCRIPT.read_text().splitlines()):
        raw = json.loads(line)
        entries.append(Entry(number, bytes.fromhex(raw["req"]), raw["req_data"]["len"], raw["req_data"]["sha256"],
                             bytes.fromhex(raw["req_data"]["head"]), bytes.fromhex(raw["rsp"]),
                             raw["rsp_data"]["len"], raw["rsp_data"]["sha256"],
                             bytes.fromhex(raw["rsp_data"]["head"])))
    return entries


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- out-of-band events ------------------------------------------------------------------------------
def _one_node_cluster(replay: Replay) -> None:
    # Entries 0-2 come from the 1-node run: NEW_VDI 'la' with copies=0 is answered with copies 1 (the
    # cluster default), and two LOCK_VDI of 'la' both succeed (formatted without --lock).
    replay.use(FakeSheepdogCluster(copies=1, lock_enforced=False))


def _three_node_cluster(replay: Replay) -> None:
    # From entry 3 on: the 3-node run (answers say copies 3), formatted with --lock (entry 58 gets
    # VDI_LOCKED). 'vol' (vid 0xcb565a) existed before the client's first request and objects 0 and 1 were
    # written (entries 5-9 read data_vdi_id[0..1] = 0xcb565a and 4 MiB from each). Its size is not
    # recorded: object 50 is looked up (entry 23) and entry 26 grows it to 512 MiB, so 256 MiB it is.
    cluster = FakeSheepdogCluster(copies=3, lock_enforced=True)
    cluster.seed_vdi("vol", 256 * MiB, allocated={0: b"\x01" * 4096, 1: b"\x02" * 4096})
    replay.use(cluster)


def _owner_node_killed(replay: Replay) -> None:
    # Entry 65 answers with epoch 2 and still VDI_LOCKED: the lock owner sheep was killed (kill -9);
    # the lock outlives it.
    replay.cluster.bump_epoch()


def _node_rejoined_and_unlocked(replay: Replay) -> None:
    # Entry 66 answers with epoch 3 and SUCCESS: the node rejoined, and the stale lock was released out
    # of band (``dog vdi lock unlock vol``; dog's own traffic was not recorded).
    replay.cluster.bump_epoch()
    replay.cluster.force_unlock("vol")


def _tgtd_exports_clone(replay: Replay) -> None:
    # Entry 78: LOCK_VDI 'cl' is refused although nobody in the transcript locked it: tgtd exported it
    # (tgtd takes a shared lock when a --bstype sheepdog LU is created) through another sheep node.
    # Something also wrote through that export: entry 81 finds data_vdi_id[4] = 0x4a297a ('cl' itself)
    # where entries 51-56 saw only objects 0, 1 (and 25) shared with the snapshot.
    node = "127.0.0.1:7001"
    cluster = replay.cluster
    assert cluster.lock_from(node, "cl", shared=True) == Result.SUCCESS
    vid = next(v for v, vdi in cluster.vdis.items() if vdi.inode.name == "cl")
    for opcode, fields, payload in (
        (Opcode.CREATE_AND_WRITE_OBJ, ObjFields(data_oid(vid, 4), copies=3), b"written through tgtd"),
        (Opcode.WRITE_OBJ, ObjFields(inode_oid(vid), copies=3, offset=index_offset(4)), encode_index([vid])),
    ):
        request = Request(opcode, 1, len(payload), fields, Flag.WRITE | Flag.TGT)
        response, _ = cluster.handle(request, payload, node)
        assert response.result == Result.SUCCESS


EVENTS: dict[int, Callable[[Replay], None]] = {
    0: _one_node_cluster,
    3: _three_node_cluster,
    65: _owner_node_killed,
    66: _node_rejoined_and_unlocked,
    78: _tgtd_exports_clone,
}


# -- payloads ---------------------------------------------------------------------------------------
def recorded_tags(entries: list[Entry]) -> set[str]:
    """Snapshot tags the client wrote (WRITE_OBJ into an inode at the tag offset)."""
    tags = {""}
    for entry in entries:
        request = decode_request(entry.request)
        fields = request.fields
        if request.opcode == Opcode.WRITE_OBJ and isinstance(fields, ObjFields) \
                and is_inode_oid(fields.oid) and fields.offset == INODE_TAG_OFFSET:
            tags.add(decode_c_string(entry.request_head))
    return tags


def reconstruct_payload(entry: Entry, tags: set[str]) -> bytes | None:
    """The exact payload when the recording determines it (verified by sha256), else None.

    Determined: payloads of at most 64 bytes (the head is all of it), NUL-padded names/tags/zeroed index
    batches, and name||tag pairs whose tag the client wrote earlier.
    """
    if entry.request_len <= len(entry.request_head):
        candidates = [entry.request_head[:entry.request_len]]
    else:
        candidates = [entry.request_head.ljust(entry.request_len, b"\0")]
        if entry.request_len == 2 * NAME_LEN:
            name = entry.request_head[:NAME_LEN].ljust(NAME_LEN, b"\0")
            candidates += [name + tag.encode().ljust(NAME_LEN, b"\0") for tag in sorted(tags)]
    for candidate in candidates:
        if sha256(candidate) == entry.request_sha256:
            return candidate
    return None


class Replay:
    """Feeds recorded requests to a FAKE node over TCP, applying ``EVENTS`` and substituting payloads the
    recording does not contain (``substituted`` records which entries needed that, and why)."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.tags = recorded_tags(entries)
        self.cluster = FakeSheepdogCluster()
        self.server: FakeSheepdogServer | None = None
        self.sock: socket.socket | None = None
        self.substituted: dict[int, str] = {}

    def use(self, cluster: FakeSheepdogCluster) -> None:
        self.close()
        self.cluster = cluster
        self.server = FakeSheepdogServer(cluster).start()
        self.sock = socket.create_connection(tuple(self.server.address.rsplit(":", 1)))  # type: ignore[arg-type]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.server is not None:
            self.server.stop()
            self.server = None

    def prepare(self, start: int) -> None:
        """Bring the fake to the state just before entry ``start``: replay entries [0, start) without
        checking answers, then apply the events due before ``start``."""
        for entry in self.entries[:start]:
            self.step(entry)
        if start in EVENTS:
            EVENTS[start](self)

    def step(self, entry: Entry) -> tuple[bytes, bytes]:
        """Apply the events due before ``entry``, send it, return (response header, response data)."""
        if entry.number in EVENTS:
            EVENTS[entry.number](self)
        payload = b""
        if decode_request(entry.request).flags & 1:
            payload = self.payload_for(entry)
        assert self.sock is not None
        self.sock.sendall(entry.request + payload)
        header = _recv(self.sock, HEADER_SIZE)
        data = _recv(self.sock, decode_response(header).data_length)
        return header, data

    def payload_for(self, entry: Entry) -> bytes:
        exact = reconstruct_payload(entry, self.tags)
        if exact is not None:
            return exact
        request = decode_request(entry.request)
        fields = request.fields
        assert isinstance(fields, ObjFields), f"entry {entry.number}: unexpected opaque payload"
        if is_inode_oid(fields.oid) and fields.offset == 0 and entry.request_len == INODE_HEADER_SIZE:
            # A rewritten inode header (resize). Only its sha256 is recorded, and the fake's header
            # differs from sheep's anyway (create_time): write the fake's own header with the new size,
            # which the next NEW_VDI based on this VDI carries (entry 32: 512 MiB).
            vid = oid_to_vid(fields.oid)
            size = self._next_new_vdi_size(entry.number, vid)
            self.substituted[entry.number] = f"inode header of 0x{vid:06x} grown to {size} bytes"
            return encode_inode_header(self.cluster.vdis[vid].inode.with_size(size))
        # Guest data (random bytes in the recording; only sha256 and 64 bytes kept). The contents do
        # not influence any response header: the head repeated stands in for them.
        self.substituted[entry.number] = "guest data bytes"
        return (entry.request_head * (entry.request_len // len(entry.request_head) + 1))[:entry.request_len]

    def _next_new_vdi_size(self, after: int, vid: int) -> int:
        for later in self.entries[after + 1:]:
            request = decode_request(later.request)
            if request.opcode == Opcode.NEW_VDI and isinstance(request.fields, VdiFields) \
                    and request.fields.base_vdi_id == vid:
                return request.fields.vdi_size
        raise AssertionError(f"no later NEW_VDI based on 0x{vid:06x}")


def _recv(sock: socket.socket, length: int) -> bytes:
    buf = bytearray()
    while len(buf) < length:
        chunk = sock.recv(length - len(buf))
        assert chunk, "the fake closed the connection"
        buf += chunk
    return bytes(buf)
