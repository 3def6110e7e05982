"""Hot-add (guest-behaviour.md 6): every row of the worked-examples table and the quirks."""

from __future__ import annotations

from services.dm_protocol import (
    CapabilitiesReport,
    HotAddRequest,
    HotAddResponse,
    StatusReport,
    VersionResponse,
    encode,
)
from services.guest_sim import GuestConfig, SimulatedGuest
from tests.guest_sim.host_script import dec, only, ready_guest, send

CHUNK = 32768
BASE = 0x100000  # 4 GiB: the end of boot RAM of a 4 GiB guest


def _hot_add(g: SimulatedGuest, start: int, count: int, region: tuple[int, int] | None = None) -> tuple[int, int]:
    [response] = only(send(g, HotAddRequest(range=(start, count), region=region), 1.0), HotAddResponse)
    return response.page_count, response.result


def test_spec_vector_v6_v7() -> None:
    g = ready_guest()
    out = g.receive(bytes.fromhex("0a001000000000000000100000008000"), 1.0)
    assert out == [bytes.fromhex("0b00100003000000") + bytes.fromhex("0080000001000000")]


def test_new_region_one_block() -> None:
    g = ready_guest()
    assert _hot_add(g, BASE, CHUNK) == (32768, 1)
    snap = g.snapshot()
    assert (snap["hot_add_regions"], snap["hot_added_pages"], snap["onlined_pages"]) == (1, 32768, 32768)
    assert snap["total_ram_pages"] == (1 << 20) + 32768
    assert g.memory.free.overlap_count(BASE, CHUNK) == CHUNK  # onlined pages are free memory


def test_next_range_at_the_old_region_end_makes_a_new_region() -> None:
    g = ready_guest()
    _hot_add(g, BASE, CHUNK)
    assert _hot_add(g, BASE + CHUNK, CHUNK) == (32768, 1)
    assert g.snapshot()["hot_add_regions"] == 2


def test_100_mib_adds_one_block_and_the_last_28_mib_stay_offline() -> None:
    g = ready_guest()
    assert _hot_add(g, 0x120000, 25600) == (25600, 1)
    assert g.hot_adder.added_blocks.page_count == CHUNK
    assert g.memory.online.overlap_count(0x120000, CHUNK) == 25600
    assert g.snapshot()["onlined_pages"] == 25600


def test_then_the_rest_of_the_block_is_backed_without_adding_anything() -> None:
    g = ready_guest()
    _hot_add(g, 0x120000, 25600)
    assert _hot_add(g, 0x126400, 7168) == (7168, 1)
    assert g.hot_adder.added_blocks.page_count == CHUNK
    assert g.memory.online.overlap_count(0x120000, CHUNK) == CHUNK
    snap = g.snapshot()
    assert (snap["hot_added_pages"], snap["onlined_pages"], snap["hot_add_regions"]) == (32768, 32768, 1)


def test_512_mib_where_the_third_block_fails() -> None:
    g = ready_guest(add_memory_faults=((BASE + 2 * CHUNK, "transient"),))
    assert _hot_add(g, BASE, 4 * CHUNK) == (65536, 1)
    assert g.hot_adder.added_blocks.page_count == 2 * CHUNK
    assert g.snapshot()["hot_add_enabled"]


def test_transient_failure_on_the_first_block() -> None:
    g = ready_guest(add_memory_faults=((BASE, "transient"),))
    assert _hot_add(g, BASE, CHUNK) == (0, 0)
    assert g.snapshot()["hot_add_enabled"]
    assert _hot_add(g, BASE, CHUNK) == (32768, 1)  # the host may retry later


def test_eexist_disables_hot_add_for_good() -> None:
    g = ready_guest(add_memory_faults=((BASE, "eexist"),))
    assert _hot_add(g, BASE, CHUNK) == (0, 1)
    assert not g.snapshot()["hot_add_enabled"]
    assert _hot_add(g, BASE + 8 * CHUNK, CHUNK) == (0, 1)
    assert _hot_add(g, 0x400000, CHUNK, region=(0x400000, 8 * CHUNK)) == (0, 1)


def test_hot_add_over_boot_ram_is_an_eexist_conflict() -> None:
    g = ready_guest()
    assert _hot_add(g, 0x80000, CHUNK) == (0, 1)
    assert not g.snapshot()["hot_add_enabled"]
    assert g.snapshot()["host_violations"][0]["reason"] == "hot_add_already_online"


def test_host_region_1_gib_populate_128_mib() -> None:
    g = ready_guest()
    assert _hot_add(g, BASE, CHUNK, region=(BASE, 8 * CHUNK)) == (32768, 1)
    [region] = g.hot_adder.regions
    assert (region.start, region.end, region.ha_end) == (BASE, BASE + 8 * CHUNK, BASE + CHUNK)
    assert _hot_add(g, BASE + CHUNK, CHUNK, region=(BASE + CHUNK, 0)) == (32768, 1)


def test_hot_add_disabled() -> None:
    g = ready_guest(hot_add_enabled=False)
    assert _hot_add(g, BASE, CHUNK) == (0, 1)
    assert g.snapshot()["total_ram_pages"] == 1 << 20


def test_hibernation_capable_answers_hot_add_0_1() -> None:
    g = ready_guest(hibernation_capable=True)
    assert _hot_add(g, BASE, CHUNK) == (0, 1)


def test_same_range_twice_is_success_twice_and_inflates_committed() -> None:
    g = ready_guest()
    _hot_add(g, BASE, CHUNK)
    assert _hot_add(g, BASE, CHUNK) == (32768, 1)
    snap = g.snapshot()
    assert (snap["hot_added_pages"], snap["onlined_pages"]) == (65536, 32768)
    report = only(dec(g.poll(60.0)), StatusReport)[-1]
    snap = g.snapshot()
    assert report.num_committed == snap["committed_pages"] + 32768 + snap["floor_pages"]
    assert g.hot_adder.regions[0].gaps == [(BASE + CHUNK, BASE)]  # the bogus inverted gap


def test_gap_pages_stay_offline() -> None:
    g = ready_guest()
    _hot_add(g, BASE, 10_000)
    assert _hot_add(g, BASE + 20_000, 5_000) == (5_000, 1)
    assert g.memory.online.overlap_count(BASE + 10_000, 10_000) == 0
    assert g.hot_adder.regions[0].gaps == [(BASE + 10_000, BASE + 20_000)]


def test_request_past_the_region_end_grows_it_by_whole_chunks() -> None:
    g = ready_guest()
    _hot_add(g, BASE, 10_000)
    assert _hot_add(g, BASE + 10_000, CHUNK) == (CHUNK, 1)
    [region] = g.hot_adder.regions
    assert region.end == BASE + 2 * CHUNK and region.ha_end == BASE + 2 * CHUNK


def test_alignment_is_configurable_and_sets_the_chunk() -> None:
    g = SimulatedGuest(GuestConfig(workload="idle", hot_add_alignment=9))
    g.connect(0.0)
    [caps] = dec(g.receive(encode(VersionResponse(is_accepted=True)), 0.0))
    assert isinstance(caps, CapabilitiesReport) and caps.hot_add_alignment == 9
    assert g.config.chunk_pages == 512 * 256


def test_linux_alignment_rule_for_big_guests() -> None:
    assert GuestConfig(boot_bytes=32 << 30).effective_alignment() == 7
    assert GuestConfig(boot_bytes=256 << 30).effective_alignment() == 11
    assert GuestConfig(boot_bytes=(64 << 30) + (256 << 20)).effective_alignment() == 8


def test_timed_hot_add_answers_after_every_block_was_added() -> None:
    g = ready_guest(instant=False, hot_add_seconds_per_block=2.0)
    g.poll(60.0)
    assert g.receive(encode(HotAddRequest(range=(BASE, 4 * CHUNK))), 60.0) == []
    out = dec(g.poll(67.9))
    assert not only(out, HotAddResponse)
    assert len(only(out, StatusReport)) >= 6  # reports keep coming mid hot-add
    [response] = only(dec(g.poll(68.0)), HotAddResponse)
    assert (response.page_count, response.result) == (4 * CHUNK, 1)
