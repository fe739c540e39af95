"""libiscsi ctypes layer without a target: struct layouts and the SPC/SBC parameter-data codecs."""

from __future__ import annotations

import ctypes
import struct

import pytest

from hvstore.protocols import libiscsi
from hvstore.protocols.libiscsi import (
    Chap,
    IscsiError,
    PrType,
    Target,
    parse_read_capacity16,
    parse_read_keys,
    parse_read_reservation,
)


def test_struct_layouts_match_libiscsi_1_19_headers() -> None:
    # offsetof() values printed by a C program compiled against libiscsi-dev 1.19.0 on x86_64
    task, sense = libiscsi._ScsiTask, libiscsi._ScsiSense
    assert task.status.offset == 0
    assert task.residual.offset == 40
    assert task.sense.offset == 48
    assert task.datain.offset == 64
    assert ctypes.sizeof(sense) == 16
    assert (sense.key.offset, sense.ascq.offset) == (4, 8)
    assert (sense.bit_pointer.offset, sense.field_pointer.offset) == (13, 14)
    assert ctypes.sizeof(libiscsi._PrOutBasic) == 24


def test_library_loads_and_declares_the_sync_calls() -> None:
    lib = libiscsi.library()
    assert lib.iscsi_write16_sync.restype is not None
    assert lib.iscsi_persistent_reserve_out_sync.argtypes[-1] is ctypes.c_void_p


def test_read_keys() -> None:
    keys = (0x1111, 0xDEADBEEF00000001)
    data = struct.pack(">II", 7, 8 * len(keys)) + b"".join(struct.pack(">Q", k) for k in keys)
    parsed = parse_read_keys(data)
    assert parsed.generation == 7
    assert parsed.keys == keys


def test_read_keys_truncated_list_and_no_keys() -> None:
    # the target reports more keys than fit in the allocation length: only whole keys are returned
    data = struct.pack(">II", 1, 24) + struct.pack(">Q", 5) + b"\x00\x00"
    assert parse_read_keys(data).keys == (5,)
    assert parse_read_keys(struct.pack(">II", 3, 0)).keys == ()
    with pytest.raises(IscsiError):
        parse_read_keys(b"\x00")


def test_read_reservation_held_and_free() -> None:
    held = struct.pack(">IIQIBBH", 4, 16, 0xABC, 0, 0, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 0)
    parsed = parse_read_reservation(held)
    assert (parsed.generation, parsed.key, parsed.type) == (4, 0xABC, PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY)
    free = parse_read_reservation(struct.pack(">II", 9, 0))
    assert (free.generation, free.key, free.type) == (9, None, None)


def test_read_capacity16() -> None:
    data = struct.pack(">QI", 131071, 512) + bytes(20)
    assert parse_read_capacity16(data) == (131072, 512)
    with pytest.raises(IscsiError):
        parse_read_capacity16(bytes(4))


def test_target_url_and_chap_repr_hides_the_password() -> None:
    assert Target("127.0.0.1:3260", "iqn.x:y", 1).url == "iscsi://127.0.0.1:3260/iqn.x:y/1"
    assert "s3cret" not in repr(Chap("u", "s3cret"))
