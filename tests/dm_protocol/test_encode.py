"""Encoding: field extremes, range extremes, and every EncodeError."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest

from services.dm_protocol import (
    MESSAGE_CLASSES,
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    DecodeReason,
    DmError,
    EncodeError,
    HotAddRequest,
    HotRemoveResponse,
    InfoMessage,
    MessageType,
    StatusReport,
    UnballoonRequest,
    VersionRequest,
    VersionResponse,
    decode,
    encode,
)

MAX_START = 2**40 - 1
MAX_COUNT = 2**24 - 1


def test_extreme_range_is_all_ones_on_the_wire() -> None:
    msg = UnballoonRequest(more_pages=True, ranges=((MAX_START, MAX_COUNT),))
    wire = encode(msg)
    assert wire[16:] == b"\xff" * 8
    assert decode(wire) == msg


def test_extreme_start_and_count_do_not_bleed_into_each_other() -> None:
    msg = BalloonResponse(more_pages=False, ranges=((MAX_START, 0), (0, MAX_COUNT)))
    wire = encode(msg)
    assert wire[16:].hex() == "ffffffffff000000" + "0000000000ffffff"
    assert decode(wire) == msg


@pytest.mark.parametrize("cls", [BalloonResponse, UnballoonRequest])
def test_zero_ranges(cls: type) -> None:
    msg = cls(more_pages=True, ranges=())
    wire = encode(msg)
    assert len(wire) == 16
    assert decode(wire) == msg


@pytest.mark.parametrize("count", [127, 128, 129, 509, 510])
def test_full_size_messages(count: int) -> None:
    # 510 ranges make exactly the 4096-byte payload Linux can receive; 127/128/129 straddle the
    # point where decode switches from the comprehension to slice de-interleaving.
    ranges = tuple((MAX_START - i, (i * 7919) % (MAX_COUNT + 1)) for i in range(count))
    msg = BalloonResponse(trans_id=0xFFFFFFFF, more_pages=True, ranges=ranges)
    wire = encode(msg)
    assert len(wire) == 16 + 8 * count
    assert struct.unpack_from("<HHII", wire) == (7, 16 + 8 * count, 0xFFFFFFFF, 0)
    assert struct.unpack_from("<I", wire, 12)[0] == 1 | count << 1
    assert decode(wire) == msg


def test_510_ranges_is_4096_bytes() -> None:
    assert len(encode(UnballoonRequest(more_pages=False, ranges=((1, 1),) * 510))) == 4096
    assert len(encode(HotRemoveResponse(result=0, more_pages=False, ranges=((1, 1),) * 509))) == 4096


def test_largest_message_the_u16_size_allows() -> None:
    ranges = ((5, 1),) * 8189  # 16 + 8 * 8189 = 65528
    assert decode(encode(BalloonResponse(more_pages=False, ranges=ranges))).ranges == ranges  # type: ignore[union-attr]
    with pytest.raises(EncodeError) as info:
        encode(BalloonResponse(more_pages=False, ranges=(*ranges, (5, 1))))
    assert info.value.reason is DecodeReason.FIELD_OUT_OF_BOUNDS
    assert len(encode(DmError(data=bytes(65527)))) == 65535
    with pytest.raises(EncodeError):
        encode(DmError(data=bytes(65528)))
    with pytest.raises(EncodeError):
        encode(InfoMessage(info_type=0, data=bytes(65535 - 23)))


@pytest.mark.parametrize(
    "bad_range",
    [(2**40, 1), (0, 2**24), (-1, 1), (1, -1), (2**64, 0), (1.0, 1), ("1", 1), (1, 2, 3), (1,), None],
)
def test_out_of_bounds_ranges(bad_range: object) -> None:
    for msg in (
        BalloonResponse(more_pages=False, ranges=((1, 1), bad_range)),  # type: ignore[arg-type]
        UnballoonRequest(more_pages=False, ranges=(bad_range,)),  # type: ignore[arg-type]
        HotRemoveResponse(result=0, more_pages=False, ranges=(bad_range,)),  # type: ignore[arg-type]
        HotAddRequest(range=bad_range),  # type: ignore[arg-type]
        # region=None is the valid 16-byte form, so None is only a bad *range*
        *([] if bad_range is None else [HotAddRequest(range=(0, 1), region=bad_range)]),  # type: ignore[arg-type]
    ):
        with pytest.raises(EncodeError) as info:
            encode(msg)  # type: ignore[arg-type]
        assert info.value.reason is DecodeReason.RANGE_OUT_OF_BOUNDS
        assert str(info.value).startswith("RANGE_OUT_OF_BOUNDS")


def test_ranges_error_names_the_offending_index() -> None:
    with pytest.raises(EncodeError, match=r"ranges\[2\]"):
        encode(BalloonResponse(more_pages=False, ranges=((1, 1), (2, 2), (2**40, 1))))


@pytest.mark.parametrize(
    "msg",
    [
        VersionRequest(trans_id=2**32, version=1),
        VersionRequest(trans_id=-1, version=1),
        VersionRequest(version=2**32),
        VersionRequest(version=-1),
        VersionRequest(version="1"),  # type: ignore[arg-type]
        VersionRequest(version=1, is_last_attempt=2),  # type: ignore[arg-type]
        VersionResponse(is_accepted=None),  # type: ignore[arg-type]
        CapabilitiesReport(balloon=True, hot_add=True, hot_add_alignment=16),
        CapabilitiesReport(balloon=True, hot_add=True, hot_add_alignment=7, max_page_number=2**64),
        CapabilitiesResponse(is_accepted=True, suppress_pressure_reports="yes"),  # type: ignore[arg-type]
        StatusReport(num_avail=2**64, num_committed=0),
        StatusReport(num_avail=0, num_committed=0, io_diff=2**32),
        BalloonRequest(num_pages=2**32),
        InfoMessage(info_type=2**32, data=b""),
        InfoMessage(info_type=0, data="00"),  # type: ignore[arg-type]
    ],
)
def test_out_of_bounds_fields(msg: object) -> None:
    with pytest.raises(EncodeError) as info:
        encode(msg)  # type: ignore[arg-type]
    assert info.value.reason is DecodeReason.FIELD_OUT_OF_BOUNDS


def test_field_extremes_round_trip() -> None:
    for msg in (
        VersionRequest(trans_id=2**32 - 1, version=2**32 - 1, is_last_attempt=True),
        CapabilitiesReport(
            balloon=False,
            hot_add=False,
            hot_add_alignment=15,
            hot_remove=True,
            min_page_cnt=2**64 - 1,
            max_page_number=0,
        ),
        CapabilitiesResponse(is_accepted=False, hot_remove=True, suppress_pressure_reports=True),
        StatusReport(
            num_avail=2**64 - 1,
            num_committed=2**64 - 1,
            page_file_size=2**64 - 1,
            zero_free=2**64 - 1,
            page_file_writes=2**32 - 1,
            io_diff=2**32 - 1,
        ),
    ):
        assert decode(encode(msg)) == msg


def test_capability_bits_land_where_the_spec_says() -> None:
    caps = CapabilitiesReport(balloon=True, hot_add=False, hot_add_alignment=0b1010, hot_remove=True)
    assert struct.unpack_from("<Q", encode(caps), 8)[0] == 1 | 0b1010 << 2 | 1 << 6
    resp = CapabilitiesResponse(is_accepted=False, hot_remove=False, suppress_pressure_reports=True)
    assert struct.unpack_from("<Q", encode(resp), 8)[0] == 0b100


def test_anomalies_are_not_encoded() -> None:
    plain = BalloonRequest(num_pages=3)
    flagged = dataclasses.replace(plain, anomalies=(DecodeReason.RESERVED_BITS_SET,))
    assert encode(flagged) == encode(plain)


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        encode(object())  # type: ignore[arg-type]


def test_every_type_has_a_class_and_round_trips_its_minimal_instance() -> None:
    minimal: dict[str, dict[str, Any]] = {
        "DmError": {},
        "VersionRequest": {"version": 3},
        "VersionResponse": {"is_accepted": True},
        "CapabilitiesReport": {"balloon": True, "hot_add": True, "hot_add_alignment": 7},
        "CapabilitiesResponse": {"is_accepted": True},
        "StatusReport": {"num_avail": 1, "num_committed": 2},
        "BalloonRequest": {"num_pages": 1},
        "BalloonResponse": {"more_pages": False, "ranges": ()},
        "UnballoonRequest": {"more_pages": False, "ranges": ()},
        "UnballoonResponse": {},
        "HotAddRequest": {"range": (1, 1)},
        "HotAddResponse": {"page_count": 1, "result": 1},
        "InfoMessage": {"info_type": 0, "data": b""},
        "HotRemoveRequest": {"virtual_node": 0, "page_count": 1, "qos_flags": 3},
        "HotRemoveResponse": {"result": 1, "more_pages": False, "ranges": ()},
    }
    assert set(MESSAGE_CLASSES) == set(MessageType)
    for msg_type, cls in MESSAGE_CLASSES.items():
        assert cls.TYPE is msg_type
        msg = cls(trans_id=77, **minimal[cls.__name__])
        wire = encode(msg)
        assert struct.unpack_from("<HHI", wire) == (msg_type, len(wire), 77)
        assert decode(wire) == msg


def test_messages_are_frozen_and_hashable() -> None:
    msg = BalloonResponse(more_pages=True, ranges=((1, 2),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.more_pages = False  # type: ignore[misc]
    assert len({msg, BalloonResponse(more_pages=True, ranges=((1, 2),))}) == 1
    assert msg != UnballoonRequest(more_pages=True, ranges=((1, 2),))
