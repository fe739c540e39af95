"""The sans-I/O Sheepdog codec against the recorded sheep 1.0.1 headers and the spec's worked examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvstore.errors import InvalidArgument
from hvstore.protocols.sheepdog import parse_address
from hvstore.protocols.sheepdog_codec import (
    INODE_HEADER_SIZE,
    InodeHeader,
    ObjFields,
    Opcode,
    ProtocolError,
    Request,
    Result,
    VdiFields,
    VdiResult,
    VdiState,
    data_oid,
    decode_index,
    decode_inode_header,
    decode_name_tag,
    decode_request,
    decode_response,
    decode_vdi_states,
    encode_bitmap,
    encode_index,
    encode_inode_header,
    encode_name,
    encode_name_tag,
    encode_request,
    encode_response,
    encode_vdi_state,
    index_offset,
    inode_oid,
    is_data_oid,
    is_inode_oid,
    oid_to_index,
    oid_to_vid,
    result_text,
    vdi_body,
    vid_hash,
    vids_in_bitmap,
)
from tests.fakes.sheepdog_replay import load, sha256

ENTRIES = load()


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"entry{e.number}")
def test_recorded_headers_round_trip(entry):
    assert encode_request(decode_request(entry.request)) == entry.request
    assert encode_response(decode_response(entry.response)) == entry.response


def test_decodes_the_spec_example_lookup():
    # sheepdog-protocol.md §3: GET_VDI_INFO for "vol", answered with vid 0xcb565a, 3 copies, shift 22.
    entry = ENTRIES[3]
    request = decode_request(entry.request)
    assert (request.proto_ver, request.opcode, request.flags, request.id, request.data_length) == \
        (2, Opcode.GET_VDI_INFO, 1, 1, 512)
    assert request.fields == VdiFields()
    response = decode_response(entry.response)
    assert (response.proto_ver, response.result, response.epoch) == (0, Result.SUCCESS, 1)
    assert response.vdi == VdiResult(0xCB565A, 0, 3, 22)


def test_decodes_object_layout_of_a_copy_on_write_create():
    request = decode_request(ENTRIES[36].request)
    assert request.opcode == Opcode.CREATE_AND_WRITE_OBJ and request.flags == 0x03
    assert request.fields == ObjFields(oid=data_oid(0xCB565B, 0), cow_oid=data_oid(0xCB565A, 0), copies=3)


def test_decodes_snapshot_new_vdi_fields():
    fields = decode_request(ENTRIES[32].request).fields
    assert fields == VdiFields(vdi_size=512 << 20, base_vdi_id=0xCB565A, copies=3, block_size_shift=22, snapid=1)


def test_recorded_name_payloads_are_what_we_encode():
    assert sha256(encode_name("la")) == ENTRIES[0].request_sha256
    assert sha256(encode_name_tag("vol")) == ENTRIES[3].request_sha256
    assert sha256(encode_name_tag("vol", "s1")) == ENTRIES[84].request_sha256
    assert decode_name_tag(encode_name_tag("vol", "s1")) == ("vol", "s1")


def test_vid_hash_matches_the_ids_sheep_gave():
    assert [vid_hash(n) for n in ("vol", "la", "cl")] == [0xCB565A, 0x54031E, 0x4A297A]


def test_object_ids():
    assert inode_oid(0x83D7D1) == 0x8083D7D100000000
    assert data_oid(0x83D7D1, 1) == 0x0083D7D100000001
    assert oid_to_vid(0x8083D7D100000000) == 0x83D7D1 and oid_to_index(0x0083D7D100000001) == 1
    assert is_inode_oid(inode_oid(5)) and not is_data_oid(inode_oid(5)) and is_data_oid(data_oid(5, 7))
    assert index_offset(0) == INODE_HEADER_SIZE == 0x1238 and index_offset(25) == 0x129C


@given(st.lists(st.integers(0, (1 << 24) - 1), max_size=50))
def test_index_round_trip(vids):
    assert decode_index(encode_index(vids)) == vids


@given(st.sets(st.integers(0, (1 << 24) - 1), max_size=30))
def test_bitmap_round_trip(vids):
    assert set(vids_in_bitmap(encode_bitmap(vids))) == vids


def test_inode_header_round_trip_keeps_unused_bytes():
    inode = InodeHeader("vol", "s1", 1, 2, 3, 512 << 20, 0, 0, 0, 3, 22, 2, 0xCB565B, 0xCB565A, 0,
                        unused=b"\x07" * (INODE_HEADER_SIZE - 572))
    raw = encode_inode_header(inode)
    assert len(raw) == INODE_HEADER_SIZE
    assert raw[536:544] == (512 << 20).to_bytes(8, "little") and raw[555] == 22
    assert decode_inode_header(raw) == inode
    grown = decode_inode_header(encode_inode_header(inode.with_size(1 << 30)))
    assert grown.vdi_size == 1 << 30 and grown.unused == inode.unused
    assert inode.is_snapshot and inode.nr_objects == 128


def test_vdi_state_round_trip():
    state = VdiState(0xCB565B, 3, False, False, 0, 22, 0xCB565A, 2, "127.0.0.1:7001", 0)
    raw = encode_vdi_state(state)
    assert len(raw) == 1428 and raw[20:32] == bytes(12) and raw[32:36] == bytes([127, 0, 0, 1])
    assert decode_vdi_states(raw * 2) == [state, state]


def test_vdi_body_offsets():
    body = vdi_body(VdiResult(0xCB565A, 0, 3, 22))
    response = encode_response(decode_response(ENTRIES[3].response))
    assert response[20:] == body


def test_bad_input_is_refused():
    with pytest.raises(ProtocolError):
        decode_request(b"\0" * 47)
    with pytest.raises(ProtocolError):
        encode_request(Request(Opcode.READ_VDIS, 1, 0, b"short"))
    with pytest.raises(InvalidArgument, match="longer than 255 bytes"):
        encode_name("x" * 256)
    with pytest.raises(InvalidArgument, match="NUL"):
        encode_name("a\0b")
    with pytest.raises(InvalidArgument, match="empty"):
        encode_name("")


def test_result_text():
    assert result_text(Result.NO_VDI) == "no such VDI (0x08)"
    assert result_text(0x77) == "unknown result (0x77)"


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:7000", ("127.0.0.1", 7000)), ("sheep1", ("sheep1", 7000)), ("[::1]:7001", ("::1", 7001)),
    ("unix:/var/lib/sheepdog/sock", "/var/lib/sheepdog/sock"),
])
def test_parse_address(text, expected):
    assert parse_address(text)[1] == expected


@pytest.mark.parametrize("text", ["", "host:port", "host:0", ":7000", "host:70000"])
def test_parse_address_refuses(text):
    with pytest.raises(InvalidArgument, match="invalid sheepdog address"):
        parse_address(text)
