"""VMBus framing: packet layout, the reader's error handling, buffering, ``dm_message_bytes``."""

from __future__ import annotations

import struct

import pytest

from services.dm_protocol import (
    DESCRIPTOR_SIZE,
    MAX_DM_PAYLOAD,
    VM_PKT_DATA_INBAND,
    BalloonResponse,
    DecodeError,
    DecodeReason,
    EncodeError,
    Frame,
    FrameReader,
    FramingError,
    UnballoonResponse,
    decode,
    dm_message_bytes,
    encode,
    frame,
)

R = DecodeReason


def descriptor(packet_type: int = 6, offset8: int = 2, len8: int = 2, flags: int = 0, trans_id: int = 0) -> bytes:
    return struct.pack("<HHHHQ", packet_type, offset8, len8, flags, trans_id)


def test_constants() -> None:
    assert (VM_PKT_DATA_INBAND, DESCRIPTOR_SIZE, MAX_DM_PAYLOAD) == (6, 16, 4096)


def test_frame_pads_to_8_and_counts_len8_with_descriptor() -> None:
    wire = frame(b"\x01\x02\x03", trans_id=0x1122334455667788, flags=1)
    assert len(wire) == 24
    assert struct.unpack_from("<HHHHQ", wire) == (6, 2, 3, 1, 0x1122334455667788)
    assert wire[16:] == b"\x01\x02\x03" + bytes(5)


def test_frame_rejects_what_the_descriptor_cannot_hold() -> None:
    for kwargs in ({"flags": 0x10000}, {"trans_id": 2**64}, {"trailer_offset": 2**32}, {"flags": -1}):
        with pytest.raises(EncodeError) as info:
            frame(b"", **kwargs)
        assert info.value.reason is R.FIELD_OUT_OF_BOUNDS
    with pytest.raises(EncodeError):
        frame(bytes(0xFFFF * 8))  # len8 would overflow the u16


def test_reader_returns_descriptor_fields() -> None:
    payload = encode(UnballoonResponse(trans_id=3))
    (got,) = FrameReader().feed(frame(payload, trans_id=99, flags=1))
    assert got == Frame(payload=payload, packet_type=6, flags=1, trans_id=99)


def test_bad_packet_type_is_reported_and_skipped() -> None:
    good = frame(encode(UnballoonResponse(trans_id=1)))
    bad = bytearray(frame(encode(UnballoonResponse(trans_id=2))))
    bad[0] = 11  # a completion packet
    frames = FrameReader().feed(good + bytes(bad) + good)
    assert [f.error for f in frames] == [None, R.BAD_PACKET_TYPE, None]
    assert frames[1].packet_type == 11
    assert frames[1].payload == encode(UnballoonResponse(trans_id=2))


@pytest.mark.parametrize("offset8", [0, 1, 5, 0xFFFF])
def test_bad_offset_is_reported_and_skipped_with_linux_default_offset(offset8: int) -> None:
    body = bytes(range(16))
    wire = descriptor(offset8=offset8, len8=4) + body
    reader = FrameReader()
    frames = reader.feed(wire + frame(b"\x07" * 8))
    assert [f.error for f in frames] == [R.BAD_PACKET_OFFSET, None]
    assert frames[0].payload == body  # Linux forces the offset to 16
    assert frames[1].payload == b"\x07" * 8
    assert reader.pending_bytes == 0


def test_larger_valid_offset_skips_extra_descriptor_bytes() -> None:
    wire = descriptor(offset8=3, len8=4) + b"\xee" * 8 + b"\x01" * 8
    empty = descriptor(offset8=4, len8=4) + b"\xee" * 16  # offset == length: valid, empty payload
    got = FrameReader().feed(wire + empty)
    assert [(f.error, f.payload) for f in got] == [(None, b"\x01" * 8), (None, b"")]


@pytest.mark.parametrize("len8", [0, 1])
def test_length_below_descriptor_breaks_the_stream(len8: int) -> None:
    reader = FrameReader()
    good = frame(b"\x01" * 8)
    with pytest.raises(FramingError) as info:
        reader.feed(good + descriptor(len8=len8) + good)
    assert info.value.reason is R.BAD_PACKET_LENGTH
    assert isinstance(info.value, DecodeError)
    assert [f.payload for f in info.value.frames] == [b"\x01" * 8]  # what came before is kept
    with pytest.raises(DecodeError) as again:
        reader.feed(good)
    assert again.value.reason is R.BAD_PACKET_LENGTH
    assert reader.pending_bytes == 0


def test_too_large_is_detected_from_the_descriptor_alone() -> None:
    # len8 announces 16 + 4104 bytes; only the descriptor has arrived.
    reader = FrameReader()
    with pytest.raises(FramingError) as info:
        reader.feed(descriptor(len8=(16 + 4104) // 8))
    assert info.value.reason is R.FRAME_TOO_LARGE
    with pytest.raises(DecodeError):
        reader.feed(b"")


def test_max_payload_is_inclusive_and_configurable() -> None:
    assert FrameReader().feed(frame(bytes(4096)))[0].payload == bytes(4096)
    with pytest.raises(DecodeError) as info:
        FrameReader(max_payload=64).feed(frame(bytes(72)))
    assert info.value.reason is R.FRAME_TOO_LARGE
    assert len(FrameReader(max_payload=8192).feed(frame(bytes(8192)))) == 1


def test_byte_at_a_time_and_pending_bytes() -> None:
    packets = [
        frame(encode(BalloonResponse(trans_id=i, more_pages=False, ranges=((i, 1),) * i)), trailer_offset=i * 64)
        for i in range(5)
    ]
    stream = b"".join(packets)
    reader = FrameReader(trailer=True)
    got: list[Frame] = []
    consumed = 0
    for i in range(len(stream)):
        out = reader.feed(stream[i : i + 1])
        got += out
        consumed += sum(len(p) for p in packets[len(got) - len(out) : len(got)])
        assert reader.pending_bytes == i + 1 - consumed  # buffered = received - returned
    assert [decode(dm_message_bytes(f.payload)).trans_id for f in got] == list(range(5))
    assert [f.trailer_offset for f in got] == [i * 64 for i in range(5)]
    assert reader.pending_bytes == 0


def test_buffer_never_holds_more_than_one_packet_plus_the_last_read() -> None:
    packet = frame(bytes(4096))
    reader = FrameReader()
    for _ in range(3):
        for start in range(0, len(packet), 1000):
            reader.feed(packet[start : start + 1000])
            assert reader.pending_bytes < len(packet)


def test_trailer_is_not_counted_in_len8() -> None:
    wire = frame(b"\x01" * 8, trailer_offset=5)
    assert struct.unpack_from("<H", wire, 4)[0] * 8 == len(wire) - 8
    reader = FrameReader(trailer=True)
    assert reader.feed(wire[:-1]) == []
    assert reader.pending_bytes == len(wire) - 1
    assert reader.feed(wire[-1:])[0].trailer_offset == 5


def test_dm_message_bytes_trims_only_zero_padding_under_8() -> None:
    msg = struct.pack("<HHI", 12, 12, 0) + b"\xaa" * 4  # a 12-byte message, 4 bytes of padding
    assert dm_message_bytes(msg + bytes(4)) == msg
    assert dm_message_bytes(msg + b"\x00\x00\x00\x01") == msg + b"\x00\x00\x00\x01"  # not padding
    exact = encode(UnballoonResponse())
    assert dm_message_bytes(exact + bytes(8)) == exact + bytes(8)  # 8 or more is not padding
    assert dm_message_bytes(exact) == exact
    assert dm_message_bytes(b"\x01\x02") == b"\x01\x02"
    claims_more = struct.pack("<HHI", 9, 64, 0)
    assert dm_message_bytes(claims_more) == claims_more  # decode reports SIZE_MISMATCH itself


def test_padding_left_in_is_a_size_mismatch_for_decode() -> None:
    (got,) = FrameReader().feed(frame(struct.pack("<HHI", 0, 12, 0) + b"\x01\x02\x03\x04"))
    with pytest.raises(DecodeError) as info:
        decode(got.payload)
    assert info.value.reason is R.SIZE_MISMATCH
    assert decode(dm_message_bytes(got.payload)).data == b"\x01\x02\x03\x04"  # type: ignore[union-attr]
