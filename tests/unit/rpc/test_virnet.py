"""libvirt RPC framing: headers, the incremental frame decoder, the error struct, keepalive."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockd.rpc.virnet import (
    MAX_FRAME_BYTES,
    DomainRef,
    FrameDecoder,
    FrameError,
    Header,
    Message,
    MessageType,
    NetworkRef,
    WireError,
    decode_frame,
    keepalive_answer,
    ping,
)
from lockd.rpc.xdr import XdrReader

headers = st.builds(Header, prog=st.integers(0, 2**32 - 1), vers=st.integers(0, 2**32 - 1),
                    proc=st.integers(-(2**31), 2**31 - 1), type=st.integers(-(2**31), 2**31 - 1),
                    serial=st.integers(0, 2**32 - 1), status=st.integers(-(2**31), 2**31 - 1))
messages = st.builds(Message, header=headers, payload=st.binary(max_size=200))
optional_text = st.one_of(st.none(), st.text(max_size=40))
wire_errors = st.builds(
    WireError, code=st.integers(-(2**31), 2**31 - 1), domain=st.integers(0, 100), message=optional_text,
    level=st.integers(0, 2), dom=st.one_of(st.none(), st.builds(DomainRef, st.text(max_size=10),
                                                                 st.binary(min_size=16, max_size=16),
                                                                 st.integers(-1, 99))),
    str1=optional_text, str2=optional_text, str3=optional_text, int1=st.integers(-(2**31), 2**31 - 1),
    int2=st.integers(-(2**31), 2**31 - 1),
    net=st.one_of(st.none(), st.builds(NetworkRef, st.text(max_size=10), st.binary(min_size=16, max_size=16))))


@given(messages)
def test_message_round_trip(message: Message):
    frame = message.encode()
    assert int.from_bytes(frame[:4], "big") == len(frame) == 28 + len(message.payload)
    assert decode_frame(frame) == message


@given(st.lists(messages, min_size=1, max_size=5), st.integers(1, 50))
def test_decoder_reassembles_frames_fed_in_any_pieces(batch: list[Message], piece: int):
    stream = b"".join(message.encode() for message in batch)
    decoder = FrameDecoder()
    decoded: list[Message] = []
    for start in range(0, len(stream), piece):
        decoded += decoder.feed(stream[start:start + piece])
    assert decoded == batch
    assert decoder.buffered_bytes == 0


@given(wire_errors)
def test_error_struct_round_trip(error: WireError):
    reader = XdrReader(error.encode())
    assert WireError.decode(reader) == error
    reader.expect_end()


def test_error_struct_layout_of_a_recorded_busy_reply():
    """The recorded virtlockd busy error (spec §3.3), field by field."""
    error = WireError(code=87, domain=51, message="resource busy: Lockspace resource 'key1' is locked",
                      str1="resource busy: %s", str2="Lockspace resource 'key1' is locked")
    encoded = error.encode()
    assert encoded[:8] == bytes.fromhex("00000057 00000033")
    assert encoded[-12:] == bytes.fromhex("ffffffff ffffffff 00000000")  # int1, int2, net absent
    assert Message(Header(0x0EA7BEEF, 1, 6, 1, 1, 1), encoded).encode()[:4] == (192).to_bytes(4, "big")


@pytest.mark.parametrize("length", [0, 3, 4, 27, MAX_FRAME_BYTES + 1, 2**32 - 1])
def test_bad_length_words_break_the_stream(length: int):
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="frame length"):
        decoder.feed(length.to_bytes(4, "big") + bytes(24))
    with pytest.raises(FrameError, match="close the connection"):
        decoder.feed(ping().encode())


def test_length_is_checked_before_the_frame_arrives():
    """A 32 MiB + 5 claim is refused on its length word alone; nothing is buffered for it."""
    with pytest.raises(FrameError):
        FrameDecoder().feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    small = FrameDecoder(max_frame_bytes=64)
    with pytest.raises(FrameError):
        small.feed((65).to_bytes(4, "big"))


def test_decode_frame_wants_exactly_one_frame():
    frame = ping().encode()
    with pytest.raises(FrameError):
        decode_frame(frame + frame)
    with pytest.raises(FrameError):
        decode_frame(frame[:-1])


def test_keepalive():
    assert ping().encode().hex() == "0000001c6b656570000000010000000100000002" + "0" * 16
    pong = keepalive_answer(ping().header)
    assert pong is not None and pong.encode().hex() == "0000001c6b656570000000010000000200000002" + "0" * 16
    assert keepalive_answer(pong.header) is None  # a PONG is never answered
    numbered = keepalive_answer(Header(0x6B656570, 1, 1, MessageType.MESSAGE, 7, 0))
    assert numbered is not None and numbered.header.serial == 0
    call_typed = Header(0x6B656570, 1, 1, MessageType.CALL, 0, 0)
    assert keepalive_answer(call_typed) is None
