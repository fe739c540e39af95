"""XDR codec: round trips over the whole value domain (hypothesis), RFC 4506 encodings, strict bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockd.errors import ProtocolError
from lockd.rpc.xdr import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    UINT64_MAX,
    XdrError,
    XdrReader,
    XdrWriter,
)

int32s = st.integers(INT32_MIN, INT32_MAX)
uint32s = st.integers(0, UINT32_MAX)


def _encoded(write) -> bytes:
    writer = XdrWriter()
    write(writer)
    return bytes(writer)


@given(int32s)
def test_int32_round_trip(value: int):
    data = _encoded(lambda w: w.int32(value))
    assert len(data) == 4
    reader = XdrReader(data)
    assert reader.int32() == value
    reader.expect_end()


@given(uint32s)
def test_uint32_round_trip(value: int):
    assert XdrReader(_encoded(lambda w: w.uint32(value))).uint32() == value


@given(st.integers(INT64_MIN, INT64_MAX))
def test_hyper_round_trip(value: int):
    data = _encoded(lambda w: w.hyper(value))
    assert len(data) == 8 and XdrReader(data).hyper() == value


@given(st.integers(0, UINT64_MAX))
def test_uhyper_round_trip(value: int):
    assert XdrReader(_encoded(lambda w: w.uhyper(value))).uhyper() == value


@given(st.booleans())
def test_bool_round_trip(value: bool):
    assert XdrReader(_encoded(lambda w: w.boolean(value))).boolean() is value


@given(st.binary(max_size=300))
def test_variable_opaque_round_trip_and_padding(data: bytes):
    encoded = _encoded(lambda w: w.opaque(data))
    assert len(encoded) % 4 == 0
    assert int.from_bytes(encoded[:4], "big") == len(data)
    assert encoded[4 + len(data):] == bytes(len(encoded) - 4 - len(data))  # zero padding
    reader = XdrReader(encoded)
    assert reader.opaque() == data
    reader.expect_end()


@given(st.binary(min_size=0, max_size=40))
def test_fixed_opaque_round_trip(data: bytes):
    encoded = _encoded(lambda w: w.opaque_fixed(data, len(data)))
    assert len(encoded) == (len(data) + 3) // 4 * 4
    assert XdrReader(encoded).opaque_fixed(len(data)) == data


@given(st.text(max_size=200))
def test_string_round_trip(text: str):
    encoded = _encoded(lambda w: w.string(text))
    assert XdrReader(encoded).string() == text


@given(st.binary(max_size=100))
def test_any_bytes_survive_a_string_round_trip(raw: bytes):
    """libvirt strings carry no encoding: arbitrary bytes must come back unchanged."""
    encoded = _encoded(lambda w: w.opaque(raw))
    text = XdrReader(encoded).string()
    assert _encoded(lambda w: w.string(text)) == encoded


@given(st.one_of(st.none(), int32s))
def test_optional_round_trip(value: int | None):
    encoded = _encoded(lambda w: w.optional(value, XdrWriter.int32))
    assert len(encoded) == (4 if value is None else 8)
    assert XdrReader(encoded).optional(XdrReader.int32) == value


@given(st.lists(uint32s, max_size=50))
def test_variable_array_round_trip(items: list[int]):
    encoded = _encoded(lambda w: w.array(items, XdrWriter.uint32))
    assert XdrReader(encoded).array(XdrReader.uint32) == items


@given(st.lists(st.text(max_size=10), min_size=3, max_size=3))
def test_fixed_array_round_trip(items: list[str]):
    encoded = _encoded(lambda w: w.array_fixed(items, 3, lambda w2, s: w2.string(s)))
    assert XdrReader(encoded).array_fixed(3, lambda r: r.string()) == items


def test_known_encodings_from_rfc4506():
    assert _encoded(lambda w: w.int32(-1)) == b"\xff\xff\xff\xff"
    assert _encoded(lambda w: w.string("vm1")) == bytes.fromhex("00000003766d3100")
    assert _encoded(lambda w: w.string("")) == bytes(4)
    assert _encoded(lambda w: w.hyper(-2)) == bytes.fromhex("fffffffffffffffe")


@pytest.mark.parametrize(("method", "value"), [
    ("int32", INT32_MAX + 1), ("int32", INT32_MIN - 1), ("uint32", -1), ("uint32", UINT32_MAX + 1),
    ("hyper", INT64_MAX + 1), ("uhyper", -1), ("int32", True), ("uint32", "1"),
])
def test_out_of_range_values_are_refused(method: str, value: object):
    with pytest.raises(XdrError):
        getattr(XdrWriter(), method)(value)


def test_writer_bounds():
    with pytest.raises(XdrError, match="exceeds its maximum"):
        XdrWriter().string("abcde", 4)
    with pytest.raises(XdrError, match="exactly 16 bytes"):
        XdrWriter().opaque_fixed(b"short", 16)
    with pytest.raises(XdrError, match="exceeds its maximum"):
        XdrWriter().array([1, 2, 3], XdrWriter.uint32, 2)


def test_reader_refuses_truncated_input():
    for data, read in [
        (b"\x00\x00\x00", XdrReader.int32),
        (b"\x00" * 7, XdrReader.hyper),
        (bytes.fromhex("00000005616263"), XdrReader.string),  # says 5, has 3
        (bytes.fromhex("0000000361626300")[:6], XdrReader.string),  # padding cut off
        (bytes.fromhex("00000001"), lambda r: r.optional(XdrReader.int32)),
    ]:
        with pytest.raises(XdrError, match="truncated"):
            read(XdrReader(data))


def test_reader_refuses_lengths_above_the_bound_before_reading():
    huge = bytes.fromhex("7fffffff")  # claims 2 GiB; must fail on the bound, not on allocation
    with pytest.raises(XdrError, match="maximum is 65536"):
        XdrReader(huge).string(65536)
    with pytest.raises(XdrError, match="claims"):
        XdrReader(huge).opaque()
    with pytest.raises(XdrError, match="claims"):
        XdrReader(huge + bytes(8)).array(XdrReader.uint32)


def test_bool_other_than_0_or_1_is_refused():
    with pytest.raises(XdrError, match="not 0 or 1"):
        XdrReader(bytes.fromhex("00000002")).boolean()


def test_errors_are_protocol_errors_and_trailing_bytes_are_reported():
    reader = XdrReader(bytes(8))
    reader.int32()
    assert reader.remaining == 4
    with pytest.raises(ProtocolError, match="4 unexpected trailing bytes"):
        reader.expect_end()
