"""XDR (RFC 4506) encoding and decoding, sans-I/O: bytes in, values out, and back.

This is the codec under libvirt's RPC framing (``virnet.py``) and the virtlockd lock program
(``virtlockd.py``). It contains no I/O code whatsoever: an ``XdrWriter`` appends to a bytearray, an
``XdrReader`` walks a bytes object with a cursor.

Strictness: every read checks the remaining length first and every variable-length item checks its
declared maximum *before* it allocates, so a hostile length word costs nothing. Malformed input raises
``XdrError`` (a ``lockd.errors.ProtocolError``) with one line naming what was being read and where.
Two things are deliberately as lenient as libvirt's (glibc/tirpc) decoder, so that we accept exactly
what virtlockd accepts: the content of padding bytes is not checked, and bytes left over after a
payload are not an error of the codec (the caller decides; ``XdrReader.remaining``).

Strings are C strings in libvirt, i.e. bytes of no declared encoding. They are decoded as UTF-8 with
``surrogateescape``, so any byte sequence survives a decode/encode round trip unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TypeVar

from lockd.errors import ProtocolError

T = TypeVar("T")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

# No XDR item may claim more than this many bytes/elements unless the caller gives a bound; it is
# libvirt's VIR_NET_MESSAGE_MAX, itself larger than any single message can be.
UNBOUNDED = 33554432

STRING_ENCODING = "utf-8"
STRING_ERRORS = "surrogateescape"

_UINT32 = struct.Struct(">I")
_INT32 = struct.Struct(">i")
_UINT64 = struct.Struct(">Q")
_INT64 = struct.Struct(">q")


class XdrError(ProtocolError):
    """Bytes that are not a valid XDR encoding of the expected type, or a value that cannot be encoded."""


def padding(length: int) -> int:
    """Number of zero bytes that follow ``length`` bytes of opaque data to reach a multiple of 4."""
    return (4 - length % 4) % 4


class XdrWriter:
    """Appends XDR encodings to an internal buffer; ``bytes()`` returns what was written so far."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def __bytes__(self) -> bytes:
        return bytes(self._buffer)

    def __len__(self) -> int:
        return len(self._buffer)

    def int32(self, value: int) -> None:
        _check_range("int", value, INT32_MIN, INT32_MAX)
        self._buffer += _INT32.pack(value)

    def uint32(self, value: int) -> None:
        _check_range("unsigned int", value, 0, UINT32_MAX)
        self._buffer += _UINT32.pack(value)

    def hyper(self, value: int) -> None:
        _check_range("hyper", value, INT64_MIN, INT64_MAX)
        self._buffer += _INT64.pack(value)

    def uhyper(self, value: int) -> None:
        _check_range("unsigned hyper", value, 0, UINT64_MAX)
        self._buffer += _UINT64.pack(value)

    def boolean(self, value: bool) -> None:
        self._buffer += _UINT32.pack(1 if value else 0)

    def opaque_fixed(self, data: bytes, length: int) -> None:
        """``opaque name[length]``: exactly ``length`` bytes, padded, no length word."""
        if len(data) != length:
            raise XdrError(f"fixed opaque needs exactly {length} bytes, got {len(data)}")
        self._buffer += data
        self._buffer += bytes(padding(length))

    def opaque(self, data: bytes, max_length: int = UNBOUNDED) -> None:
        """``opaque name<max_length>``: a length word, the bytes, padding."""
        if len(data) > max_length:
            raise XdrError(f"opaque of {len(data)} bytes exceeds its maximum of {max_length}")
        self.uint32(len(data))
        self._buffer += data
        self._buffer += bytes(padding(len(data)))

    def string(self, value: str, max_length: int = UNBOUNDED) -> None:
        """``string name<max_length>``; the bound counts encoded bytes, as on the wire."""
        encoded = value.encode(STRING_ENCODING, STRING_ERRORS)
        if len(encoded) > max_length:
            raise XdrError(f"string of {len(encoded)} bytes exceeds its maximum of {max_length}")
        self.opaque(encoded, max_length)

    def optional(self, value: T | None, encode: Callable[[XdrWriter, T], None]) -> None:
        """``T *name``: 0 for absent, or 1 followed by the encoding of ``value``."""
        if value is None:
            self.boolean(False)
        else:
            self.boolean(True)
            encode(self, value)

    def array_fixed(self, items: Sequence[T], length: int, encode: Callable[[XdrWriter, T], None]) -> None:
        """``T name[length]``: exactly ``length`` items, no count word."""
        if len(items) != length:
            raise XdrError(f"fixed array needs exactly {length} items, got {len(items)}")
        for item in items:
            encode(self, item)

    def array(self, items: Sequence[T], encode: Callable[[XdrWriter, T], None],
              max_length: int = UNBOUNDED) -> None:
        """``T name<max_length>``: a count word, then the items."""
        if len(items) > max_length:
            raise XdrError(f"array of {len(items)} items exceeds its maximum of {max_length}")
        self.uint32(len(items))
        for item in items:
            encode(self, item)


class XdrReader:
    """Reads XDR items from ``data`` starting at ``offset``; every method advances the cursor.

    Raises ``XdrError`` when the data ends early, a bound is exceeded or a value is out of its domain;
    the cursor position is then unspecified and the reader should be dropped.
    """

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self._data = memoryview(data)
        self._offset = offset

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def expect_end(self, what: str = "payload") -> None:
        """Raise unless every byte was consumed (for callers that want stricter checks than libvirt)."""
        if self.remaining:
            raise XdrError(f"{self.remaining} unexpected trailing bytes after the {what}")

    def _take(self, count: int, what: str) -> memoryview:
        if count > self.remaining:
            raise XdrError(f"truncated {what} at byte {self._offset}: need {count} bytes, "
                           f"{self.remaining} left")
        start = self._offset
        self._offset += count
        return self._data[start:self._offset]

    def int32(self) -> int:
        return int(_INT32.unpack(self._take(4, "int"))[0])

    def uint32(self) -> int:
        return int(_UINT32.unpack(self._take(4, "unsigned int"))[0])

    def hyper(self) -> int:
        return int(_INT64.unpack(self._take(8, "hyper"))[0])

    def uhyper(self) -> int:
        return int(_UINT64.unpack(self._take(8, "unsigned hyper"))[0])

    def boolean(self) -> bool:
        at = self._offset
        value = self.uint32()
        if value > 1:
            raise XdrError(f"bool at byte {at} is {value}, not 0 or 1")
        return value == 1

    def opaque_fixed(self, length: int) -> bytes:
        data = bytes(self._take(length, f"opaque[{length}]"))
        self._take(padding(length), "padding")
        return data

    def opaque(self, max_length: int = UNBOUNDED) -> bytes:
        at = self._offset
        length = self.uint32()
        if length > max_length:
            raise XdrError(f"opaque at byte {at} claims {length} bytes, maximum is {max_length}")
        data = bytes(self._take(length, f"opaque<{max_length}>"))
        self._take(padding(length), "padding")
        return data

    def string(self, max_length: int = UNBOUNDED) -> str:
        at = self._offset
        length = self.uint32()
        if length > max_length:
            raise XdrError(f"string at byte {at} claims {length} bytes, maximum is {max_length}")
        data = bytes(self._take(length, "string"))
        self._take(padding(length), "padding")
        return data.decode(STRING_ENCODING, STRING_ERRORS)

    def optional(self, decode: Callable[[XdrReader], T]) -> T | None:
        return decode(self) if self.boolean() else None

    def array_fixed(self, length: int, decode: Callable[[XdrReader], T]) -> list[T]:
        return [decode(self) for _ in range(length)]

    def array(self, decode: Callable[[XdrReader], T], max_length: int = UNBOUNDED) -> list[T]:
        at = self._offset
        count = self.uint32()
        if count > max_length:
            raise XdrError(f"array at byte {at} claims {count} items, maximum is {max_length}")
        # Every XDR item takes at least 4 bytes: refuse a count the data cannot hold before looping.
        if count * 4 > self.remaining:
            raise XdrError(f"array at byte {at} claims {count} items but only {self.remaining} bytes remain")
        return [decode(self) for _ in range(count)]


def _check_range(kind: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise XdrError(f"{kind} needs an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise XdrError(f"{value} is out of range for XDR {kind} [{low}, {high}]")
