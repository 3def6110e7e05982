"""Host messages a real guest would misread are flagged, never raised (guest-behaviour.md 9.11-9.12)."""

from __future__ import annotations

import struct

import pytest

from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    DmError,
    InfoMessage,
    StatusReport,
    UnballoonRequest,
    encode,
)
from tests.guest_sim.host_script import ready_guest, send


def _reasons(g: object) -> list[str]:
    return [v["reason"] for v in g.snapshot()["host_violations"]]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x06\x00", "malformed:TRUNCATED"),
        (struct.pack("<HHI", 6, 12, 0) + b"\0\0\0\0", "malformed:TRUNCATED"),
        (struct.pack("<HHI", 99, 8, 0), "malformed:UNKNOWN_TYPE"),
        (struct.pack("<HHII", 6, 24, 0, 512) + bytes(4), "malformed:SIZE_MISMATCH"),
        # range_count 100 in a message that carries one range
        (
            struct.pack("<HHIII", 8, 24, 0, 0, 100) + struct.pack("<Q", 0x40000 | 512 << 40),
            "malformed:RANGE_COUNT_MISMATCH",
        ),
        # a 20-byte hot-add request: Linux would read a region from bytes it does not have
        (struct.pack("<HHIQI", 10, 20, 0, 0x100000 | 0x8000 << 40, 0), "malformed:SIZE_MISMATCH"),
        (encode(UnballoonRequest(more_pages=False, ranges=tuple((i, 1) for i in range(600)))), "oversized"),
        (encode(StatusReport(num_avail=1, num_committed=1)), "unexpected_type"),
        (encode(BalloonResponse(more_pages=False, ranges=())), "unexpected_type"),
        (encode(DmError(data=b"x" * 8)), "dm_error_received"),
        (struct.pack("<HHII", 6, 16, 0, 512) + struct.pack("<I", 1), "reserved_bits"),
    ],
)
def test_bad_host_messages_are_flagged(data: bytes, reason: str) -> None:
    g = ready_guest()
    before = g.snapshot()
    g.receive(data, 1.0)
    assert _reasons(g)[0] == reason
    assert g.snapshot()["ballooned_pages"] == before["ballooned_pages"] or reason == "reserved_bits"
    assert g.memory.problems() == []


def test_zero_padding_after_the_message_is_accepted_silently() -> None:
    g = ready_guest()
    out = g.receive(encode(BalloonRequest(num_pages=512)) + bytes(8), 1.0)
    assert len(out) == 1 and _reasons(g) == []


def test_garbage_after_the_message_is_flagged_but_the_message_is_served() -> None:
    g = ready_guest()
    out = g.receive(encode(BalloonRequest(num_pages=512)) + b"\xff" * 8, 1.0)
    assert len(out) == 1 and _reasons(g) == ["trailing_bytes"]


def test_info_message_is_handled_with_no_reply() -> None:
    g = ready_guest()
    assert send(g, InfoMessage(info_type=0, data=struct.pack("<Q", 1 << 22)), 1.0) == []
    assert g.snapshot()["max_page_count"] == 1 << 22
    assert send(g, InfoMessage(info_type=7, data=b"abc"), 1.0) == []
    assert g.snapshot()["max_page_count"] == 1 << 22 and _reasons(g) == []


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_never_raise(seed: int) -> None:
    import random

    rng = random.Random(seed)
    g = ready_guest()
    for i in range(200):
        size = rng.choice([0, 3, 8, 16, 24, 32, rng.randrange(0, 5000)])
        data = bytearray(rng.randbytes(size))
        if size >= 4:
            data[0:2] = struct.pack("<H", rng.randrange(0, 16))
            data[2:4] = struct.pack("<H", size if rng.random() < 0.7 else rng.randrange(0, 1 << 16))
        g.receive(bytes(data), 1.0 + i)
    assert g.memory.problems() == []
