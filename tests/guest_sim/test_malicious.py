"""Each malicious profile completes the handshake and produces exactly its misbehaviour."""

from __future__ import annotations

import pytest

from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    DecodeError,
    DecodeReason,
    HotAddRequest,
    HotAddResponse,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
    decode,
    encode,
)
from services.guest_sim import MISBEHAVIOUR_MODES, GuestConfig, SimulatedGuest
from tests.guest_sim.host_script import balloon, dec, only, ready_guest, send, shape

BASE = 0x100000
CHUNK = 32768


@pytest.mark.parametrize("profile", [*MISBEHAVIOUR_MODES, "malicious"])
def test_malicious_profiles_complete_the_handshake(profile: str) -> None:
    g = SimulatedGuest(GuestConfig(profile=profile, workload="idle"))
    [request] = dec(g.connect(0.0))
    assert isinstance(request, VersionRequest) and request.trans_id == 1
    [caps] = dec(g.receive(encode(VersionResponse(is_accepted=True)), 0.0))
    assert isinstance(caps, CapabilitiesReport) and caps.trans_id == 2
    g.receive(encode(CapabilitiesResponse(is_accepted=True)), 0.0)
    assert g.snapshot()["state"] == "initialized"


def test_not_owned_returns_pages_beyond_ram_then_in_a_hole() -> None:
    g = ready_guest(profile="not_owned")
    responses = balloon(g, 1024)
    ram_end = g.snapshot()["total_ram_pages"]
    assert responses[0].more_pages and responses[0].ranges[0][0] >= ram_end + CHUNK  # far beyond RAM
    assert shape(responses[1:]) == [(0, 2, 1024)]  # then the honest answer
    assert g.snapshot()["ballooned_pages"] == 1024  # the fake pages were not taken from anywhere
    # Second transaction: a hole. No hot-add yet, so the pages right after the end of RAM.
    responses = balloon(g, 512, now=2.0)
    assert responses[0].ranges == ((ram_end, 512),)
    # With a partly backed block, the hole is its unbacked tail (28 MiB of a 128 MiB block).
    send(g, HotAddRequest(range=(BASE, 25600)), 3.0)
    balloon(g, 512, now=4.0)  # beyond RAM again
    responses = balloon(g, 512, now=5.0)
    assert responses[0].ranges == ((BASE + 25600, 512),)
    assert g.memory.online.overlap_count(BASE + 25600, 512) == 0
    assert g.snapshot()["misbehaviour_sent"] == ["not_owned"] * 4
    assert g.memory.problems() == []


def test_double_free_within_then_across_messages() -> None:
    g = ready_guest(profile="double_free")
    first = balloon(g, 1024)
    ranges = [r for resp in first for r in resp.ranges]
    assert len(ranges) == 3 and ranges[0] == ranges[-1]  # within one message
    assert g.snapshot()["misbehaviour_sent"] == ["double_free"]
    second = balloon(g, 512, now=2.0)
    assert second[0].ranges == (ranges[0],) and second[0].more_pages  # across messages
    assert g.snapshot()["misbehaviour_sent"] == ["double_free", "double_free", "double_free"]
    assert g.snapshot()["ballooned_pages"] == 1024 + 512


def test_double_free_with_a_full_message_keeps_the_accounting_honest() -> None:
    g = ready_guest(profile="double_free")
    responses = balloon(g, 300_000)
    first = responses[0].ranges
    assert len(first) == 510 and first[0] == first[-1]
    reported = {r for resp in responses for r in resp.ranges}
    assert g.snapshot()["ballooned_pages"] == sum(c for _, c in reported)
    assert g.memory.problems() == []


def test_beyond_request_returns_more_than_asked() -> None:
    g = ready_guest(profile="beyond_request")
    responses = balloon(g, 1024)
    assert sum(c for r in responses for _, c in r.ranges) == 1536
    assert g.snapshot()["misbehaviour_sent"] == ["beyond_request"]
    [response] = only(send(g, HotAddRequest(range=(BASE, CHUNK)), 2.0), HotAddResponse)
    assert response.page_count == 2 * CHUNK
    assert g.snapshot()["misbehaviour_sent"] == ["beyond_request", "beyond_request"]
    assert g.snapshot()["hot_added_pages"] == CHUNK  # the guest's own count stays true


def test_malformed_cycles_through_four_undecodable_messages_then_answers() -> None:
    g = ready_guest(profile="malformed")
    seen: list[object] = []
    for i in range(4):
        out = g.receive(encode(BalloonRequest(num_pages=512)), 1.0 + i)
        bad, *good = out
        try:
            decode(bad)
            seen.append(("decoded", len(bad)))
        except DecodeError as err:
            seen.append(err.reason)
        assert [type(decode(b)) for b in good] == [BalloonResponse]
    assert seen == [
        DecodeReason.TRUNCATED,
        ("decoded", 16 + 8 * 511),
        DecodeReason.SIZE_MISMATCH,
        DecodeReason.RANGE_COUNT_MISMATCH,
    ]
    assert g.snapshot()["misbehaviour_sent"] == [
        "malformed_truncated",
        "malformed_oversized",
        "malformed_header_size",
        "malformed_range_count",
    ]
    assert g.snapshot()["ballooned_pages"] == 4 * 512


def test_wrong_state_sends_what_nobody_asked_for() -> None:
    g = SimulatedGuest(GuestConfig(profile="wrong_state", workload="idle"))
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 0.0)
    [unsolicited] = send(g, CapabilitiesResponse(is_accepted=True), 0.0)
    assert isinstance(unsolicited, BalloonResponse) and unsolicited.trans_id == 3
    # The pages named were not given away.
    assert g.snapshot()["ballooned_pages"] == 0
    out = send(g, BalloonRequest(num_pages=512), 1.0)
    assert [type(m).__name__ for m in out] == ["BalloonResponse", "UnballoonResponse"]
    out = send(g, UnballoonRequest(more_pages=False, ranges=out[0].ranges), 2.0)  # type: ignore[union-attr]
    assert [type(m).__name__ for m in out] == ["UnballoonResponse", "HotAddResponse"]
    out = send(g, HotAddRequest(range=(BASE, CHUNK)), 3.0)
    assert [type(m).__name__ for m in out] == ["HotAddResponse", "VersionRequest"]
    # The host's answer to that version request does not restart the guest's fallback.
    assert send(g, VersionResponse(is_accepted=False), 3.5) == []
    assert g.snapshot()["misbehaviour_sent"] == [
        "unsolicited_balloon_response",
        "unsolicited_unballoon_response",
        "unsolicited_hot_add_response",
        "version_request_after_negotiation",
    ]


def test_silent_never_answers() -> None:
    g = ready_guest(profile="silent")
    assert send(g, BalloonRequest(num_pages=512), 1.0) == []
    assert send(g, UnballoonRequest(more_pages=True, ranges=()), 2.0) == []
    assert send(g, UnballoonRequest(more_pages=False, ranges=()), 2.0) == []
    assert send(g, HotAddRequest(range=(BASE, CHUNK)), 3.0) == []
    assert not any(isinstance(m, (BalloonResponse, UnballoonResponse, HotAddResponse)) for m in dec(g.poll(100.0)))
    assert g.snapshot()["misbehaviour_sent"] == ["silent", "silent", "silent"]


def test_status_flood_sends_many_reports_per_second_from_the_handshake_on() -> None:
    g = ready_guest(profile="status_flood")
    reports = only(dec(g.poll(2.0)), StatusReport)
    assert len(reports) == 100  # 50 per second, no 45-call delay; the first came with the handshake
    assert g.snapshot()["misbehaviour_sent"] == ["status_flood"] * 101
    ids = [r.trans_id for r in reports]
    assert ids == sorted(ids)


def test_malicious_cycles_through_every_misbehaviour_once_per_transaction() -> None:
    g = ready_guest(profile="malicious")
    for i in range(7):
        g.receive(encode(BalloonRequest(num_pages=1024)), 1.0 + i)
    g.receive(encode(BalloonRequest(num_pages=1024)), 9.0)  # the cycle starts again
    sent = g.snapshot()["misbehaviour_sent"]
    flood = [n for n in sent if n == "status_flood"]
    others = [n for n in sent if n != "status_flood"]
    assert others == [
        "not_owned",
        "double_free",  # across: the range the previous transaction reported
        "double_free",  # within the first message
        "beyond_request",
        "malformed_truncated",
        "unsolicited_balloon_response",
        "silent",
        "not_owned",
    ]
    # Flooded from the 7th transaction (t = 7 s) up to and including t = 9 s, when the 8th arrives.
    assert len(flood) == 50 * 2 + 1
    assert g.memory.problems() == []


def test_same_seed_same_misbehaviour_bytes() -> None:
    outs = []
    for _ in range(2):
        g = ready_guest(profile="malicious", workload="bursty", seed=9)
        out: list[bytes] = []
        for i in range(10):
            out += g.receive(encode(BalloonRequest(num_pages=1000 + i)), 1.0 + i)
        out += g.poll(60.0)
        outs.append(out)
    assert outs[0] == outs[1]
