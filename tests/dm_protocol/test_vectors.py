"""The spec's concrete byte strings (guest-behaviour.md 1.6 and 10), both directions."""

from __future__ import annotations

import pytest

from services.dm_protocol import (
    BalloonResponse,
    CapabilitiesReport,
    FrameReader,
    HotAddRequest,
    HotAddResponse,
    Message,
    StatusReport,
    UnballoonRequest,
    VersionRequest,
    decode,
    dm_message_bytes,
    encode,
    frame,
)

VECTORS: list[tuple[str, str, Message]] = [
    (
        "V1",
        "01001000050000000000020000000000",
        VersionRequest(trans_id=5, version=0x00020000, is_last_attempt=False),
    ),
    (
        "V2",
        "03002000060000001f000000000000000000000000000000ffffffffffffffff",
        CapabilitiesReport(
            trans_id=6,
            balloon=True,
            hot_add=True,
            hot_add_alignment=7,
            hot_remove=False,
            min_page_cnt=0,
            max_page_number=0xFFFFFFFFFFFFFFFF,
        ),
    ),
    (
        "V3",
        "0500300007000000052d0b0000000000d3de050000000000000000000000000000000000000000000000000000000000",
        StatusReport(trans_id=7, num_avail=732421, num_committed=384723),
    ),
    (
        "V4",
        "0700200008000000000000000500000000000400000002000002040000000200",
        BalloonResponse(trans_id=8, more_pages=True, ranges=((0x40000, 512), (0x40200, 512))),
    ),
    (
        "V5",
        "080018000000000000000000010000000000040000000200",
        UnballoonRequest(trans_id=0, more_pages=False, ranges=((0x40000, 512),)),
    ),
    (
        "V6",
        "0a001000000000000000100000008000",
        HotAddRequest(range=(0x100000, 0x8000), region=None),
    ),
    (
        "V7",
        "0b0010000b0000000080000001000000",
        HotAddResponse(trans_id=11, page_count=0x8000, result=1),
    ),
]


@pytest.mark.parametrize(("name", "hex_bytes", "message"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vector_decodes_to_documented_fields(name: str, hex_bytes: str, message: Message) -> None:
    decoded = decode(bytes.fromhex(hex_bytes))
    assert decoded == message
    assert decoded.anomalies == ()
    assert type(decoded) is type(message)


@pytest.mark.parametrize(("name", "hex_bytes", "message"), VECTORS, ids=[v[0] for v in VECTORS])
def test_vector_encodes_to_documented_hex(name: str, hex_bytes: str, message: Message) -> None:
    assert encode(message).hex() == hex_bytes


def test_v2_field_values_spelled_out() -> None:
    msg = decode(bytes.fromhex(VECTORS[1][1]))
    assert isinstance(msg, CapabilitiesReport)
    assert (msg.balloon, msg.hot_add, msg.hot_add_alignment, msg.hot_remove) == (True, True, 7, False)
    assert msg.max_page_number == 2**64 - 1


def test_page_range_example_of_section_1_3() -> None:
    # start 0x40000, count 512 -> bytes 00 00 04 00 00 00 02 00
    wire = encode(UnballoonRequest(more_pages=False, ranges=((0x40000, 512),)))
    assert wire[16:].hex() == "0000040000000200"


FIRST_PACKET = "06000200040000000000000000000000" + "01001000010000000000020000000000"


def test_framing_example_without_trailer() -> None:
    payload = encode(VersionRequest(trans_id=1, version=0x00020000))
    assert frame(payload).hex() == FIRST_PACKET
    (packet,) = FrameReader().feed(bytes.fromhex(FIRST_PACKET))
    assert (packet.packet_type, packet.flags, packet.trans_id, packet.error) == (6, 0, 0, None)
    assert decode(dm_message_bytes(packet.payload)) == VersionRequest(trans_id=1, version=0x00020000)


def test_framing_example_with_trailer() -> None:
    payload = encode(VersionRequest(trans_id=1, version=0x00020000))
    wire = frame(payload, trailer_offset=0x1230)
    assert wire.hex() == FIRST_PACKET + "0000000030120000"
    reader = FrameReader(trailer=True)
    (packet,) = reader.feed(wire)
    assert packet.trailer_offset == 0x1230
    assert packet.payload == payload
    assert reader.pending_bytes == 0
