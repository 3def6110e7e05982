"""Status reports: delay, cadence, field values, the floor (guest-behaviour.md 3)."""

from __future__ import annotations

import itertools

import pytest

from services.dm_protocol import (
    BalloonRequest,
    CapabilitiesResponse,
    HotAddRequest,
    StatusReport,
    UnballoonRequest,
    VersionResponse,
    encode,
)
from services.guest_sim import GuestConfig, SimulatedGuest, balloon_floor
from tests.guest_sim.host_script import GIB_PAGES, MIB_PAGES, balloon, dec, only, ready_guest, send

HZ = 250


def _report_times(g: SimulatedGuest, start: float, end: float, step: float = 0.01) -> list[float]:
    """Poll in small steps; the time of each poll that produced a status report."""
    times = []
    t = start
    while t <= end:
        if only(dec(g.poll(t)), StatusReport):
            times.append(t)
        t = round(t + step, 6)
    return times


def test_first_report_after_45_swallowed_calls_of_the_1_s_thread() -> None:
    g = ready_guest(now=10.0)
    # Thread calls at 10 s + k * 251 jiffies from k = 0 (its start); calls k = 0..44 are swallowed;
    # call k = 45 is at 55.18 s: about 45 s after binding, as the real guest of realguest/.
    assert only(dec(g.poll(55.17)), StatusReport) == []
    reports = only(dec(g.poll(55.19)), StatusReport)
    assert len(reports) == 1
    assert reports[0].trans_id == 3  # version 1, caps 2, nothing in between


def test_cadence_is_one_report_per_second_and_never_closer_than_1_s_plus_a_jiffy() -> None:
    g = ready_guest()
    times = _report_times(g, 40.0, 160.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 110
    assert all(gap > 1.0 + 1 / HZ - 0.011 for gap in gaps)
    assert all(gap <= 2.0 for gap in gaps)


def test_balloon_activity_shortens_the_initial_delay() -> None:
    """Each balloon-response send attempts a status report and so consumes one delay call."""
    g = ready_guest()
    assert len(balloon(g, 300_000, now=0.5)) == 3
    # 3 calls consumed by the worker, so the thread's call k = 42 (at 42 * 1.004 s) reports.
    assert only(dec(g.poll(42 * 1.004 - 0.001)), StatusReport) == []
    assert len(only(dec(g.poll(42 * 1.004 + 0.001)), StatusReport)) == 1


def test_fields_follow_the_formula_and_the_rest_is_zero() -> None:
    g = ready_guest(boot_bytes=8 << 30, workload="idle")
    balloon(g, 100_000, now=1.0)
    send(g, HotAddRequest(range=(0x200000, 25600)), 2.0)  # 100 MiB: 28 MiB stay offline
    reports = only(dec(g.poll(60.0)), StatusReport)
    snap = g.snapshot()
    last = reports[-1]
    assert last.num_avail == snap["available_pages"]
    assert last.num_committed == (
        snap["committed_pages"]
        + snap["ballooned_pages"]
        + max(0, snap["hot_added_pages"] - snap["onlined_pages"])
        + snap["floor_pages"]
    )
    assert snap["ballooned_pages"] == 100_000 and snap["hot_added_pages"] == 25600
    assert (last.page_file_size, last.zero_free, last.page_file_writes, last.io_diff) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("total_mib", "floor"),
    [
        (512, 43008),
        (1024, 59392),
        (2048, 92160),
        (4096, 124928),
        (8192, 190464),
        (16384, 256000),
        (65536, 649216),
    ],
)
def test_floor_table_computed_values(total_mib: int, floor: int) -> None:
    assert balloon_floor(total_mib * MIB_PAGES) == floor


@pytest.mark.parametrize(("boot_gib", "floor"), [(1, 59392), (2, 92160), (4, 124928), (8, 190464), (16, 256000)])
def test_status_report_carries_the_floor_of_the_guest_totalram(boot_gib: int, floor: int) -> None:
    g = ready_guest(boot_bytes=boot_gib << 30)
    report = only(dec(g.poll(50.0)), StatusReport)[-1]
    assert report.num_committed - g.snapshot()["committed_pages"] == floor


@pytest.mark.parametrize(
    ("boundary", "below", "at"),
    [
        (32768, 2048 + 16383, 10240 + 8192),
        (131072, 10240 + 32767, 26624 + 16384),
        (524288, 26624 + 65535, 59392 + 32768),
    ],
)
def test_floor_piecewise_boundaries(boundary: int, below: int, at: int) -> None:
    assert balloon_floor(boundary - 1) == below
    assert balloon_floor(boundary) == at


def test_floor_is_recomputed_from_totalram_after_ballooning() -> None:
    g = ready_guest(boot_bytes=8 << 30)
    assert g.snapshot()["floor_pages"] == 190464
    balloon(g, 4 * GIB_PAGES, now=1.0)
    snap = g.snapshot()
    assert snap["ballooned_pages"] == 4 * GIB_PAGES and snap["managed_pages"] == 4 * GIB_PAGES
    assert snap["floor_pages"] == 124928
    report = only(dec(g.poll(50.0)), StatusReport)[-1]
    assert report.num_committed == snap["committed_pages"] + 4 * GIB_PAGES + 124928


def test_spec_vector_v3_bytes() -> None:
    """V3: totalram 1,011,000, Committed_AS 262,144, floor 122,579, MemAvailable 732,421."""
    g = ready_guest(boot_bytes=4 << 30, reserved_bytes=(1 << 20) - 1_011_000 << 12)
    g.memory.set_free_layout([(300_000, 732_421)], committed_pages=262_144)
    report = only(dec(g.poll(50.0)), StatusReport)[0]
    assert report.trans_id == 3
    patched = bytearray(encode(report))
    patched[4:8] = (7).to_bytes(4, "little")
    assert patched.hex() == (
        "0500300007000000052d0b0000000000d3de050000000000000000000000000000000000000000000000000000000000"
    )


def test_unballoon_wakes_the_thread_so_a_report_follows_at_once() -> None:
    g = ready_guest()
    responses = balloon(g, 1024, now=1.0)  # one send: one delay call consumed
    assert only(dec(g.poll(44.0)), StatusReport) == []  # tick 43 at 43.172 s used the last delay call
    out = send(g, UnballoonRequest(more_pages=False, ranges=responses[0].ranges), 44.1)
    # The next tick would be at 44.176 s; the report at 44.1 s comes from the wake-up.
    assert len(only(out, StatusReport)) == 1
    # The thread sleeps a full period from the wake-up: nothing at 44.176 s, the next at 45.104 s.
    assert only(dec(g.poll(45.1)), StatusReport) == []
    assert len(only(dec(g.poll(45.11)), StatusReport)) == 1


def test_reports_continue_while_hibernation_capable() -> None:
    g = ready_guest(hibernation_capable=True)
    assert len(only(dec(g.poll(60.0)), StatusReport)) >= 13


def test_linux_ignores_suppress_pressure_reports() -> None:
    g = SimulatedGuest(GuestConfig(workload="idle"))
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 0.0)
    g.receive(encode(CapabilitiesResponse(is_accepted=True, suppress_pressure_reports=True)), 0.0)
    assert len(only(dec(g.poll(60.0)), StatusReport)) >= 13


def test_no_reports_before_the_handshake_completes() -> None:
    g = SimulatedGuest(GuestConfig(workload="idle"))
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 0.0)
    assert g.poll(4.9) == []


def test_balloon_requests_before_init_are_served_and_flagged() -> None:
    g = SimulatedGuest(GuestConfig(workload="idle"))
    g.connect(0.0)
    out = send(g, BalloonRequest(num_pages=512), 0.1)
    assert len(out) == 1 and out[0].trans_id == 2
    assert g.snapshot()["host_violations"][0]["reason"] == "request_before_initialised"
