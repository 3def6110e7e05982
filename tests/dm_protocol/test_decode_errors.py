"""Every decode reason code, the order of the checks, and reserved-bit anomalies."""

from __future__ import annotations

import dataclasses
import pickle
import struct

import pytest

from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    DecodeError,
    DecodeReason,
    DmError,
    EncodeError,
    HotAddRequest,
    HotRemoveRequest,
    HotRemoveResponse,
    InfoMessage,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
    decode,
    encode,
)

R = DecodeReason


def msg(msg_type: int, body: bytes = b"", *, size: int | None = None, trans_id: int = 0) -> bytes:
    """A DM message with the given body; ``size`` defaults to the true length."""
    total = 8 + len(body)
    return struct.pack("<HHI", msg_type, total if size is None else size, trans_id) + body


def reason_of(data: bytes) -> DecodeReason:
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value.reason


# --------------------------------------------------------------------------------- TRUNCATED


@pytest.mark.parametrize("length", range(8))
def test_shorter_than_header_is_truncated(length: int) -> None:
    assert reason_of(bytes.fromhex("0100100005000000")[:length]) is R.TRUNCATED


@pytest.mark.parametrize(
    ("msg_type", "body_len"),
    [
        (1, 4),  # VERSION_REQUEST needs 16
        (2, 0),
        (3, 16),  # CAPABILITIES_REPORT needs 32
        (4, 7),
        (5, 32),  # STATUS_REPORT needs 48
        (6, 4),
        (7, 4),  # BALLOON_RESPONSE needs its 16-byte fixed part
        (8, 0),
        (10, 0),  # HOT_ADD_REQUEST needs 16
        (11, 4),
        (12, 8),  # INFO_MESSAGE needs 24
        (13, 8),  # HOT_REMOVE_REQUEST needs 24
        (14, 8),  # HOT_REMOVE_RESPONSE needs 24
    ],
)
def test_shorter_than_fixed_struct_is_truncated(msg_type: int, body_len: int) -> None:
    assert reason_of(msg(msg_type, bytes(body_len))) is R.TRUNCATED


# ------------------------------------------------------------------------------ UNKNOWN_TYPE


@pytest.mark.parametrize("msg_type", [15, 16, 0x100, 0xFFFF])
def test_unknown_type(msg_type: int) -> None:
    assert reason_of(msg(msg_type, bytes(8))) is R.UNKNOWN_TYPE


def test_unknown_type_is_checked_before_size() -> None:
    assert reason_of(msg(15, bytes(8), size=3)) is R.UNKNOWN_TYPE


# ----------------------------------------------------------------------------- SIZE_MISMATCH


@pytest.mark.parametrize("size", [0, 8, 15, 17, 0xFFFF])
def test_header_size_disagreeing_with_length(size: int) -> None:
    assert reason_of(msg(1, bytes(8), size=size)) is R.SIZE_MISMATCH


def test_size_is_checked_before_the_fixed_struct() -> None:
    # An 8-byte VERSION_REQUEST claiming 16 bytes: the lie about the size is what gets reported.
    assert reason_of(msg(1, size=16)) is R.SIZE_MISMATCH


@pytest.mark.parametrize(
    ("msg_type", "fixed"), [(1, 16), (2, 16), (3, 32), (4, 16), (5, 48), (6, 16), (9, 8), (11, 16), (13, 24)]
)
def test_fixed_size_message_with_extra_bytes(msg_type: int, fixed: int) -> None:
    assert reason_of(msg(msg_type, bytes(fixed - 8 + 8))) is R.SIZE_MISMATCH
    assert reason_of(msg(msg_type, bytes(fixed - 8 + 1))) is R.SIZE_MISMATCH


@pytest.mark.parametrize("size", [17, 20, 23, 25, 32])
def test_hot_add_request_must_be_16_or_24_bytes(size: int) -> None:
    assert reason_of(msg(10, bytes(size - 8))) is R.SIZE_MISMATCH


def test_info_message_info_size_must_cover_the_rest() -> None:
    good = msg(12, struct.pack("<IIII", 0, 16, 0, 8) + (1234).to_bytes(8, "little"))
    assert decode(good) == InfoMessage(info_type=0, data=(1234).to_bytes(8, "little"))
    bad_info_size = msg(12, struct.pack("<IIII", 0, 17, 0, 8) + bytes(8))
    assert reason_of(bad_info_size) is R.SIZE_MISMATCH
    bad_data_size = msg(12, struct.pack("<IIII", 0, 16, 0, 4) + bytes(8))
    assert reason_of(bad_data_size) is R.SIZE_MISMATCH
    huge_data_size = msg(12, struct.pack("<IIII", 0, 16, 0, 0xFFFFFFFF) + bytes(8))
    assert reason_of(huge_data_size) is R.SIZE_MISMATCH


# ---------------------------------------------------------------------- RANGE_COUNT_MISMATCH


@pytest.mark.parametrize(("count", "present"), [(3, 2), (0, 1), (1, 0), (2**31 - 1, 1)])
def test_balloon_response_count_disagrees(count: int, present: int) -> None:
    body = struct.pack("<II", 0, count << 1) + bytes(8 * present)
    assert reason_of(msg(7, body)) is R.RANGE_COUNT_MISMATCH


@pytest.mark.parametrize(("count", "present"), [(2, 1), (0, 1), (2**32 - 1, 0)])
def test_unballoon_request_count_disagrees(count: int, present: int) -> None:
    assert reason_of(msg(8, struct.pack("<II", 0, count) + bytes(8 * present))) is R.RANGE_COUNT_MISMATCH


def test_hot_remove_response_count_disagrees() -> None:
    assert reason_of(msg(14, struct.pack("<IIQ", 0, 2, 0) + bytes(8))) is R.RANGE_COUNT_MISMATCH


def test_partial_trailing_range_is_a_count_mismatch() -> None:
    # 1 range announced, 1.5 ranges present: size agrees with the length, count does not.
    assert reason_of(msg(7, struct.pack("<II", 0, 2) + bytes(12))) is R.RANGE_COUNT_MISMATCH


# ------------------------------------------------------------------------- RESERVED_BITS_SET

RESERVED_CASES = [
    (
        "version request @12 bit 1",
        msg(1, struct.pack("<II", 0x20000, 0b11)),
        VersionRequest(version=0x20000, is_last_attempt=True),
    ),
    ("version response bit 63", msg(2, struct.pack("<Q", 1 | 1 << 63)), VersionResponse(is_accepted=True)),
    (
        "caps report bit 7",
        msg(3, struct.pack("<QQQ", 0x1F | 0x80, 0, 5)),
        CapabilitiesReport(balloon=True, hot_add=True, hot_add_alignment=7, max_page_number=5),
    ),
    ("caps response bit 3", msg(4, struct.pack("<Q", 0b1001)), CapabilitiesResponse(is_accepted=True)),
    ("balloon request reserved u32", msg(6, struct.pack("<II", 7, 1)), BalloonRequest(num_pages=7)),
    ("balloon response @8", msg(7, struct.pack("<II", 0xFF, 0)), BalloonResponse(more_pages=False, ranges=())),
    ("unballoon request @8 bit 1", msg(8, struct.pack("<II", 0b10, 0)), UnballoonRequest(more_pages=False, ranges=())),
    ("info message reserved", msg(12, struct.pack("<IIII", 9, 8, 3, 0)), InfoMessage(info_type=3, data=b"")),
    (
        "hot remove request @20",
        msg(13, struct.pack("<IIII", 1, 2, 3, 4)),
        HotRemoveRequest(virtual_node=1, page_count=2, qos_flags=3),
    ),
    (
        "hot remove response bit 1",
        msg(14, struct.pack("<IIQ", 0, 0, 0b11)),
        HotRemoveResponse(result=0, more_pages=True, ranges=()),
    ),
]


@pytest.mark.parametrize(("name", "data", "fields"), RESERVED_CASES, ids=[c[0] for c in RESERVED_CASES])
def test_reserved_bits_are_flagged_not_rejected(name: str, data: bytes, fields: object) -> None:
    decoded = decode(data)
    assert decoded.anomalies == (R.RESERVED_BITS_SET,)
    assert decoded == dataclasses.replace(fields, anomalies=(R.RESERVED_BITS_SET,))  # type: ignore[type-var]
    # The flag is exactly "this message does not re-encode to its input".
    assert encode(decoded) != data
    assert encode(decoded) == encode(fields)  # type: ignore[arg-type]


def test_qos_flags_beyond_the_known_mask_are_kept_not_flagged() -> None:
    decoded = decode(msg(13, struct.pack("<IIII", 0, 0, 0xFFFFFFFF, 0)))
    assert decoded == HotRemoveRequest(virtual_node=0, page_count=0, qos_flags=0xFFFFFFFF)
    assert decoded.anomalies == ()


# ------------------------------------------------------------------------------- other paths


def test_dm_error_keeps_trailing_bytes() -> None:
    assert decode(msg(0, b"\x01\x02\x03", trans_id=9)) == DmError(trans_id=9, data=b"\x01\x02\x03")
    assert decode(msg(0)) == DmError()


def test_unballoon_response_is_header_only() -> None:
    assert decode(msg(9, trans_id=4)) == UnballoonResponse(trans_id=4)


def test_hot_add_request_with_region() -> None:
    body = struct.pack("<QQ", 0x100000 | 0x8000 << 40, 0x100000 | 0x40000 << 40)
    assert decode(msg(10, body)) == HotAddRequest(range=(0x100000, 0x8000), region=(0x100000, 0x40000))


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_accepts_any_bytes_like(wrap: type) -> None:
    data = bytes.fromhex("0700200008000000000000000500000000000400000002000002040000000200")
    expected = BalloonResponse(trans_id=8, more_pages=True, ranges=((0x40000, 512), (0x40200, 512)))
    assert decode(wrap(data)) == expected


def test_accepts_a_memoryview_of_wider_items() -> None:
    data = bytes.fromhex("0b0010000b0000000080000001000000")
    assert decode(memoryview(data).cast("I")) == decode(data)


def test_error_carries_reason_and_detail_and_str_starts_with_code() -> None:
    with pytest.raises(DecodeError) as info:
        decode(b"\x01")
    assert info.value.reason is R.TRUNCATED
    assert str(info.value).startswith("TRUNCATED: ")
    assert info.value.detail and info.value.detail in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("cls", [DecodeError, EncodeError])
def test_errors_survive_pickling(cls: type[DecodeError]) -> None:
    error = cls(R.SIZE_MISMATCH, "header size 3")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls
    assert (clone.reason, clone.detail, str(clone)) == (error.reason, error.detail, str(error))


def test_reason_values_equal_names() -> None:
    assert all(reason.value == reason.name for reason in DecodeReason)
    required = {
        "TRUNCATED",
        "SIZE_MISMATCH",
        "RANGE_COUNT_MISMATCH",
        "UNKNOWN_TYPE",
        "RESERVED_BITS_SET",
        "BAD_PACKET_TYPE",
        "BAD_PACKET_OFFSET",
        "BAD_PACKET_LENGTH",
        "FRAME_TOO_LARGE",
        "RANGE_OUT_OF_BOUNDS",
        "FIELD_OUT_OF_BOUNDS",
        "INVALID_JSON_FIELD",
        "INVALID_JSON",
        "INVALID_HEX",
    }
    assert required <= set(DecodeReason.__members__)
