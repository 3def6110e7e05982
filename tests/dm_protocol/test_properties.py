"""Property tests: codec and JSON round trips, totality of decode, and stream framing."""

from __future__ import annotations

import dataclasses
import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    DecodeError,
    DecodeReason,
    DmError,
    Frame,
    FrameReader,
    FramingError,
    HotAddRequest,
    HotAddResponse,
    HotRemoveRequest,
    HotRemoveResponse,
    InfoMessage,
    Message,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
    decode,
    dm_message_bytes,
    encode,
    frame,
    from_json_dict,
    to_json_dict,
)

u4 = st.integers(0, 15)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
flag = st.booleans()
page_range = st.tuples(st.integers(0, 2**40 - 1), st.integers(0, 2**24 - 1))
# Mostly small lists, sometimes past 128 so both range-decoding paths of the codec are exercised.
page_ranges = st.one_of(st.lists(page_range, max_size=12), st.lists(page_range, min_size=120, max_size=300)).map(tuple)

MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(DmError, trans_id=u32, data=st.binary(max_size=64)),
    st.builds(VersionRequest, trans_id=u32, version=u32, is_last_attempt=flag),
    st.builds(VersionResponse, trans_id=u32, is_accepted=flag),
    st.builds(
        CapabilitiesReport,
        trans_id=u32,
        balloon=flag,
        hot_add=flag,
        hot_add_alignment=u4,
        hot_remove=flag,
        min_page_cnt=u64,
        max_page_number=u64,
    ),
    st.builds(CapabilitiesResponse, trans_id=u32, is_accepted=flag, hot_remove=flag, suppress_pressure_reports=flag),
    st.builds(
        StatusReport,
        trans_id=u32,
        num_avail=u64,
        num_committed=u64,
        page_file_size=u64,
        zero_free=u64,
        page_file_writes=u32,
        io_diff=u32,
    ),
    st.builds(BalloonRequest, trans_id=u32, num_pages=u32),
    st.builds(BalloonResponse, trans_id=u32, more_pages=flag, ranges=page_ranges),
    st.builds(UnballoonRequest, trans_id=u32, more_pages=flag, ranges=page_ranges),
    st.builds(UnballoonResponse, trans_id=u32),
    st.builds(HotAddRequest, trans_id=u32, range=page_range, region=st.none() | page_range),
    st.builds(HotAddResponse, trans_id=u32, page_count=u32, result=u32),
    st.builds(InfoMessage, trans_id=u32, info_type=u32, data=st.binary(max_size=64)),
    st.builds(HotRemoveRequest, trans_id=u32, virtual_node=u32, page_count=u32, qos_flags=u32),
    st.builds(HotRemoveResponse, trans_id=u32, result=u32, more_pages=flag, ranges=page_ranges),
)


@given(MESSAGES)
def test_decode_inverts_encode(msg: Message) -> None:
    wire = encode(msg)
    assert struct.unpack_from("<HH", wire) == (msg.TYPE, len(wire))
    assert decode(wire) == msg


@given(MESSAGES)
def test_json_round_trip(msg: Message) -> None:
    assert from_json_dict(to_json_dict(msg)) == msg


@st.composite
def plausible_bytes(draw: st.DrawFn) -> bytes:
    """Bytes that get past the first checks often: a real message, then mutated."""
    wire = bytearray(encode(draw(MESSAGES)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["flip", "truncate", "extend", "resize", "retype"]))
        if action == "flip" and wire:
            index = draw(st.integers(0, len(wire) - 1))
            wire[index] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del wire[draw(st.integers(0, len(wire))) :]
        elif action == "extend":
            wire += draw(st.binary(max_size=24))
        elif action == "resize" and len(wire) >= 4:
            wire[2:4] = len(wire).to_bytes(2, "little")  # make the header size agree again
        elif action == "retype" and len(wire) >= 2:
            wire[0:2] = draw(st.integers(0, 16)).to_bytes(2, "little")
    return bytes(wire)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=64), plausible_bytes()))
def test_decode_is_total_and_anomalies_mean_not_canonical(data: bytes) -> None:
    try:
        msg = decode(data)
    except DecodeError as exc:
        assert isinstance(exc.reason, DecodeReason)
        assert str(exc).startswith(exc.reason.value)
        return
    # A message decodes without anomalies exactly when it re-encodes to the same bytes.
    assert (encode(msg) == data) == (msg.anomalies == ())
    assert decode(encode(msg)) == dataclasses.replace(msg, anomalies=())


@given(plausible_bytes())
def test_decode_accepts_bytearray_and_memoryview_alike(data: bytes) -> None:
    outcomes = []
    for wrapped in (data, bytearray(data), memoryview(data)):
        try:
            outcomes.append(decode(wrapped))
        except DecodeError as exc:
            outcomes.append(exc.reason)  # type: ignore[arg-type]
    assert outcomes[0] == outcomes[1] == outcomes[2]


packet_spec = st.tuples(
    st.binary(max_size=80),  # payload
    st.integers(0, 2**64 - 1),  # VMBus trans_id
    st.integers(0, 0xFFFF),  # flags
    st.sampled_from([6, 6, 6, 6, 11, 0]),  # packet type; non-6 ones must come back flagged
)


@given(
    packets=st.lists(packet_spec, max_size=12),
    trailer=st.booleans(),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
)
def test_reader_returns_exactly_the_frames_whatever_the_cuts(
    packets: list[tuple[bytes, int, int, int]], trailer: bool, cuts: list[int]
) -> None:
    stream = bytearray()
    expected = []
    for index, (payload, trans_id, flags, packet_type) in enumerate(packets):
        ring_offset = index if trailer else None
        wire = bytearray(frame(payload, trans_id=trans_id, flags=flags, trailer_offset=ring_offset))
        wire[0:2] = packet_type.to_bytes(2, "little")
        stream += wire
        padded = payload + bytes(-len(payload) % 8)
        error = None if packet_type == 6 else DecodeReason.BAD_PACKET_TYPE
        expected.append(Frame(padded, packet_type, flags, trans_id, error, ring_offset))
    reader = FrameReader(trailer=trailer)
    got: list[Frame] = []
    previous = 0
    for cut in sorted({c for c in cuts if c <= len(stream)} | {len(stream)}):
        got += reader.feed(bytes(stream[previous:cut]))
        previous = cut
    assert got == expected
    assert reader.pending_bytes == 0


@given(MESSAGES, st.integers(0, 7))
def test_framed_messages_survive_dm_message_bytes(msg: Message, split: int) -> None:
    wire = encode(msg)
    assume(len(wire) <= 4096)
    packet = frame(wire)
    reader = FrameReader()
    frames = reader.feed(packet[:split]) + reader.feed(packet[split:])
    assert [decode(dm_message_bytes(f.payload)) for f in frames] == [msg]


@settings(max_examples=300)
@given(st.binary(max_size=200), st.booleans())
def test_reader_on_garbage_only_raises_decode_errors(garbage: bytes, trailer: bool) -> None:
    reader = FrameReader(trailer=trailer)
    try:
        frames = reader.feed(garbage)
    except FramingError as exc:
        assert exc.reason in (DecodeReason.BAD_PACKET_LENGTH, DecodeReason.FRAME_TOO_LARGE)
        return
    assert reader.pending_bytes <= len(garbage)
    for got in frames:
        assert got.error in (None, DecodeReason.BAD_PACKET_TYPE, DecodeReason.BAD_PACKET_OFFSET)
