"""Example tests for services.vdimm_allocator: every operation and every AllocationReason."""

from __future__ import annotations

import doctest
import json
import pickle

import pytest

import services.vdimm_allocator.allocator as allocator_module
from services.vdimm_allocator import (
    HOT_ADD_CHUNK_PAGES,
    AllocationError,
    AllocationReason,
    HotAddChunk,
    Vdimm,
    VdimmLayout,
    alignment_pages,
    find_vdimm,
    new_layout,
    plan_chunk,
    plug,
    record_hot_add,
    record_hot_remove,
    release_all,
    unplug,
)
from services.vdimm_allocator.allocator import chunk_max_pages

GIB_PAGES = 262_144  # pages per GiB
MIB = 1 << 20
GIB = 1 << 30
A128M = 7  # hot_add_alignment of a default Linux guest: 128 MiB memory blocks
A128M_PAGES = 32_768


def window(gib: int = 64, base_gib: int = 32) -> VdimmLayout:
    """A window as QEMU lays it out: base aligned to 32 GiB, above boot RAM."""
    return new_layout(base_gib * GIB_PAGES, (base_gib + gib) * GIB_PAGES)


def reason_of(excinfo: pytest.ExceptionInfo[AllocationError]) -> AllocationReason:
    return excinfo.value.reason


# --- constants and alignment ------------------------------------------------------------------


def test_hot_add_chunk_is_two_gib() -> None:
    assert HOT_ADD_CHUNK_PAGES == 524_288 == 2 * GIB_PAGES


@pytest.mark.parametrize(("n", "pages"), [(0, 256), (1, 512), (7, 32_768), (11, 524_288), (15, 8_388_608)])
def test_alignment_pages(n: int, pages: int) -> None:
    assert alignment_pages(n) == pages == (1 << n) * MIB // 4096


@pytest.mark.parametrize("n", [-1, 16, 100])
def test_alignment_pages_rejects_out_of_range(n: int) -> None:
    with pytest.raises(ValueError):
        alignment_pages(n)


def test_alignment_pages_rejects_non_int() -> None:
    with pytest.raises(TypeError):
        alignment_pages(True)


def test_chunk_max_is_two_gib_or_the_alignment_if_larger() -> None:
    assert chunk_max_pages(256) == HOT_ADD_CHUNK_PAGES
    assert chunk_max_pages(alignment_pages(11)) == HOT_ADD_CHUNK_PAGES
    assert chunk_max_pages(alignment_pages(12)) == 1_048_576
    assert chunk_max_pages(alignment_pages(15)) == 8_388_608


# --- errors ---------------------------------------------------------------------------------


def test_allocation_reason_values_are_their_names() -> None:
    assert {r.name for r in AllocationReason} == {
        "BACKEND_TOO_SMALL",
        "NOT_PAGE_MULTIPLE",
        "WINDOW_EXHAUSTED",
        "DUPLICATE_ID",
        "UNKNOWN_ID",
        "BACKEND_IN_USE",
    }
    for reason in AllocationReason:
        assert str(reason) == reason.name == reason.value


def test_allocation_error_is_a_value_error_starting_with_its_reason() -> None:
    error = AllocationError(AllocationReason.DUPLICATE_ID, "mem1 again")
    assert isinstance(error, ValueError)
    assert error.reason is AllocationReason.DUPLICATE_ID
    assert str(error).startswith("DUPLICATE_ID")
    assert error.detail == "mem1 again"


def test_allocation_error_pickles() -> None:
    error = AllocationError(AllocationReason.UNKNOWN_ID, "mem9")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.reason is AllocationReason.UNKNOWN_ID
    assert str(copy) == str(error)


# --- new_layout -----------------------------------------------------------------------------


def test_new_layout_is_empty() -> None:
    layout = new_layout(100, 200)
    assert (layout.window_start_page, layout.window_end_page, layout.vdimms) == (100, 200, ())
    assert layout.added_pages == 0
    assert layout.get("mem1") is None


def test_new_layout_may_be_empty_window() -> None:
    layout = new_layout(5, 5)
    with pytest.raises(AllocationError) as excinfo:
        plug(layout, "mem1", MIB, 0)
    assert reason_of(excinfo) is AllocationReason.WINDOW_EXHAUSTED


def test_new_layout_rejects_end_before_start() -> None:
    with pytest.raises(ValueError):
        new_layout(200, 100)


def test_new_layout_rejects_negative_start() -> None:
    with pytest.raises(ValueError):
        new_layout(-1, 100)


# --- plug -----------------------------------------------------------------------------------


def test_plug_200g_backend_from_the_cover_letter() -> None:
    # object_add memory-backend-ram,id=mem1,size=200G; maxmem=1T; window base at 32 GiB.
    layout = new_layout(32 * GIB_PAGES, 1024 * GIB_PAGES)
    layout2, vdimm = plug(layout, "mem1", 200 * GIB, A128M)
    assert vdimm.start_page == 32 * GIB_PAGES
    assert vdimm.page_count == 200 * GIB_PAGES
    assert (vdimm.head_pages, vdimm.tail_pages) == (0, 0)
    assert vdimm.usable_start == vdimm.start_page
    assert vdimm.usable_count == 200 * GIB_PAGES
    assert vdimm.alignment_pages == A128M_PAGES
    assert (vdimm.added_pages, vdimm.unusable_tail, vdimm.removed_pages) == (0, 0, 0)
    assert vdimm.remaining_pages == 200 * GIB_PAGES
    assert vdimm.end_page == 232 * GIB_PAGES
    assert vdimm.added_range == (32 * GIB_PAGES, 0)
    assert layout2.vdimms == (vdimm,)
    assert layout2.get("mem1") == vdimm
    assert layout.vdimms == ()  # the input layout is untouched


def test_plug_rounds_usable_part_down_and_records_the_tail() -> None:
    _, vdimm = plug(window(), "mem1", 300 * MIB, A128M)
    assert vdimm.usable_count == 256 * MIB // 4096
    assert vdimm.tail_pages == 44 * MIB // 4096
    assert vdimm.head_pages == 0
    assert vdimm.page_count == vdimm.head_pages + vdimm.usable_count + vdimm.tail_pages


def test_plug_aligns_start_when_window_base_is_unaligned() -> None:
    layout = new_layout(1000, 10 * GIB_PAGES)
    _, vdimm = plug(layout, "mem1", GIB, A128M)
    assert vdimm.start_page == A128M_PAGES
    assert vdimm.head_pages == 0


def test_plug_places_next_vdimm_after_previous_at_its_own_alignment() -> None:
    layout, first = plug(window(), "mem1", 300 * MIB, A128M)
    layout, second = plug(layout, "mem2", GIB, 10)  # 1 GiB alignment
    assert first.end_page == first.start_page + 76_800
    assert second.start_page == first.start_page + GIB_PAGES  # next 1 GiB boundary
    layout, third = plug(layout, "mem3", 4 * MIB, 0)  # fits in the gap between mem1 and mem2
    assert first.end_page <= third.start_page < second.start_page
    assert [v.backend_id for v in layout.vdimms] == ["mem1", "mem3", "mem2"]


def test_plug_first_fit_reuses_the_lowest_gap() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout, mem2 = plug(layout, "mem2", GIB, A128M)
    layout, _ = plug(layout, "mem3", GIB, A128M)
    layout = unplug(layout, "mem2")
    layout, mem4 = plug(layout, "mem4", 512 * MIB, A128M)
    assert mem4.start_page == mem2.start_page
    assert [v.backend_id for v in layout.vdimms] == ["mem1", "mem4", "mem3"]


def test_plug_skips_a_gap_that_is_too_small() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout, _ = plug(layout, "mem2", GIB, A128M)
    layout, mem3 = plug(layout, "mem3", GIB, A128M)
    layout = unplug(layout, "mem2")
    layout, big = plug(layout, "big", 2 * GIB, A128M)
    assert big.start_page == mem3.end_page


def test_plug_explicit_unaligned_start_gives_a_head() -> None:
    layout = window()
    start = layout.window_start_page + 1000
    layout, vdimm = plug(layout, "mem1", GIB, A128M, start_page=start)
    assert vdimm.start_page == start
    assert vdimm.usable_start == layout.window_start_page + A128M_PAGES
    assert vdimm.head_pages == A128M_PAGES - 1000
    # 1 GiB minus the head holds 7 whole 128 MiB units; the rest is the tail.
    assert vdimm.usable_count == 7 * A128M_PAGES
    assert vdimm.tail_pages == 1000
    assert vdimm.usable_start % A128M_PAGES == 0


def test_plug_explicit_aligned_start() -> None:
    layout = window()
    start = layout.window_start_page + 4 * A128M_PAGES
    layout, vdimm = plug(layout, "mem1", GIB, A128M, start_page=start)
    assert (vdimm.start_page, vdimm.head_pages, vdimm.tail_pages) == (start, 0, 0)
    layout, low = plug(layout, "low", 512 * MIB, A128M)
    assert low.start_page == layout.window_start_page  # first fit still uses the gap before it
    assert [v.backend_id for v in layout.vdimms] == ["low", "mem1"]


@pytest.mark.parametrize("size", [0, -4096, 4097, 4095, MIB + 1])
def test_plug_not_page_multiple(size: int) -> None:
    with pytest.raises(AllocationError) as excinfo:
        plug(window(), "mem1", size, A128M)
    assert reason_of(excinfo) is AllocationReason.NOT_PAGE_MULTIPLE
    assert str(excinfo.value).startswith("NOT_PAGE_MULTIPLE")


def test_plug_duplicate_id() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    with pytest.raises(AllocationError) as excinfo:
        plug(layout, "mem1", GIB, A128M)
    assert reason_of(excinfo) is AllocationReason.DUPLICATE_ID


def test_plug_backend_too_small_for_one_alignment_unit() -> None:
    with pytest.raises(AllocationError) as excinfo:
        plug(window(), "mem1", 127 * MIB, A128M)
    assert reason_of(excinfo) is AllocationReason.BACKEND_TOO_SMALL
    _, vdimm = plug(window(), "mem1", 128 * MIB, A128M)
    assert vdimm.usable_count == A128M_PAGES


def test_plug_backend_too_small_after_the_head() -> None:
    layout = window()
    with pytest.raises(AllocationError) as excinfo:
        plug(layout, "mem1", 128 * MIB, A128M, start_page=layout.window_start_page + 1)
    assert reason_of(excinfo) is AllocationReason.BACKEND_TOO_SMALL


def test_plug_window_exhausted() -> None:
    layout = window(gib=4)
    layout, _ = plug(layout, "mem1", 3 * GIB, A128M)
    with pytest.raises(AllocationError) as excinfo:
        plug(layout, "mem2", 2 * GIB, A128M)
    assert reason_of(excinfo) is AllocationReason.WINDOW_EXHAUSTED
    layout, _ = plug(layout, "mem2", GIB, A128M)  # exactly fills the window
    assert layout.vdimms[-1].end_page == layout.window_end_page


def test_plug_window_exhausted_by_alignment() -> None:
    # 1.5 GiB free, but no 1 GiB-aligned slot of 1 GiB: [32.25, 33.75) GiB.
    layout = new_layout(32 * GIB_PAGES, 32 * GIB_PAGES + 7 * GIB_PAGES // 4)
    layout, _ = plug(layout, "mem1", 256 * MIB, A128M)
    with pytest.raises(AllocationError) as excinfo:
        plug(layout, "mem2", GIB, 10)
    assert reason_of(excinfo) is AllocationReason.WINDOW_EXHAUSTED
    layout, _ = plug(layout, "mem2", GIB, A128M)  # with 128 MiB alignment it fits


def test_plug_explicit_start_not_free() -> None:
    layout, mem1 = plug(window(), "mem1", GIB, A128M)
    for start in (mem1.start_page, mem1.end_page - 1, layout.window_start_page - A128M_PAGES):
        with pytest.raises(AllocationError) as excinfo:
            plug(layout, "mem2", GIB, A128M, start_page=start)
        assert reason_of(excinfo) is AllocationReason.WINDOW_EXHAUSTED
    with pytest.raises(AllocationError) as excinfo:
        plug(layout, "mem2", GIB, A128M, start_page=layout.window_end_page - A128M_PAGES)
    assert reason_of(excinfo) is AllocationReason.WINDOW_EXHAUSTED
    _, mem2 = plug(layout, "mem2", GIB, A128M, start_page=mem1.end_page)
    assert mem2.start_page == mem1.end_page


def test_plug_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        plug(window(), "mem1", GIB, 16)
    with pytest.raises(ValueError):
        plug(window(), "", GIB, A128M)
    with pytest.raises(ValueError):
        plug(window(), "mem1", GIB, A128M, start_page=-1)


# --- unplug ---------------------------------------------------------------------------------


def test_unplug_removes_only_that_vdimm() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout2, mem2 = plug(layout, "mem2", GIB, A128M)
    assert unplug(layout2, "mem1").vdimms == (mem2,)
    assert unplug(layout2, "mem2") == layout


def test_unplug_unknown_id() -> None:
    with pytest.raises(AllocationError) as excinfo:
        unplug(window(), "mem1")
    assert reason_of(excinfo) is AllocationReason.UNKNOWN_ID


def test_unplug_backend_in_use() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, A128M_PAGES, True)
    with pytest.raises(AllocationError) as excinfo:
        unplug(layout, "mem1")
    assert reason_of(excinfo) is AllocationReason.BACKEND_IN_USE
    # Hot-removing all of it does not free the backend: the guest keeps the blocks until reboot.
    layout = record_hot_remove(layout, "mem1", A128M_PAGES)
    with pytest.raises(AllocationError) as excinfo:
        unplug(layout, "mem1")
    assert reason_of(excinfo) is AllocationReason.BACKEND_IN_USE


def test_unplug_after_a_hot_add_that_added_nothing() -> None:
    # v2: a vDIMM of which nothing was accepted is skipped and may be deleted.
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, 0, False)
    assert layout.vdimms[0].remaining_pages == 0
    assert unplug(layout, "mem1").vdimms == ()


# --- plan_chunk -----------------------------------------------------------------------------


def test_plan_chunk_nothing_plugged() -> None:
    assert plan_chunk(window(), 10 * GIB_PAGES) is None


def test_plan_chunk_caps_at_two_gib() -> None:
    layout, vdimm = plug(window(gib=256), "mem1", 200 * GIB, A128M)
    assert plan_chunk(layout, 10**9) == HotAddChunk("mem1", vdimm.usable_start, HOT_ADD_CHUNK_PAGES)


def test_plan_chunk_rounds_down_to_the_alignment() -> None:
    layout, vdimm = plug(window(), "mem1", 4 * GIB, A128M)
    chunk = plan_chunk(layout, 300 * MIB // 4096)
    assert chunk == HotAddChunk("mem1", vdimm.usable_start, 256 * MIB // 4096)


def test_plan_chunk_below_one_alignment_unit_does_nothing() -> None:
    layout, _ = plug(window(), "mem1", 4 * GIB, A128M)
    assert plan_chunk(layout, A128M_PAGES - 1) is None
    assert plan_chunk(layout, 0) is None


def test_plan_chunk_does_not_skip_to_a_vdimm_with_smaller_alignment() -> None:
    layout, _ = plug(window(), "mem1", 4 * GIB, A128M)
    layout, _ = plug(layout, "mem2", 4 * GIB, 0)
    assert plan_chunk(layout, 1000) is None


def test_plan_chunk_alignment_larger_than_chunk() -> None:
    layout = new_layout(32 * GIB_PAGES, 256 * GIB_PAGES)
    layout, vdimm = plug(layout, "mem1", 96 * GIB, 15)  # 32 GiB alignment
    assert vdimm.start_page % alignment_pages(15) == 0
    chunk = plan_chunk(layout, 10**9)
    assert chunk == HotAddChunk("mem1", vdimm.usable_start, alignment_pages(15))
    assert plan_chunk(layout, alignment_pages(15) - 1) is None


def test_plan_chunk_limited_by_remaining() -> None:
    layout, vdimm = plug(window(), "mem1", 300 * MIB, A128M)
    assert plan_chunk(layout, 10**9) == HotAddChunk("mem1", vdimm.usable_start, 2 * A128M_PAGES)


def test_plan_chunk_walks_through_a_vdimm_then_the_next() -> None:
    layout, mem1 = plug(window(), "mem1", 5 * GIB, A128M)
    layout, mem2 = plug(layout, "mem2", GIB, A128M)
    starts = []
    while (chunk := plan_chunk(layout, 10**9)) is not None:
        starts.append((chunk.backend_id, chunk.start_page, chunk.page_count))
        layout = record_hot_add(layout, chunk.backend_id, chunk.page_count, chunk.page_count, True)
    half = HOT_ADD_CHUNK_PAGES
    assert starts == [
        ("mem1", mem1.usable_start, half),
        ("mem1", mem1.usable_start + half, half),
        ("mem1", mem1.usable_start + 2 * half, GIB_PAGES),
        ("mem2", mem2.usable_start, GIB_PAGES),
    ]
    assert layout.added_pages == 6 * GIB_PAGES
    assert all(v.remaining_pages == 0 and v.unusable_tail == 0 for v in layout.vdimms)


def test_plan_chunk_rejects_negative_max_pages() -> None:
    with pytest.raises(ValueError):
        plan_chunk(window(), -1)


# --- record_hot_add -------------------------------------------------------------------------


def test_record_hot_add_full_success() -> None:
    layout, _ = plug(window(), "mem1", 4 * GIB, A128M)
    layout2 = record_hot_add(layout, "mem1", HOT_ADD_CHUNK_PAGES, HOT_ADD_CHUNK_PAGES, True)
    vdimm = layout2.vdimms[0]
    assert (vdimm.added_pages, vdimm.unusable_tail, vdimm.remaining_pages) == (
        HOT_ADD_CHUNK_PAGES,
        0,
        HOT_ADD_CHUNK_PAGES,
    )
    assert vdimm.added_range == (vdimm.usable_start, HOT_ADD_CHUNK_PAGES)
    assert layout2.added_pages == HOT_ADD_CHUNK_PAGES
    assert layout.vdimms[0].added_pages == 0  # immutable


def test_record_hot_add_clamps_an_over_claim() -> None:
    layout, _ = plug(window(), "mem1", 4 * GIB, A128M)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, 10 * A128M_PAGES, True)
    vdimm = layout.vdimms[0]
    assert (vdimm.added_pages, vdimm.unusable_tail) == (A128M_PAGES, 0)


def test_record_hot_add_partial_marks_the_rest_unusable() -> None:
    layout, _ = plug(window(), "mem1", 4 * GIB, A128M)
    layout, mem2 = plug(layout, "mem2", GIB, A128M)
    layout = record_hot_add(layout, "mem1", HOT_ADD_CHUNK_PAGES, 1000, True)
    vdimm = layout.get("mem1")
    assert vdimm is not None
    assert vdimm.added_pages == 1000
    assert vdimm.unusable_tail == 4 * GIB_PAGES - 1000
    assert vdimm.remaining_pages == 0
    # Nothing more from mem1 (until reboot); planning moves on to the next vDIMM.
    assert plan_chunk(layout, 10**9) == HotAddChunk("mem2", mem2.usable_start, GIB_PAGES)


def test_record_hot_add_failure_ignores_the_count() -> None:
    # QEMU reads page_count only when result != 0.
    layout, _ = plug(window(), "mem1", 4 * GIB, A128M)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, A128M_PAGES, True)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, A128M_PAGES, False)
    vdimm = layout.vdimms[0]
    assert vdimm.added_pages == A128M_PAGES
    assert vdimm.unusable_tail == 4 * GIB_PAGES - A128M_PAGES
    assert plan_chunk(layout, 10**9) is None


def test_record_hot_add_success_with_zero_pages_gives_up() -> None:
    # Protocol: page_count 0 with result 1 tells the host to give up permanently.
    layout, _ = plug(window(), "mem1", 4 * GIB, A128M)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, 0, True)
    vdimm = layout.vdimms[0]
    assert (vdimm.added_pages, vdimm.unusable_tail, vdimm.remaining_pages) == (0, 4 * GIB_PAGES, 0)


def test_record_hot_add_last_chunk_leaves_no_unusable_tail() -> None:
    layout, _ = plug(window(), "mem1", 256 * MIB, A128M)
    layout = record_hot_add(layout, "mem1", 2 * A128M_PAGES, 2 * A128M_PAGES, True)
    vdimm = layout.vdimms[0]
    assert (vdimm.added_pages, vdimm.unusable_tail, vdimm.remaining_pages) == (2 * A128M_PAGES, 0, 0)


def test_record_hot_add_unknown_id() -> None:
    with pytest.raises(AllocationError) as excinfo:
        record_hot_add(window(), "mem1", A128M_PAGES, A128M_PAGES, True)
    assert reason_of(excinfo) is AllocationReason.UNKNOWN_ID


@pytest.mark.parametrize("offered", [0, -A128M_PAGES, 1000, 3 * A128M_PAGES])
def test_record_hot_add_rejects_an_offer_that_was_not_planned(offered: int) -> None:
    layout, _ = plug(window(), "mem1", 256 * MIB, A128M)
    with pytest.raises(ValueError):
        record_hot_add(layout, "mem1", offered, 0, True)


def test_record_hot_add_rejects_an_offer_after_giving_up() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, 0, False)
    with pytest.raises(ValueError):
        record_hot_add(layout, "mem1", A128M_PAGES, A128M_PAGES, True)


def test_record_hot_add_rejects_negative_accepted() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    with pytest.raises(ValueError):
        record_hot_add(layout, "mem1", A128M_PAGES, -1, True)


# --- record_hot_remove ----------------------------------------------------------------------


def test_record_hot_remove_accumulates_up_to_what_is_present() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout = record_hot_add(layout, "mem1", 2 * A128M_PAGES, 2 * A128M_PAGES, True)
    layout = record_hot_remove(layout, "mem1", A128M_PAGES)
    layout = record_hot_remove(layout, "mem1", A128M_PAGES - 1)
    vdimm = layout.vdimms[0]
    assert vdimm.removed_pages == 2 * A128M_PAGES - 1
    assert vdimm.added_pages == 2 * A128M_PAGES  # hot-remove does not shrink what was added
    assert vdimm.remaining_pages == GIB_PAGES - 2 * A128M_PAGES
    with pytest.raises(ValueError):
        record_hot_remove(layout, "mem1", 2)
    assert record_hot_remove(layout, "mem1", 1).vdimms[0].removed_pages == 2 * A128M_PAGES
    assert record_hot_remove(layout, "mem1", 0) == layout


def test_record_hot_remove_nothing_added() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    with pytest.raises(ValueError):
        record_hot_remove(layout, "mem1", 1)


def test_record_hot_remove_negative() -> None:
    layout, _ = plug(window(), "mem1", GIB, A128M)
    layout = record_hot_add(layout, "mem1", A128M_PAGES, A128M_PAGES, True)
    with pytest.raises(ValueError):
        record_hot_remove(layout, "mem1", -1)


def test_record_hot_remove_unknown_id() -> None:
    with pytest.raises(AllocationError) as excinfo:
        record_hot_remove(window(), "mem1", 1)
    assert reason_of(excinfo) is AllocationReason.UNKNOWN_ID


# --- release_all ----------------------------------------------------------------------------


def test_release_all_returns_ids_in_address_order() -> None:
    layout = window()
    base = layout.window_start_page
    layout, _ = plug(layout, "high", GIB, A128M, start_page=base + 8 * GIB_PAGES)
    layout, _ = plug(layout, "low", GIB, A128M)
    layout, _ = plug(layout, "mid", GIB, A128M, start_page=base + 4 * GIB_PAGES)
    layout = record_hot_add(layout, "mid", A128M_PAGES, A128M_PAGES, True)
    released, ids = release_all(layout)
    assert ids == ("low", "mid", "high")
    assert released == new_layout(layout.window_start_page, layout.window_end_page)
    assert released.added_pages == 0
    # After reboot the backends can be re-added (v2: management re-issues hv-balloon-add-memory).
    relaid, vdimm = plug(released, "mid", GIB, A128M)
    assert vdimm.start_page == base
    assert relaid.added_pages == 0


def test_release_all_of_empty_layout() -> None:
    layout = window()
    assert release_all(layout) == (layout, ())


# --- find_vdimm -----------------------------------------------------------------------------


def test_find_vdimm_covers_head_usable_and_tail() -> None:
    layout = window()
    base = layout.window_start_page
    layout, mem1 = plug(layout, "mem1", 300 * MIB, A128M, start_page=base + 100)
    layout, mem2 = plug(layout, "mem2", GIB, A128M)
    assert mem1.head_pages > 0 and mem1.tail_pages > 0
    assert find_vdimm(layout, base + 99) is None
    assert find_vdimm(layout, base + 100) == mem1
    assert find_vdimm(layout, mem1.usable_start) == mem1
    assert find_vdimm(layout, mem1.end_page - 1) == mem1
    assert find_vdimm(layout, mem1.end_page) is None
    assert find_vdimm(layout, mem2.start_page) == mem2
    assert find_vdimm(layout, mem2.end_page - 1) == mem2
    assert find_vdimm(layout, mem2.end_page) is None
    assert find_vdimm(layout, 0) is None


# --- value invariants and snapshots ---------------------------------------------------------


def test_layout_rejects_overlap_outside_window_and_duplicates() -> None:
    layout, mem1 = plug(window(), "mem1", GIB, A128M)
    _, mem2 = plug(layout, "mem2", GIB, A128M)
    start, end = layout.window_start_page, layout.window_end_page
    with pytest.raises(ValueError):
        VdimmLayout(start, end, (mem2, mem1))  # unsorted
    with pytest.raises(ValueError):
        VdimmLayout(start, end, (mem1, mem1))  # overlapping / duplicate
    with pytest.raises(ValueError):
        VdimmLayout(start + 1, end, (mem1,))  # starts before the window
    with pytest.raises(ValueError):
        VdimmLayout(start, mem1.end_page - 1, (mem1,))  # runs past the end
    other = Vdimm(
        backend_id="mem1",
        size_bytes=GIB,
        start_page=mem2.start_page,
        page_count=GIB_PAGES,
        usable_start=mem2.start_page,
        usable_count=GIB_PAGES,
        alignment_pages=A128M_PAGES,
    )
    with pytest.raises(ValueError):
        VdimmLayout(start, end, (mem1, other))  # duplicate id
    assert VdimmLayout(start, end, [mem1, mem2]).vdimms == (mem1, mem2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"size_bytes": GIB + 1},
        {"page_count": GIB_PAGES - 1},
        {"alignment_pages": 1000},
        {"usable_start": 1},
        {"usable_count": GIB_PAGES - 1},
        {"usable_count": GIB_PAGES - A128M_PAGES},  # not maximal: tail >= alignment
        {"added_pages": GIB_PAGES + 1},
        {"added_pages": 1000},  # unaligned while pages remain
        {"added_pages": A128M_PAGES, "unusable_tail": A128M_PAGES},  # not "the rest"
        {"removed_pages": 1},
        {"start_page": -1, "usable_start": 0},
        {"backend_id": ""},
    ],
)
def test_vdimm_rejects_inconsistent_fields(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "backend_id": "mem1",
        "size_bytes": GIB,
        "start_page": 0,
        "page_count": GIB_PAGES,
        "usable_start": 0,
        "usable_count": GIB_PAGES,
        "alignment_pages": A128M_PAGES,
    }
    Vdimm(**fields)  # type: ignore[arg-type]
    fields.update(changes)
    with pytest.raises(ValueError):
        Vdimm(**fields)  # type: ignore[arg-type]


def test_vdimm_rejects_non_int_fields() -> None:
    with pytest.raises(TypeError):
        Vdimm("mem1", GIB, 0, GIB_PAGES, 0, GIB_PAGES, A128M_PAGES, added_pages=True)
    with pytest.raises(TypeError):
        Vdimm("mem1", GIB, 0, GIB_PAGES, 0, GIB_PAGES, A128M_PAGES, added_pages=1.0)  # type: ignore[arg-type]


def test_values_are_frozen() -> None:
    layout, vdimm = plug(window(), "mem1", GIB, A128M)
    with pytest.raises(AttributeError):
        vdimm.added_pages = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        layout.vdimms = ()  # type: ignore[misc]


def _busy_layout() -> VdimmLayout:
    layout = window()
    layout, _ = plug(layout, "a", 300 * MIB, A128M, start_page=layout.window_start_page + 7)
    layout, _ = plug(layout, "b", 4 * GIB, A128M)
    layout, _ = plug(layout, "c", GIB, 3)
    layout = record_hot_add(layout, "b", HOT_ADD_CHUNK_PAGES, HOT_ADD_CHUNK_PAGES, True)
    layout = record_hot_add(layout, "b", HOT_ADD_CHUNK_PAGES, 12345, True)
    layout = record_hot_remove(layout, "b", 999)
    return layout


def test_snapshot_round_trip_through_json() -> None:
    layout = _busy_layout()
    data = json.loads(json.dumps(layout.to_dict()))
    assert data["format"] == 1
    assert VdimmLayout.from_dict(data) == layout
    assert new_layout(3, 4) == VdimmLayout.from_dict(new_layout(3, 4).to_dict())


def test_snapshot_rejects_bad_input() -> None:
    data = _busy_layout().to_dict()
    with pytest.raises(ValueError):
        VdimmLayout.from_dict({**data, "format": 2})
    with pytest.raises(ValueError):
        VdimmLayout.from_dict({**data, "extra": 1})
    with pytest.raises(TypeError):
        VdimmLayout.from_dict({**data, "vdimms": "nope"})
    corrupt = json.loads(json.dumps(data))
    corrupt["vdimms"][1]["added_pages"] = corrupt["vdimms"][1]["usable_count"] + 1
    with pytest.raises(ValueError):
        VdimmLayout.from_dict(corrupt)
    missing = json.loads(json.dumps(data))
    del missing["vdimms"][0]["removed_pages"]
    with pytest.raises(ValueError):
        VdimmLayout.from_dict(missing)
    unknown = json.loads(json.dumps(data))
    unknown["vdimms"][0]["colour"] = "red"
    with pytest.raises(ValueError):
        VdimmLayout.from_dict(unknown)
    typed = json.loads(json.dumps(data))
    typed["window_end_page"] = str(typed["window_end_page"])
    with pytest.raises(TypeError):
        VdimmLayout.from_dict(typed)


def test_docstring_examples() -> None:
    result = doctest.testmod(allocator_module)
    assert result.attempted > 0
    assert result.failed == 0
