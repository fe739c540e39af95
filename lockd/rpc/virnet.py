"""libvirt's RPC framing ("virNet" protocol), sans-I/O: frames, headers, the error struct, keepalive.

Every message on a libvirt socket is a 4-byte big-endian length word that counts itself, a 24-byte
header (program, version, procedure, type, serial, status) and an XDR payload. This module turns
bytes into ``Message`` values and back and contains no I/O code whatsoever: ``FrameDecoder.feed()``
takes whatever bytes arrived and returns the complete messages among them.

What it cannot do: file-descriptor passing (CALL_WITH_FDS / REPLY_WITH_FDS) and streams are only named,
never decoded; the lock program uses neither. Reference: ../shared/docs/virtlockd-protocol.md §2.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lockd.errors import ProtocolError
from lockd.rpc.xdr import XdrReader, XdrWriter

LENGTH_WORD_BYTES = 4
HEADER_BYTES = 24
# libvirt checks ``length - 4 <= VIR_NET_MESSAGE_MAX`` and closes the connection otherwise.
VIR_NET_MESSAGE_MAX = 33554432
MAX_FRAME_BYTES = VIR_NET_MESSAGE_MAX + LENGTH_WORD_BYTES
# libvirt's generic remote_string bound (the lock program uses its own, smaller one).
VIR_NET_MESSAGE_STRING_MAX = 4194304
UUID_BYTES = 16

KEEPALIVE_PROGRAM = 0x6B656570  # "keep"
KEEPALIVE_VERSION = 1


class MessageType(enum.IntEnum):
    CALL = 0
    REPLY = 1
    MESSAGE = 2
    STREAM = 3
    CALL_WITH_FDS = 4
    REPLY_WITH_FDS = 5
    STREAM_HOLE = 6


class MessageStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    CONTINUE = 2


class KeepaliveProcedure(enum.IntEnum):
    PING = 1
    PONG = 2


class ErrorLevel(enum.IntEnum):
    NONE = 0
    WARNING = 1
    ERROR = 2


class FrameError(ProtocolError):
    """The byte stream cannot be split into messages any more; the connection must be closed."""


@dataclass(frozen=True)
class Header:
    """The 24 bytes after the length word. ``type`` and ``status`` stay plain ints because a peer may
    send values outside the enums, and the reply to such a message must echo or name them."""

    prog: int
    vers: int
    proc: int
    type: int
    serial: int
    status: int

    def encode(self, writer: XdrWriter) -> None:
        writer.uint32(self.prog)
        writer.uint32(self.vers)
        writer.int32(self.proc)
        writer.int32(self.type)
        writer.uint32(self.serial)
        writer.int32(self.status)

    @classmethod
    def decode(cls, reader: XdrReader) -> Header:
        return cls(prog=reader.uint32(), vers=reader.uint32(), proc=reader.int32(), type=reader.int32(),
                   serial=reader.uint32(), status=reader.int32())

    def reply(self, status: MessageStatus = MessageStatus.OK) -> Header:
        """The header of the answer to this CALL: same prog/vers/proc/serial, type REPLY."""
        return Header(self.prog, self.vers, self.proc, MessageType.REPLY, self.serial, status)


@dataclass(frozen=True)
class Message:
    header: Header
    payload: bytes = b""

    def encode(self) -> bytes:
        """The complete frame: length word (counting itself), header, payload."""
        writer = XdrWriter()
        writer.uint32(LENGTH_WORD_BYTES + HEADER_BYTES + len(self.payload))
        self.header.encode(writer)
        return bytes(writer) + self.payload

    def payload_reader(self) -> XdrReader:
        return XdrReader(self.payload)


@dataclass(frozen=True)
class DomainRef:
    """``remote_nonnull_domain``: the optional ``dom`` field of the error struct."""

    name: str
    uuid: bytes
    id: int

    def encode(self, writer: XdrWriter) -> None:
        writer.string(self.name, VIR_NET_MESSAGE_STRING_MAX)
        writer.opaque_fixed(self.uuid, UUID_BYTES)
        writer.int32(self.id)

    @classmethod
    def decode(cls, reader: XdrReader) -> DomainRef:
        return cls(name=reader.string(VIR_NET_MESSAGE_STRING_MAX), uuid=reader.opaque_fixed(UUID_BYTES),
                   id=reader.int32())


@dataclass(frozen=True)
class NetworkRef:
    """``remote_nonnull_network``: the optional ``net`` field of the error struct."""

    name: str
    uuid: bytes

    def encode(self, writer: XdrWriter) -> None:
        writer.string(self.name, VIR_NET_MESSAGE_STRING_MAX)
        writer.opaque_fixed(self.uuid, UUID_BYTES)

    @classmethod
    def decode(cls, reader: XdrReader) -> NetworkRef:
        return cls(name=reader.string(VIR_NET_MESSAGE_STRING_MAX), uuid=reader.opaque_fixed(UUID_BYTES))


def _encode_string(writer: XdrWriter, value: str) -> None:
    writer.string(value, VIR_NET_MESSAGE_STRING_MAX)


def _decode_string(reader: XdrReader) -> str:
    return reader.string(VIR_NET_MESSAGE_STRING_MAX)


@dataclass(frozen=True)
class WireError:
    """``virNetMessageError``: the payload of a REPLY with status ERROR, fields in wire order.

    ``code`` is a virErrorNumber, ``domain`` a virErrorDomain; libvirt re-raises them verbatim on the
    client, so ``message`` is what the user reads. ``str1``/``str2`` carry the message's format prefix
    and its detail the way libvirt's own daemons fill them; ``int1`` is the errno of system errors.
    """

    code: int
    domain: int
    message: str | None
    level: int = ErrorLevel.ERROR
    dom: DomainRef | None = None
    str1: str | None = None
    str2: str | None = None
    str3: str | None = None
    int1: int = -1
    int2: int = -1
    net: NetworkRef | None = None

    def encode(self) -> bytes:
        writer = XdrWriter()
        writer.int32(self.code)
        writer.int32(self.domain)
        writer.optional(self.message, _encode_string)
        writer.int32(self.level)
        writer.optional(self.dom, lambda w, d: d.encode(w))
        writer.optional(self.str1, _encode_string)
        writer.optional(self.str2, _encode_string)
        writer.optional(self.str3, _encode_string)
        writer.int32(self.int1)
        writer.int32(self.int2)
        writer.optional(self.net, lambda w, n: n.encode(w))
        return bytes(writer)

    @classmethod
    def decode(cls, reader: XdrReader) -> WireError:
        return cls(code=reader.int32(), domain=reader.int32(), message=reader.optional(_decode_string),
                   level=reader.int32(), dom=reader.optional(DomainRef.decode),
                   str1=reader.optional(_decode_string), str2=reader.optional(_decode_string),
                   str3=reader.optional(_decode_string), int1=reader.int32(), int2=reader.int32(),
                   net=reader.optional(NetworkRef.decode))


def error_reply(call: Header, error: WireError) -> Message:
    """The REPLY/ERROR answering ``call``; it echoes the call's prog, vers, proc and serial."""
    return Message(call.reply(MessageStatus.ERROR), error.encode())


def void_reply(call: Header) -> Message:
    """The successful REPLY to a call whose return type is void (every lock procedure): 28 bytes."""
    return Message(call.reply(MessageStatus.OK))


def is_keepalive(header: Header) -> bool:
    return header.prog == KEEPALIVE_PROGRAM


def keepalive_answer(header: Header) -> Message | None:
    """The PONG for a PING, ``None`` for anything else of the keepalive program.

    libvirt builds the PONG as a fresh message, so its serial is always 0 whatever the PING carried.
    A PONG is never answered, and we never send a PING ourselves: lockd.so's client does not answer
    keepalives and treats any unsolicited frame as an error.
    """
    if (header.prog == KEEPALIVE_PROGRAM and header.vers == KEEPALIVE_VERSION
            and header.proc == KeepaliveProcedure.PING and header.type == MessageType.MESSAGE):
        return Message(Header(KEEPALIVE_PROGRAM, KEEPALIVE_VERSION, KeepaliveProcedure.PONG,
                              MessageType.MESSAGE, 0, MessageStatus.OK))
    return None


def ping() -> Message:
    """A keepalive PING (for clients and tests; the lock server never sends one)."""
    return Message(Header(KEEPALIVE_PROGRAM, KEEPALIVE_VERSION, KeepaliveProcedure.PING,
                          MessageType.MESSAGE, 0, MessageStatus.OK))


class FrameDecoder:
    """Splits a byte stream into ``Message`` values; feed it bytes in pieces of any size.

    ``feed()`` raises ``FrameError`` when a length word is below the header size or above
    ``max_frame_bytes``: libvirt closes the connection then, and so must the caller, since the stream
    cannot be re-synchronised. The decoder never buffers more than one frame plus one read.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < LENGTH_WORD_BYTES + HEADER_BYTES:
            raise ValueError(f"max_frame_bytes {max_frame_bytes} cannot hold a header")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._broken = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes received that do not yet form a complete frame (non-zero at EOF means a cut frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        if self._broken:
            raise FrameError("the stream had a bad frame earlier; close the connection")
        self._buffer += data
        messages: list[Message] = []
        while len(self._buffer) >= LENGTH_WORD_BYTES:
            length = int.from_bytes(self._buffer[:LENGTH_WORD_BYTES], "big")
            # libvirt refuses only length < 4; a frame of 4..27 bytes then fails header decoding and
            # the connection is closed as well, so both end up here.
            if length < LENGTH_WORD_BYTES + HEADER_BYTES or length > self.max_frame_bytes:
                self._broken = True
                raise FrameError(f"frame length {length} outside [{LENGTH_WORD_BYTES + HEADER_BYTES}, "
                                 f"{self.max_frame_bytes}]")
            if len(self._buffer) < length:
                break
            frame = bytes(self._buffer[:length])
            del self._buffer[:length]
            header = Header.decode(XdrReader(frame, LENGTH_WORD_BYTES))
            messages.append(Message(header, frame[LENGTH_WORD_BYTES + HEADER_BYTES:]))
        return messages


def decode_frame(frame: bytes) -> Message:
    """Decode exactly one complete frame (length word included); raise ``FrameError`` otherwise."""
    decoder = FrameDecoder()
    messages = decoder.feed(frame)
    if len(messages) != 1 or decoder.buffered_bytes:
        raise FrameError(f"expected exactly one frame in {len(frame)} bytes, got {len(messages)} "
                         f"and {decoder.buffered_bytes} bytes left over")
    return messages[0]
