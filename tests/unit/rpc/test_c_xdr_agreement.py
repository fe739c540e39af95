"""Differential test: our lock-program codec against libvirt's own generated C codec.

lockd.so (libvirt 9.0's plugin, Debian package libvirt-daemon; libtirpc3 for the XDR streams) exports the
rpcgen'd ``xdr_virLockSpaceProtocol*Args`` functions it uses on the wire; we run them through
libtirpc's memory streams with ctypes. Encodings must be identical, and for arbitrary payload bytes both
decoders must agree on accept/refuse and on the decoded values. One deliberate difference: a string with
an embedded NUL, which C accepts and silently truncates, is refused by us.

Skips only where libvirt is not installed at all (the set-up installs it, so not in CI).
"""

from __future__ import annotations

import ctypes
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockd.rpc.virtlockd import CreateLockspaceArgs, Owner, RegisterArgs, ResourceArgs
from lockd.rpc.xdr import XdrError, XdrReader, XdrWriter

LOCKD_SO = "/usr/lib/x86_64-linux-gnu/libvirt/lock-driver/lockd.so"
if not os.path.exists(LOCKD_SO):
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{LOCKD_SO} missing: the set-up must install libvirt-daemon")
    pytest.skip(f"{LOCKD_SO} not installed", allow_module_level=True)

XDR_ENCODE, XDR_DECODE = 0, 1
BUFFER_BYTES = 1 << 18


class XDR(ctypes.Structure):
    """libtirpc's struct XDR (rpc/xdr.h); x_handy counts the bytes left in a memory stream."""

    _fields_ = [("x_op", ctypes.c_int), ("x_ops", ctypes.c_void_p), ("x_public", ctypes.c_char_p),
                ("x_private", ctypes.c_void_p), ("x_base", ctypes.c_char_p), ("x_handy", ctypes.c_uint)]


class CResourceArgs(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("name", ctypes.c_char_p), ("flags", ctypes.c_uint)]


class COwner(ctypes.Structure):
    _fields_ = [("uuid", ctypes.c_ubyte * 16), ("name", ctypes.c_char_p), ("id", ctypes.c_uint),
                ("pid", ctypes.c_uint)]


class CRegisterArgs(ctypes.Structure):
    _fields_ = [("owner", COwner), ("flags", ctypes.c_uint)]


class CCreateLockspaceArgs(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p)]


plugin = ctypes.CDLL(LOCKD_SO)
tirpc = ctypes.CDLL("libtirpc.so.3")
tirpc.xdrmem_create.argtypes = [ctypes.POINTER(XDR), ctypes.c_char_p, ctypes.c_uint, ctypes.c_int]
tirpc.xdrmem_create.restype = None

ENCODERS = {
    ResourceArgs: (CResourceArgs, plugin.xdr_virLockSpaceProtocolAcquireResourceArgs),
    RegisterArgs: (CRegisterArgs, plugin.xdr_virLockSpaceProtocolRegisterArgs),
    CreateLockspaceArgs: (CCreateLockspaceArgs, plugin.xdr_virLockSpaceProtocolCreateLockSpaceArgs),
}
for _struct, function in ENCODERS.values():
    function.argtypes = [ctypes.POINTER(XDR), ctypes.c_void_p]
    function.restype = ctypes.c_int


def c_encode(args: ResourceArgs | RegisterArgs | CreateLockspaceArgs) -> bytes | None:
    struct_type, function = ENCODERS[type(args)]
    value = struct_type()
    if isinstance(args, ResourceArgs):
        value.path, value.name, value.flags = _c(args.path), _c(args.name), args.flags
    elif isinstance(args, RegisterArgs):
        value.owner.uuid[:] = list(args.owner.uuid)
        value.owner.name, value.owner.id, value.owner.pid = _c(args.owner.name), args.owner.id, args.owner.pid
        value.flags = args.flags
    else:
        value.path = _c(args.path)
    buffer = ctypes.create_string_buffer(BUFFER_BYTES)
    stream = XDR()
    tirpc.xdrmem_create(ctypes.byref(stream), buffer, BUFFER_BYTES, XDR_ENCODE)
    if not function(ctypes.byref(stream), ctypes.byref(value)):
        return None
    return buffer.raw[:BUFFER_BYTES - stream.x_handy]


def c_decode(kind: type, data: bytes) -> ResourceArgs | RegisterArgs | CreateLockspaceArgs | None:
    struct_type, function = ENCODERS[kind]
    value = struct_type()
    buffer = ctypes.create_string_buffer(data, len(data))
    stream = XDR()
    tirpc.xdrmem_create(ctypes.byref(stream), buffer, len(data), XDR_DECODE)
    if not function(ctypes.byref(stream), ctypes.byref(value)):
        return None  # (the strings C allocated before failing are leaked: a test process, a few bytes)
    if kind is ResourceArgs:
        return ResourceArgs(_py(value.path), _py(value.name), value.flags)
    if kind is RegisterArgs:
        owner = value.owner
        return RegisterArgs(Owner(bytes(owner.uuid), _py(owner.name), owner.id, owner.pid), value.flags)
    return CreateLockspaceArgs(_py(value.path))


def _c(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _py(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "surrogateescape")


def py_encode(args: ResourceArgs | RegisterArgs | CreateLockspaceArgs) -> bytes:
    writer = XdrWriter()
    args.encode(writer)
    return bytes(writer)


def py_decode(kind: type, data: bytes) -> ResourceArgs | RegisterArgs | CreateLockspaceArgs | None:
    try:
        return kind.decode(XdrReader(data))  # type: ignore[attr-defined, no-any-return]
    except XdrError:
        return None


# Strings as C can hold them: any bytes but NUL, up to the protocol's 65536-byte bound and a bit beyond.
c_strings = st.binary(max_size=80).filter(lambda b: b"\0" not in b).map(_py)
uint32s = st.integers(0, 2**32 - 1)
all_args = st.one_of(
    st.builds(ResourceArgs, c_strings, c_strings, uint32s),
    st.builds(RegisterArgs, st.builds(Owner, st.binary(min_size=16, max_size=16), c_strings, uint32s, uint32s),
              uint32s),
    st.builds(CreateLockspaceArgs, c_strings),
)


@settings(max_examples=300)
@given(all_args)
def test_encodings_are_identical(args: ResourceArgs | RegisterArgs | CreateLockspaceArgs):
    assert py_encode(args) == c_encode(args)


@pytest.mark.parametrize("length", [65536, 65537])
def test_both_enforce_the_65536_byte_string_bound(length: int):
    args = CreateLockspaceArgs("x" * length)
    writer = XdrWriter()
    writer.string(args.path)  # unbounded writer, to hand C an over-long string
    encoded = bytes(writer)
    assert (c_decode(CreateLockspaceArgs, encoded) is None) == (length > 65536)
    assert (py_decode(CreateLockspaceArgs, encoded) is None) == (length > 65536)


@settings(max_examples=500)
@given(st.sampled_from([ResourceArgs, RegisterArgs, CreateLockspaceArgs]), st.data())
def test_decoders_agree_on_arbitrary_payloads(kind: type, data: st.DataObject):
    seed = data.draw(all_args.filter(lambda a: isinstance(a, kind)))
    payload = bytearray(py_encode(seed))
    for _ in range(data.draw(st.integers(0, 3))):
        action = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if action == "flip" and payload:
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del payload[data.draw(st.integers(0, len(payload))):]
        else:
            payload += data.draw(st.binary(max_size=8))
    ours = py_decode(kind, bytes(payload))
    theirs = c_decode(kind, bytes(payload))
    if ours is None and theirs is not None:
        # The one deliberate difference: C cuts a string at an embedded NUL, we refuse it.
        assert b"\0" in _embedded_strings(kind, bytes(payload))
    else:
        assert ours == theirs


def _embedded_strings(kind: type, payload: bytes) -> bytes:
    """The raw bytes of every string field in ``payload`` (which C accepted, so it is well-formed)."""
    reader = XdrReader(payload)
    raw = b""
    if kind is RegisterArgs:
        reader.opaque_fixed(16)
        raw += reader.opaque()
    else:
        raw += reader.opaque()
        if kind is ResourceArgs:
            raw += reader.opaque()
    return raw
