"""Property tests for services.vdimm_allocator: random sequences of plug / unplug / plan+record /
hot-remove / release, checked against the layout invariants and a brute-force model of first fit."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.vdimm_allocator import (
    HOT_ADD_CHUNK_PAGES,
    AllocationError,
    AllocationReason,
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

PAGE = 4096
# Smaller alignments are drawn more often so windows hold many vDIMMs; n = 11..15 still shows up.
ALIGNMENTS = st.one_of(st.integers(0, 4), st.integers(0, 15))


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def expected_first_fit(layout: VdimmLayout, pages: int, align: int) -> int | None:
    """Brute-force model: walk every free interval, return the lowest aligned start that fits."""
    occupied = sorted((v.start_page, v.end_page) for v in layout.vdimms)
    free: list[tuple[int, int]] = []
    cursor = layout.window_start_page
    for start, end in occupied:
        if start > cursor:
            free.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < layout.window_end_page:
        free.append((cursor, layout.window_end_page))
    for start, end in free:
        candidate = _round_up(start, align)
        if candidate + pages <= end:
            return candidate
    return None


def check_layout(layout: VdimmLayout) -> None:
    ids = [v.backend_id for v in layout.vdimms]
    assert len(ids) == len(set(ids))
    previous_end = layout.window_start_page
    for v in layout.vdimms:
        assert layout.window_start_page <= v.start_page
        assert v.end_page <= layout.window_end_page
        assert previous_end <= v.start_page  # ascending and disjoint
        previous_end = v.end_page
        align = v.alignment_pages
        assert v.usable_start % align == 0
        assert v.usable_count % align == 0 and v.usable_count > 0
        assert 0 <= v.head_pages < align
        assert 0 <= v.tail_pages < align
        assert v.head_pages + v.usable_count + v.tail_pages == v.page_count == v.size_bytes // PAGE
        assert v.added_pages + v.unusable_tail <= v.usable_count
        assert v.remaining_pages >= 0
        assert 0 <= v.removed_pages <= v.added_pages
        assert find_vdimm(layout, v.start_page) == v
        assert find_vdimm(layout, v.end_page - 1) == v
    assert layout.added_pages == sum(v.added_pages for v in layout.vdimms)


class LayoutMachine(RuleBasedStateMachine):
    """The engine's view: a model of which ids are plugged, and every layout ever produced."""

    def __init__(self) -> None:
        super().__init__()
        self.layout = new_layout(0, 0)
        self.plugged: set[str] = set()
        self.next_id = 0
        self.history: list[tuple[VdimmLayout, dict[str, object]]] = []

    @initialize(
        start=st.integers(0, 1 << 24),
        length=st.one_of(st.integers(0, 1 << 16), st.integers(1 << 16, 1 << 26)),
    )
    def make_window(self, start: int, length: int) -> None:
        self.layout = new_layout(start, start + length)
        self._remember()

    def _remember(self) -> None:
        self.history.append((self.layout, json.loads(json.dumps(self.layout.to_dict()))))
        self.history = self.history[-8:]

    def _fresh_id(self) -> str:
        self.next_id += 1
        return f"mem{self.next_id}"

    @rule(data=st.data(), n=ALIGNMENTS)
    def plug_first_fit(self, data: st.DataObject, n: int) -> None:
        align = alignment_pages(n)
        window_len = self.layout.window_end_page - self.layout.window_start_page
        pages = data.draw(
            st.one_of(
                st.integers(1, 3 * align),
                st.integers(align, 4 * align),
                st.integers(1, max(1, window_len // 3)),
            ),
            label="pages",
        )
        reuse = self.plugged and data.draw(st.integers(0, 9), label="reuse") == 0
        backend_id = data.draw(st.sampled_from(sorted(self.plugged))) if reuse else self._fresh_id()
        expected = expected_first_fit(self.layout, pages, align)
        try:
            layout, vdimm = plug(self.layout, backend_id, pages * PAGE, n)
        except AllocationError as error:
            event(f"plug: {error.reason}")
            if backend_id in self.plugged:
                assert error.reason is AllocationReason.DUPLICATE_ID
            elif pages < align:
                assert error.reason is AllocationReason.BACKEND_TOO_SMALL
            else:
                assert error.reason is AllocationReason.WINDOW_EXHAUSTED
                assert expected is None
            return
        assert backend_id not in self.plugged
        assert vdimm.start_page == expected
        assert vdimm.head_pages == 0
        assert vdimm.usable_count == pages // align * align
        assert layout.get(backend_id) == vdimm
        self.layout = layout
        self.plugged.add(backend_id)

    @rule(data=st.data(), n=ALIGNMENTS)
    def plug_at(self, data: st.DataObject, n: int) -> None:
        align = alignment_pages(n)
        start = data.draw(
            st.integers(max(0, self.layout.window_start_page - align), self.layout.window_end_page),
            label="start",
        )
        pages = data.draw(st.integers(1, 3 * align), label="pages")
        backend_id = self._fresh_id()
        try:
            layout, vdimm = plug(self.layout, backend_id, pages * PAGE, n, start_page=start)
        except AllocationError as error:
            event(f"plug_at: {error.reason}")
            head = _round_up(start, align) - start
            if pages - head < align:
                assert error.reason is AllocationReason.BACKEND_TOO_SMALL
            else:
                assert error.reason is AllocationReason.WINDOW_EXHAUSTED
            return
        assert vdimm.start_page == start
        assert vdimm.head_pages == _round_up(start, align) - start
        self.layout = layout
        self.plugged.add(backend_id)

    @rule(data=st.data())
    def plug_bad_size(self, data: st.DataObject) -> None:
        unaligned = st.builds(lambda k, r: k * PAGE + r, st.integers(0, 1 << 28), st.integers(1, PAGE - 1))
        size = data.draw(st.one_of(st.integers(max_value=0), unaligned))
        try:
            plug(self.layout, self._fresh_id(), size, data.draw(ALIGNMENTS))
        except AllocationError as error:
            assert error.reason is AllocationReason.NOT_PAGE_MULTIPLE
        else:
            raise AssertionError("plug accepted a size that is not a positive multiple of 4096")

    @rule(data=st.data())
    def unplug_one(self, data: st.DataObject) -> None:
        known = sorted(self.plugged)
        backend_id = data.draw(st.sampled_from([*known, "never-plugged"]))
        try:
            layout = unplug(self.layout, backend_id)
        except AllocationError as error:
            event(f"unplug: {error.reason}")
            if backend_id not in self.plugged:
                assert error.reason is AllocationReason.UNKNOWN_ID
            else:
                assert error.reason is AllocationReason.BACKEND_IN_USE
                vdimm = self.layout.get(backend_id)
                assert vdimm is not None and vdimm.added_pages > 0
            return
        assert backend_id in self.plugged
        assert layout.get(backend_id) is None
        assert len(layout.vdimms) == len(self.layout.vdimms) - 1
        self.layout = layout
        self.plugged.discard(backend_id)

    @rule(
        max_pages=st.one_of(st.integers(0, 1 << 12), st.integers(0, 1 << 24), st.just(1 << 30)),
        outcome=st.sampled_from(["full", "over", "short", "fail", "fail-with-count"]),
        data=st.data(),
    )
    def plan_and_record(self, max_pages: int, outcome: str, data: st.DataObject) -> None:
        self._plan_and_record(max_pages, outcome, data)

    @rule(data=st.data(), chunks=st.integers(1, 6))
    def grow(self, data: st.DataObject, chunks: int) -> None:
        """The engine's usual path: plan and record fully accepted chunks toward a large target."""
        for _ in range(chunks):
            if not self._plan_and_record(1 << 30, "full", data):
                return

    def _plan_and_record(self, max_pages: int, outcome: str, data: st.DataObject) -> bool:
        chunk = plan_chunk(self.layout, max_pages)
        pending = [v for v in self.layout.vdimms if v.remaining_pages > 0]
        event(f"plan: {'none' if chunk is None else 'chunk'}, {len(pending)} pending")
        if chunk is None:
            if pending:  # only because the first pending vDIMM's unit is larger than the request
                first = pending[0]
                assert min(first.remaining_pages, max_pages) < first.alignment_pages
            return False
        vdimm = pending[0]
        align = vdimm.alignment_pages
        assert chunk.backend_id == vdimm.backend_id
        assert chunk.start_page == vdimm.usable_start + vdimm.added_pages
        assert chunk.start_page % align == 0
        assert chunk.page_count % align == 0 and chunk.page_count > 0
        assert chunk.page_count <= max(HOT_ADD_CHUNK_PAGES, align)
        assert chunk.page_count <= max_pages
        assert vdimm.usable_start <= chunk.start_page
        assert chunk.start_page + chunk.page_count <= vdimm.usable_start + vdimm.usable_count
        offered = chunk.page_count
        if outcome == "full":
            accepted, success = offered, True
        elif outcome == "over":
            accepted, success = offered + data.draw(st.integers(1, 1 << 20)), True
        elif outcome == "short":
            accepted, success = data.draw(st.integers(0, offered - 1)), True
        elif outcome == "fail":
            accepted, success = 0, False
        else:
            accepted, success = data.draw(st.integers(1, 2 * offered)), False
        event(f"record: {outcome}")
        layout = record_hot_add(self.layout, chunk.backend_id, offered, accepted, success)
        after = layout.get(chunk.backend_id)
        assert after is not None
        gained = min(accepted, offered) if success else 0
        assert after.added_pages == vdimm.added_pages + gained
        if gained < offered:
            assert after.unusable_tail == after.usable_count - after.added_pages
            assert after.remaining_pages == 0
        else:
            assert after.unusable_tail == 0
        assert layout.added_pages == self.layout.added_pages + gained
        self.layout = layout
        return True

    @precondition(lambda self: any(v.added_pages > v.removed_pages for v in self.layout.vdimms))
    @rule(data=st.data())
    def hot_remove(self, data: st.DataObject) -> None:
        candidates = [v for v in self.layout.vdimms if v.added_pages > v.removed_pages]
        vdimm = data.draw(st.sampled_from(candidates))
        present = vdimm.added_pages - vdimm.removed_pages
        pages = data.draw(st.integers(0, present + 1))
        if pages > present:
            try:
                record_hot_remove(self.layout, vdimm.backend_id, pages)
            except ValueError:
                return
            raise AssertionError("hot-remove of more than is present was accepted")
        layout = record_hot_remove(self.layout, vdimm.backend_id, pages)
        after = layout.get(vdimm.backend_id)
        assert after is not None and after.removed_pages == vdimm.removed_pages + pages
        self.layout = layout

    @rule()
    def reboot(self) -> None:
        before = self.layout
        layout, ids = release_all(before)
        assert sorted(ids) == sorted(self.plugged)
        assert len(ids) == len(set(ids))
        starts = [before.get(i).start_page for i in ids]  # type: ignore[union-attr]
        assert starts == sorted(starts)
        assert layout.vdimms == ()
        assert (layout.window_start_page, layout.window_end_page) == (
            before.window_start_page,
            before.window_end_page,
        )
        self.layout = layout
        self.plugged.clear()

    @invariant()
    def layout_is_consistent(self) -> None:
        check_layout(self.layout)
        assert {v.backend_id for v in self.layout.vdimms} == self.plugged

    @invariant()
    def snapshots_round_trip_and_old_layouts_never_change(self) -> None:
        data = json.loads(json.dumps(self.layout.to_dict()))
        assert VdimmLayout.from_dict(data) == self.layout
        for old, old_data in self.history:
            assert old.to_dict() == old_data
        self._remember()


LayoutMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLayoutMachine = LayoutMachine.TestCase


@given(
    n=st.integers(0, 15),
    window_start=st.integers(0, 1 << 30),
    pages=st.integers(1, 1 << 26),
    offset=st.integers(0, 1 << 24),
)
@settings(max_examples=300, deadline=None)
def test_plug_at_any_start_trims_head_and_tail(n: int, window_start: int, pages: int, offset: int) -> None:
    align = alignment_pages(n)
    layout = new_layout(window_start, window_start + offset + pages)
    start = window_start + offset
    head = _round_up(start, align) - start
    assume(pages - head >= align)
    _, vdimm = plug(layout, "mem1", pages * PAGE, n, start_page=start)
    assert vdimm.head_pages == head
    assert vdimm.usable_count == (pages - head) // align * align
    assert vdimm.tail_pages == pages - head - vdimm.usable_count < align


@given(n=st.integers(0, 15), units=st.integers(1, 40), max_pages=st.integers(0, 1 << 26))
@settings(max_examples=300, deadline=None)
def test_hot_adding_everything_plans_aligned_bounded_chunks(n: int, units: int, max_pages: int) -> None:
    align = alignment_pages(n)
    layout, vdimm = plug(new_layout(0, units * align), "mem1", units * align * PAGE, n)
    total = 0
    while (chunk := plan_chunk(layout, max_pages)) is not None:
        assert chunk.start_page == vdimm.usable_start + total
        assert chunk.page_count % align == 0
        assert chunk.page_count <= min(max(HOT_ADD_CHUNK_PAGES, align), max_pages)
        layout = record_hot_add(layout, "mem1", chunk.page_count, chunk.page_count, True)
        total += chunk.page_count
    if max_pages >= align:
        assert total == vdimm.usable_count
    else:
        assert total == 0
    assert layout.added_pages == total
