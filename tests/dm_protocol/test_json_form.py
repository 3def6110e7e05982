"""JSON form: exact shape, defaults, and every rejection."""

from __future__ import annotations

import json

import pytest

from services.dm_protocol import (
    BalloonResponse,
    CapabilitiesReport,
    DecodeError,
    DecodeReason,
    EncodeError,
    HotAddRequest,
    InfoMessage,
    VersionRequest,
    decode,
    from_json_dict,
    to_json_dict,
)

R = DecodeReason


def test_v4_as_json() -> None:
    msg = decode(bytes.fromhex("0700200008000000000000000500000000000400000002000002040000000200"))
    d = to_json_dict(msg)
    assert d == {
        "type": "DM_BALLOON_RESPONSE",
        "trans_id": 8,
        "more_pages": True,
        "ranges": [[0x40000, 512], [0x40200, 512]],
    }
    assert list(d) == ["type", "trans_id", "more_pages", "ranges"]
    assert from_json_dict(d) == msg


def test_key_order_follows_the_struct() -> None:
    d = to_json_dict(CapabilitiesReport(trans_id=6, balloon=True, hot_add=True, hot_add_alignment=7))
    assert list(d) == [
        "type",
        "trans_id",
        "balloon",
        "hot_add",
        "hot_add_alignment",
        "hot_remove",
        "min_page_cnt",
        "max_page_number",
    ]
    assert d["max_page_number"] == 2**64 - 1


def test_hot_add_region_null_and_present() -> None:
    assert to_json_dict(HotAddRequest(range=(1, 2)))["region"] is None
    assert to_json_dict(HotAddRequest(range=(1, 2), region=(3, 4)))["region"] == [3, 4]
    d = {"type": "DM_MEM_HOT_ADD_REQUEST", "range": [1, 2], "region": None}
    assert from_json_dict(d) == HotAddRequest(range=(1, 2))


def test_data_is_lowercase_hex_and_accepts_uppercase() -> None:
    msg = InfoMessage(info_type=0, data=b"\xab\xcd")
    assert to_json_dict(msg)["data"] == "abcd"
    assert from_json_dict({"type": "DM_INFO_MESSAGE", "info_type": 0, "data": "ABCD"}) == msg


def test_anomalies_only_when_present() -> None:
    clean = decode(bytes.fromhex("06001000000000000500000000000000"))
    assert "anomalies" not in to_json_dict(clean)
    odd = decode(bytes.fromhex("06001000000000000500000001000000"))
    d = to_json_dict(odd)
    assert d["anomalies"] == ["RESERVED_BITS_SET"]
    assert from_json_dict(d) == odd


def test_output_survives_json_text() -> None:
    msg = BalloonResponse(trans_id=1, more_pages=False, ranges=((2**40 - 1, 2**24 - 1),))
    assert from_json_dict(json.loads(json.dumps(to_json_dict(msg)))) == msg


def test_defaults_fill_omitted_optional_fields() -> None:
    assert from_json_dict({"type": "DM_VERSION_REQUEST", "version": 3}) == VersionRequest(version=3)


def reason_of(d: object) -> DecodeReason:
    with pytest.raises((DecodeError, EncodeError)) as info:
        from_json_dict(d)  # type: ignore[arg-type]
    return info.value.reason


@pytest.mark.parametrize(
    ("d", "reason"),
    [
        ([], R.INVALID_JSON_FIELD),
        ({}, R.INVALID_JSON_FIELD),
        ({"type": 1}, R.INVALID_JSON_FIELD),
        ({"type": "DM_NOPE"}, R.UNKNOWN_TYPE),
        ({"type": "DM_VERSION_REQUEST"}, R.INVALID_JSON_FIELD),  # version missing
        ({"type": "DM_VERSION_REQUEST", "version": 3, "extra": 1}, R.INVALID_JSON_FIELD),
        ({"type": "DM_VERSION_REQUEST", "version": True}, R.INVALID_JSON_FIELD),
        ({"type": "DM_VERSION_REQUEST", "version": 3.0}, R.INVALID_JSON_FIELD),
        ({"type": "DM_VERSION_REQUEST", "version": 3, "is_last_attempt": 1}, R.INVALID_JSON_FIELD),
        ({"type": "DM_VERSION_REQUEST", "version": 2**32}, R.FIELD_OUT_OF_BOUNDS),
        ({"type": "DM_VERSION_REQUEST", "version": 3, "trans_id": -1}, R.FIELD_OUT_OF_BOUNDS),
        ({"type": "DM_BALLOON_RESPONSE", "more_pages": False, "ranges": "x"}, R.INVALID_JSON_FIELD),
        ({"type": "DM_BALLOON_RESPONSE", "more_pages": False, "ranges": [[1]]}, R.INVALID_JSON_FIELD),
        ({"type": "DM_BALLOON_RESPONSE", "more_pages": False, "ranges": [[1, "2"]]}, R.INVALID_JSON_FIELD),
        ({"type": "DM_BALLOON_RESPONSE", "more_pages": False, "ranges": [[2**40, 1]]}, R.RANGE_OUT_OF_BOUNDS),
        ({"type": "DM_MEM_HOT_ADD_REQUEST", "range": [0, 2**24]}, R.RANGE_OUT_OF_BOUNDS),
        ({"type": "DM_MEM_HOT_ADD_REQUEST", "range": None}, R.INVALID_JSON_FIELD),
        ({"type": "DM_INFO_MESSAGE", "info_type": 0, "data": "zz"}, R.INVALID_JSON_FIELD),
        ({"type": "DM_INFO_MESSAGE", "info_type": 0, "data": 5}, R.INVALID_JSON_FIELD),
        ({"type": "DM_UNBALLOON_RESPONSE", "anomalies": ["NOT_A_REASON"]}, R.INVALID_JSON_FIELD),
        ({"type": "DM_UNBALLOON_RESPONSE", "anomalies": "RESERVED_BITS_SET"}, R.INVALID_JSON_FIELD),
    ],
)
def test_rejections(d: object, reason: DecodeReason) -> None:
    assert reason_of(d) is reason
