"""Ballooning: every row of the worked-sequences table of guest-behaviour.md 4, and its rules."""

from __future__ import annotations

import time

import pytest

from services.dm_protocol import BalloonRequest, BalloonResponse, encode
from services.guest_sim import SimulatedGuest
from tests.guest_sim.host_script import GIB_PAGES, balloon, dec, only, ready_guest, shape

FLOOR_4G = 124928  # floor of a 4 GiB guest with nothing ballooned


def _check_ranges(g: SimulatedGuest, responses: list[BalloonResponse]) -> None:
    """2 MiB ranges aligned, never overlapping, all in RAM, all now ballooned; single pages unmerged."""
    seen: set[int] = set()
    total = 0
    for r in responses:
        assert len(r.ranges) <= 510
        for start, count in r.ranges:
            assert count in (1, 512)
            if count == 512:
                assert start % 512 == 0
            pages = set(range(start, start + count))
            assert not pages & seen
            seen |= pages
            total += count
            assert g.memory.ballooned.overlap_count(start, count) == count
    assert g.snapshot()["ballooned_pages"] == total
    assert g.memory.problems() == []


def _isolated_pages(first: int, count: int) -> list[tuple[int, int]]:
    """``count`` free pages with a used page between each two: no 2 MiB block can be allocated."""
    return [(first + 2 * i, 1) for i in range(count)]


def test_1024_pages_plenty_of_memory() -> None:
    g = ready_guest()
    responses = balloon(g, 1024)
    assert shape(responses) == [(0, 2, 1024)]
    _check_ranges(g, responses)


def test_1000_pages() -> None:
    g = ready_guest()
    responses = balloon(g, 1000)
    assert shape(responses) == [(1, 1, 512), (0, 488, 488)]
    _check_ranges(g, responses)


def test_300000_pages() -> None:
    g = ready_guest()
    responses = balloon(g, 300_000)
    assert shape(responses) == [(1, 510, 261120), (1, 75, 38400), (0, 480, 480)]
    _check_ranges(g, responses)


def test_2048_pages_only_two_2m_blocks_available() -> None:
    g = ready_guest()
    g.memory.set_free_layout([(0x80000, 512), (0x80400, 512), *_isolated_pages(0x10000, 3000)], cache_pages=200_000)
    responses = balloon(g, 2048)
    assert shape(responses) == [(1, 2, 1024), (1, 510, 510), (1, 510, 510), (0, 4, 4)]
    assert responses[0].ranges == ((0x80000, 512), (0x80400, 512))  # lowest first, as the real guest
    _check_ranges(g, responses)


def test_100_pages_2m_fails_only_50_single_pages() -> None:
    g = ready_guest()
    g.memory.set_free_layout(_isolated_pages(0x10000, 50), cache_pages=300_000)
    responses = balloon(g, 100)
    assert shape(responses) == [(1, 50, 50), (0, 0, 0)]
    _check_ranges(g, responses)


def test_1024_requested_memavailable_minus_floor_600() -> None:
    g = ready_guest()
    g.memory.set_free_layout([(0x40000, FLOOR_4G + 600)])
    responses = balloon(g, 1024)
    assert shape(responses) == [(1, 1, 512), (0, 88, 88)]
    _check_ranges(g, responses)


@pytest.mark.parametrize("free", [FLOOR_4G, FLOOR_4G - 1000])
def test_at_or_below_the_floor(free: int) -> None:
    g = ready_guest()
    g.memory.set_free_layout([(0x40000, free)])
    assert shape(balloon(g, 1024)) == [(0, 0, 0)]
    assert g.snapshot()["ballooned_pages"] == 0


def test_request_0() -> None:
    g = ready_guest()
    [response] = balloon(g, 0)
    assert encode(response)[8:].hex() == "0000000000000000"  # 16 bytes: range_count 0, more_pages 0


def test_clamp_is_measured_when_the_worker_starts_and_never_goes_below_the_floor() -> None:
    g = ready_guest()
    available = g.snapshot()["available_pages"]
    responses = balloon(g, 4 * GIB_PAGES)
    got = sum(c for r in responses for _, c in r.ranges)
    # The floor was measured before the pages left totalram, with the 4 GiB floor.
    assert got == available - FLOOR_4G
    snap = g.snapshot()
    assert snap["available_pages"] == FLOOR_4G
    # totalram dropped, so the floor shrank: a second request may take down to the new floor.
    assert snap["floor_pages"] < FLOOR_4G
    more = balloon(g, 4 * GIB_PAGES, now=2.0)
    assert sum(c for r in more for _, c in r.ranges) == FLOOR_4G - snap["floor_pages"]


def test_single_pages_are_never_merged_and_come_in_allocation_order() -> None:
    g = ready_guest()
    responses = balloon(g, 600)
    singles = responses[1].ranges
    assert all(c == 1 for _, c in singles)
    starts = [s for s, _ in singles]
    # Ascending from the lowest free page (the real guest's order, see test_realguest_calibration).
    assert starts == sorted(set(starts)) and starts[0] < responses[0].ranges[0][0]


def test_status_reports_interleave_with_a_long_balloon_transaction() -> None:
    """Section 9 item 1: reports keep coming about once a second in the middle of a transaction."""
    g = ready_guest(boot_bytes=64 << 30, instant=False, hot_add_alignment=7)
    g.poll(50.0)  # the 45-call delay is over
    g.receive(encode(BalloonRequest(num_pages=40 * GIB_PAGES)), 50.0)
    kinds: list[str] = []
    t = 50.0
    while t < 70.0:
        t = round(t + 0.05, 6)
        kinds += [type(m).__name__ for m in dec(g.poll(t))]
    responses = kinds.count("BalloonResponse")
    assert responses == -(-40 * GIB_PAGES // 512 // 510)  # 41 messages, 0.28 s apart
    first, last = kinds.index("BalloonResponse"), len(kinds) - 1 - kinds[::-1].index("BalloonResponse")
    assert kinds[first:last].count("StatusReport") >= 9  # about 11.5 s of ballooning


def test_timed_balloon_runs_at_230_gb_per_minute() -> None:
    g = ready_guest(instant=False)
    assert g.receive(encode(BalloonRequest(num_pages=300_000)), 10.0) == []
    # 261,120 pages at 230e9 / 4096 / 60 pages per second take about 0.279 s.
    assert g.poll(10.27) == []
    first = only(dec(g.poll(10.28)), BalloonResponse)
    assert shape(first) == [(1, 510, 261120)]
    rest = only(dec(g.poll(11.0)), BalloonResponse)
    assert shape(rest) == [(1, 75, 38400), (0, 480, 480)]
    assert g.next_deadline() is not None  # the status thread is still scheduled


def test_overlapping_request_is_flagged_and_runs_after_the_current_one() -> None:
    g = ready_guest(instant=False)
    g.receive(encode(BalloonRequest(num_pages=1024)), 10.0)
    g.receive(encode(BalloonRequest(num_pages=512)), 10.0)
    assert g.snapshot()["host_violations"][-1]["reason"] == "balloon_request_overlap"
    out = only(dec(g.poll(12.0)), BalloonResponse)
    assert shape(out) == [(0, 2, 1024), (0, 1, 512)]


def test_balloon_200_gib_of_256_gib_is_fast() -> None:
    g = ready_guest(boot_bytes=256 << 30, hot_add_alignment=7)
    start = time.process_time()
    out = dec(g.receive(encode(BalloonRequest(num_pages=200 * GIB_PAGES)), 1.0))
    elapsed = time.process_time() - start
    responses = only(out, BalloonResponse)
    assert sum(len(r.ranges) for r in responses) == 200 * GIB_PAGES // 512
    assert len(responses) == -(-200 * GIB_PAGES // 512 // 510)
    assert not responses[-1].more_pages and all(r.more_pages for r in responses[:-1])
    assert g.snapshot()["ballooned_pages"] == 200 * GIB_PAGES
    assert len(g.memory.free) < 10 and len(g.memory.ballooned) < 10  # O(ranges), not O(pages)
    assert elapsed < 3.0
    # The thread's call at its start and the first 44 sends swallow the status delay; the 45th
    # send's attempt reports; the rest are rate limited (same instant).
    kinds = [type(m).__name__ for m in out]
    assert kinds.count("StatusReport") == 1
    assert kinds.index("StatusReport") == 45
