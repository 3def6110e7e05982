"""Records that are not what the engine writes fail validation, each for the reason given."""

from __future__ import annotations

from typing import Any

import pytest

from services.schemas import validator_for

BALLOONED: dict[str, Any] = {"type": "PagesBallooned", "ranges": [[0, 512], [4096, 512]], "pages": 1024, "tick": 3}
GUEST_MESSAGE: dict[str, Any] = {"type": "GuestMessage", "tick": 1, "raw": "0900080000000000"}
BALLOON_REQUEST: dict[str, Any] = {"type": "DM_BALLOON_REQUEST", "trans_id": 0, "num_pages": 512}


def errors(kind: str, family: str, document: Any) -> list[str]:
    return [e.message for e in validator_for(kind, family).iter_errors(document)]


def test_the_good_records_are_valid() -> None:
    assert errors("PagesBallooned", "events", BALLOONED) == []
    assert errors("GuestMessage", "inbox", GUEST_MESSAGE) == []
    assert errors("DM_BALLOON_REQUEST", "outbox", BALLOON_REQUEST) == []


@pytest.mark.parametrize(
    ("kind", "family", "document", "expected"),
    [
        ("PagesBallooned", "events", {k: v for k, v in BALLOONED.items() if k != "tick"}, "'tick' is a required"),
        ("PagesBallooned", "events", {**BALLOONED, "pages": "1024"}, "is not of type 'integer'"),
        ("PagesBallooned", "events", {**BALLOONED, "pages": True}, "is not of type 'integer'"),
        ("PagesBallooned", "events", {**BALLOONED, "pages": 1.5}, "is not of type 'integer'"),
        ("PagesBallooned", "events", {**BALLOONED, "vm": "vm1"}, "Additional properties"),
        ("PagesBallooned", "events", {**BALLOONED, "tick": -1}, "less than the minimum"),
        ("PagesBallooned", "events", {**BALLOONED, "ranges": [[0, 512, 1]]}, "is too long"),
        ("PagesBallooned", "events", {**BALLOONED, "ranges": [[0]]}, "is too short"),
        ("PagesBallooned", "events", {**BALLOONED, "ranges": [[-1, 5]]}, "less than the minimum"),
        ("PagesBallooned", "events", {**BALLOONED, "type": "PagesReturned"}, "'PagesBallooned' was expected"),
        (
            "GuestViolation",
            "events",
            {
                "type": "GuestViolation",
                "reason": "BORED",
                "message_type": "",
                "guest_trans_id": 0,
                "detail": "",
                "ranges": [],
                "pages": 0,
                "tick": 0,
            },
            "is not one of",
        ),
        ("GuestMessage", "inbox", {**GUEST_MESSAGE, "raw": "0900ZZ"}, "does not match"),
        ("GuestMessage", "inbox", {**GUEST_MESSAGE, "raw": "0900080000000000A0"}, "does not match"),
        ("GuestMessage", "inbox", {**GUEST_MESSAGE, "raw": "090"}, "does not match"),
        ("DM_BALLOON_REQUEST", "outbox", {**BALLOON_REQUEST, "num_pages": 2**32}, "greater than the maximum"),
        (
            "DM_BALLOON_REQUEST",
            "outbox",
            {**BALLOON_REQUEST, "anomalies": ["RESERVED_BITS_SET"]},
            "Additional properties",
        ),
        (
            "DM_MEM_HOT_ADD_REQUEST",
            "outbox",
            {"type": "DM_MEM_HOT_ADD_REQUEST", "trans_id": 0, "range": [0, 2**24], "region": None},
            "greater than the maximum",
        ),
    ],
)
def test_bad_records_fail(kind: str, family: str, document: Any, expected: str) -> None:
    found = errors(kind, family, document)
    assert any(expected in m for m in found), found


def test_nullable_and_signed_fields() -> None:
    opened = {
        "type": "ChannelOpened",
        "tick": 0,
        "boot_bytes": 1 << 30,
        "maxmem_bytes": 1 << 32,
        "hot_add_base_page": None,
        "status_reports": True,
        "ram": [[0, 1 << 18]],
        "reset": "vmbus",
        "uuid": "",
    }
    assert errors("ChannelOpened", "inbox", opened) == []
    assert errors("ChannelOpened", "inbox", {**opened, "reset": "warm"})
    assert errors("ChannelOpened", "inbox", {**opened, "hot_add_base_page": 1 << 23}) == []
    assert errors("ChannelOpened", "inbox", {**opened, "hot_add_base_page": "x"})
    # A negative target is the operator's mistake, recorded and rejected by the engine itself.
    assert errors("SetTarget", "inbox", {"type": "SetTarget", "tick": 0, "target_bytes": -4096}) == []


def test_envelopes_check_the_record_inside_by_its_own_schema() -> None:
    row = {"vm": "vm1", "seq": 1, "inbox_pos": 4, "record": BALLOONED}
    assert errors("event_row", "envelopes", row) == []
    bad = errors("event_row", "envelopes", {**row, "record": {**BALLOONED, "pages": -1}})
    assert bad == ["-1 is less than the minimum of 0"]
    assert errors("event_row", "envelopes", {**row, "record": {"type": "Nope"}})
    assert errors("event_row", "envelopes", {**row, "vm": "*"})  # events always belong to one VM
    assert errors("event_row", "envelopes", {**row, "seq": 0})
    assert errors("event_row", "envelopes", {k: v for k, v in row.items() if k != "inbox_pos"})
    tick = {"vm": "*", "pos": 9, "tick": 3, "record": {"type": "Tick", "tick": 3}}
    assert errors("inbox_row", "envelopes", tick) == []
    assert errors("inbox_row", "envelopes", {**tick, "record": {"type": "Tick"}})
    assert errors("inbox_row", "envelopes", {**tick, "extra": 1})


def test_unknown_kinds_and_families_are_key_errors() -> None:
    with pytest.raises(KeyError):
        validator_for("NoSuchEvent", "events")
    with pytest.raises(KeyError):
        validator_for("Tick", "inputs")


def test_validators_are_cached() -> None:
    assert validator_for("Tick", "inbox") is validator_for("Tick", "inbox")
