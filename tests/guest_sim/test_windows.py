"""The Windows-like profile: cadence, suppression, coalesced ranges, hot-remove."""

from __future__ import annotations

from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    HotAddRequest,
    HotAddResponse,
    HotRemoveRequest,
    HotRemoveResponse,
    StatusReport,
    VersionResponse,
    encode,
)
from services.guest_sim import PROFILES, GuestConfig, SimulatedGuest
from services.guest_sim.hot_remove import hot_remove_responses
from tests.guest_sim.host_script import balloon, dec, only, ready_guest, send, shape

CHUNK = 32768
BASE = 0x100000


def test_profile_list_names_every_profile() -> None:
    assert set(PROFILES) == {
        "linux",
        "windows",
        "linux_hibernate",
        "not_owned",
        "double_free",
        "beyond_request",
        "malformed",
        "wrong_state",
        "silent",
        "status_flood",
        "malicious",
    }
    assert all(PROFILES.values())


def test_caps_advertise_hot_remove_and_alignment_7() -> None:
    g = SimulatedGuest(GuestConfig(profile="windows", boot_bytes=256 << 30))
    g.connect(0.0)
    [caps] = send(g, VersionResponse(is_accepted=True), 0.0)
    assert isinstance(caps, CapabilitiesReport)
    assert (caps.hot_remove, caps.hot_add_alignment, caps.balloon, caps.hot_add) == (True, 7, True, True)


def test_status_right_after_caps_at_1_hz() -> None:
    g = SimulatedGuest(GuestConfig(profile="windows", workload="idle"))
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 0.0)
    out = send(g, CapabilitiesResponse(is_accepted=True), 0.5)
    assert len(only(out, StatusReport)) == 1
    assert len(only(dec(g.poll(10.5)), StatusReport)) == 10


def test_honours_suppress_pressure_reports() -> None:
    g = SimulatedGuest(GuestConfig(profile="windows", workload="idle"))
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 0.0)
    g.receive(encode(CapabilitiesResponse(is_accepted=True, suppress_pressure_reports=True)), 0.0)
    assert only(dec(g.poll(100.0)), StatusReport) == []


def test_balloons_2m_units_returned_coalesced() -> None:
    g = ready_guest(profile="windows")
    responses = balloon(g, 300_000)
    assert shape(responses) == [(1, 1, 299_520), (0, 1, 480)]
    ((start, count),) = responses[0].ranges
    assert start % 512 == 0 and count == 299_520
    assert g.snapshot()["ballooned_pages"] == 300_000
    assert g.memory.problems() == []


def test_coalesced_ranges_stay_below_2_pow_24_pages() -> None:
    g = ready_guest(profile="windows", boot_bytes=128 << 30)
    responses = balloon(g, 20_000_000)
    assert all(c < 1 << 24 for r in responses for _, c in r.ranges)
    assert sum(c for r in responses for _, c in r.ranges) == 20_000_000
    assert not responses[-1].more_pages


def test_hot_remove_takes_hot_added_blocks_first() -> None:
    g = ready_guest(profile="windows")
    send(g, HotAddRequest(range=(BASE, 2 * CHUNK)), 1.0)
    assert g.snapshot()["total_ram_pages"] == (1 << 20) + 2 * CHUNK
    out = send(g, HotRemoveRequest(virtual_node=0, page_count=CHUNK, qos_flags=0), 2.0)
    [response] = only(out, HotRemoveResponse)
    assert (response.result, response.more_pages, response.ranges) == (0, False, ((BASE + CHUNK, CHUNK),))
    snap = g.snapshot()
    assert snap["total_ram_pages"] == (1 << 20) + CHUNK
    assert snap["onlined_pages"] == CHUNK and snap["hot_added_pages"] == CHUNK
    assert g.memory.problems() == []
    # The removed block can be added again.
    [again] = only(send(g, HotAddRequest(range=(BASE + CHUNK, CHUNK)), 3.0), HotAddResponse)
    assert (again.page_count, again.result) == (CHUNK, 1)


def test_hot_remove_never_returns_boot_ram_or_ballooned_pages() -> None:
    g = ready_guest(profile="windows")
    out = send(g, HotRemoveRequest(virtual_node=0, page_count=CHUNK, qos_flags=0), 2.0)
    [response] = only(out, HotRemoveResponse)
    assert (response.result, response.ranges) == (1, ())
    send(g, HotAddRequest(range=(BASE, CHUNK)), 3.0)
    balloon(g, 1024, now=4.0)  # the top of the hot-added block is ballooned
    [response] = only(send(g, HotRemoveRequest(virtual_node=0, page_count=CHUNK, qos_flags=0), 5.0), HotRemoveResponse)
    assert sum(c for _, c in response.ranges) == CHUNK - 1024
    assert all(s >= BASE for s, _ in response.ranges)
    assert not any(g.memory.ballooned.overlap_count(s, c) for s, c in response.ranges)
    assert g.memory.problems() == []


def test_hot_remove_responses_hold_at_most_509_ranges() -> None:
    ranges = [(i * 2, 1) for i in range(1000)]
    messages = hot_remove_responses(ranges)
    assert [len(m.ranges) for m in messages] == [509, 491]
    assert [m.more_pages for m in messages] == [True, False]
    assert all(len(encode(m)) <= 4096 for m in messages)


def test_linux_ignores_hot_remove() -> None:
    g = ready_guest()
    assert send(g, HotRemoveRequest(virtual_node=0, page_count=CHUNK, qos_flags=0), 1.0) == []
    assert g.snapshot()["host_violations"][0]["reason"] == "hot_remove_not_advertised"


def test_windows_accepts_version_2_0_first() -> None:
    g = SimulatedGuest(GuestConfig(profile="windows"))
    [request] = dec(g.connect(0.0))
    assert request.version == 0x20000  # type: ignore[union-attr]
    assert isinstance(send(g, BalloonRequest(num_pages=1), 0.1)[0], BalloonResponse)


def test_hot_remove_waits_for_a_running_hot_add() -> None:
    g = ready_guest(profile="windows", instant=False, hot_add_seconds_per_block=1.0)
    g.receive(encode(HotAddRequest(range=(BASE, 2 * CHUNK))), 1.0)
    assert g.receive(encode(HotRemoveRequest(virtual_node=0, page_count=CHUNK, qos_flags=0)), 1.5) == []
    out = dec(g.poll(10.0))
    kinds = [type(m).__name__ for m in out if not isinstance(m, StatusReport)]
    assert kinds == ["HotAddResponse", "HotRemoveResponse"]
    assert only(out, HotAddResponse)[0].page_count == 2 * CHUNK
    assert only(out, HotRemoveResponse)[0].ranges == ((BASE + CHUNK, CHUNK),)
    assert g.memory.problems() == []
