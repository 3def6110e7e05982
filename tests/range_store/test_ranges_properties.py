"""Property tests: PageRangeSet against a plain ``set`` of page numbers on a small universe.

The state machine runs every operation (checking its return value) and re-checks the invariants after
each step. It runs under several sublist loads, so that splits, joins and changes spanning several
sublists happen on a universe of 200 pages, and with the batch methods forced onto each of their two
strategies (range by range, and rebuild), plus once at the top of the 64-bit page space.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.range_store import PageRangeSet, RangeBatch, coalesce
from services.range_store import ranges as ranges_mod
from services.range_store.ranges import MAX_END

UNIVERSE = 200

rel_pages = st.integers(min_value=0, max_value=UNIVERSE)
# Mostly short ranges, so that the set stays fragmented and boundaries meet often.
counts = st.one_of(
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=0, max_value=UNIVERSE),
)
rel_ranges = st.tuples(rel_pages, counts)
rel_batches = st.lists(rel_ranges, max_size=24)


def model_ranges(pages: set[int]) -> list[tuple[int, int]]:
    """The merged (start, count) ranges of a set of pages, ascending."""
    out: list[tuple[int, int]] = []
    for p in sorted(pages):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def pages_of(ranges: list[tuple[int, int]]) -> set[int]:
    return {p for s, c in ranges for p in range(s, s + c)}


def check_structure(s: PageRangeSet) -> None:
    """Invariants, through the public API and on the internal layout."""
    listed = s.to_list()
    assert listed == list(s)
    assert listed[::-1] == list(reversed(s))
    assert len(s) == len(listed)
    assert s.page_count == sum(c for _, c in listed)
    for start, count in listed:
        assert start >= 0
        assert count > 0
    for (s1, c1), (s2, _) in pairwise(listed):
        assert s1 + c1 < s2, "ranges must be sorted, disjoint and non-adjacent"
    lists, mins = s._lists, s._mins
    assert len(lists) == len(mins)
    flat: list[int] = []
    for sub, first in zip(lists, mins, strict=True):
        assert sub, "no empty sublist"
        assert len(sub) % 2 == 0, "a sublist holds whole ranges"
        assert len(sub) <= 2 * ranges_mod._LOAD
        assert sub[0] == first
        flat += sub
    assert all(a < b for a, b in pairwise(flat))
    assert len(flat) == 2 * len(s)


class PageRangeSetMachine(RuleBasedStateMachine):
    """One PageRangeSet and the set of pages it should hold."""

    OFFSET = 0

    def __init__(self) -> None:
        super().__init__()
        self.s = PageRangeSet()
        self.model: set[int] = set()

    def shift(self, batch: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return [(start + self.OFFSET, count) for start, count in batch]

    @initialize(batch=rel_batches)
    def construct(self, batch: list[tuple[int, int]]) -> None:
        batch = self.shift(batch)
        self.s = PageRangeSet(batch)
        self.model = pages_of(batch)

    @rule(start=rel_pages, count=counts)
    def add(self, start: int, count: int) -> None:
        start += self.OFFSET
        new = set(range(start, start + count)) - self.model
        assert self.s.add(start, count) == len(new)
        self.model |= new

    @rule(start=rel_pages, count=counts)
    def remove(self, start: int, count: int) -> None:
        start += self.OFFSET
        gone = set(range(start, start + count)) & self.model
        assert self.s.remove(start, count) == len(gone)
        self.model -= gone

    @rule(batch=rel_batches)
    def add_many(self, batch: list[tuple[int, int]]) -> None:
        batch = self.shift(batch)
        new = pages_of(batch) - self.model
        assert self.s.add_many(batch) == len(new)
        self.model |= new

    @rule(batch=rel_batches)
    def remove_many(self, batch: list[tuple[int, int]]) -> None:
        batch = self.shift(batch)
        gone = pages_of(batch) & self.model
        assert self.s.remove_many(batch) == len(gone)
        self.model -= gone

    @rule(batch=rel_batches)
    def batch_checks(self, batch: list[tuple[int, int]]) -> None:
        """``RangeBatch`` is ``coalesce`` plus its counts; ``covers``/``isdisjoint`` match the model."""
        batch = self.shift(batch)
        b = RangeBatch(batch)
        pages = pages_of(batch)
        assert b.to_list() == coalesce(batch) == model_ranges(pages)
        assert b.pages == len(pages) and len(b) == len(b.to_list())
        assert b.empty == sum(1 for _, c in batch if c == 0)
        assert b.repeats == (sum(c for _, c in batch) != len(pages))
        assert self.s.covers(b) == (pages <= self.model)
        assert self.s.isdisjoint(b) == (not pages & self.model)

    @rule(start=rel_pages, count=counts)
    def overlap_count(self, start: int, count: int) -> None:
        start += self.OFFSET
        assert self.s.overlap_count(start, count) == len(set(range(start, start + count)) & self.model)

    @rule(page=st.integers(min_value=-2, max_value=UNIVERSE + 2))
    def contains(self, page: int) -> None:
        page += self.OFFSET
        assert (page in self.s) == (page in self.model)

    @rule(max_pages=st.integers(min_value=0, max_value=40))
    def pop_highest(self, max_pages: int) -> None:
        got = self.s.pop_highest(max_pages)
        ranges = model_ranges(self.model)
        if not ranges or not max_pages:
            assert got is None
            return
        start, count = ranges[-1]
        want = (start + count - max_pages, max_pages) if count > max_pages else (start, count)
        assert got == want
        self.model -= set(range(want[0], want[0] + want[1]))

    @rule(
        max_pages=st.integers(min_value=0, max_value=UNIVERSE),
        max_ranges=st.integers(min_value=0, max_value=6),
        lo=st.integers(min_value=-2, max_value=UNIVERSE + 2),
        width=st.one_of(st.none(), st.integers(min_value=-2, max_value=UNIVERSE + 2)),
    )
    def peek_highest(self, max_pages: int, max_ranges: int, lo: int, width: int | None) -> None:
        lo += self.OFFSET
        hi = None if width is None else lo + width
        before = self.s.to_list()
        got = self.s.peek_highest(max_pages, max_ranges, lo, hi)
        assert self.s.to_list() == before, "peek_highest must not mutate"
        window = {p for p in self.model if p >= lo and (hi is None or p < hi)}
        want: list[tuple[int, int]] = []
        remaining = max_pages
        for start, count in reversed(model_ranges(window)):
            if remaining == 0 or len(want) >= max_ranges:
                break
            take = min(count, remaining)
            want.append((start + count - take, take))
            remaining -= take
        assert got == want
        # And it is what pop_highest would return on the windowed set.
        if hi is None and lo <= self.OFFSET and max_ranges:
            probe = self.s.copy()
            popped: list[tuple[int, int]] = []
            remaining = max_pages
            while remaining and len(popped) < max_ranges:
                item = probe.pop_highest(remaining)
                if item is None:
                    break
                popped.append(item)
                remaining -= item[1]
            assert popped == got

    @rule(batch=rel_batches)
    def intersection(self, batch: list[tuple[int, int]]) -> None:
        batch = self.shift(batch)
        assert self.s.intersection(batch) == model_ranges(pages_of(batch) & self.model)

    @rule(batch=rel_batches)
    def difference(self, batch: list[tuple[int, int]]) -> None:
        batch = self.shift(batch)
        assert self.s.difference(batch) == model_ranges(pages_of(batch) - self.model)

    @rule(lo=st.integers(min_value=-2, max_value=UNIVERSE + 2), width=st.integers(-2, UNIVERSE + 2))
    def irange(self, lo: int, width: int) -> None:
        lo += self.OFFSET
        hi = lo + width
        want = model_ranges({p for p in self.model if lo <= p < hi})
        assert list(self.s.irange(lo, hi)) == want

    @rule(start=rel_pages, count=st.integers(min_value=1, max_value=8))
    def copy_is_equal_and_independent(self, start: int, count: int) -> None:
        start += self.OFFSET
        clone = self.s.copy()
        assert clone == self.s
        assert clone.to_list() == self.s.to_list()
        clone.add(start, count)
        clone.remove(start, count)
        clone.add(start, count)
        assert self.s.to_list() == model_ranges(self.model)
        assert (clone == self.s) == set(range(start, start + count)).issubset(self.model)

    @rule()
    def equality_is_by_content(self) -> None:
        rebuilt = PageRangeSet(reversed(model_ranges(self.model)))
        assert rebuilt == self.s
        assert (rebuilt != self.s) is False  # __ne__ derives from __eq__
        assert PageRangeSet(list(self.s)) == self.s
        assert eval(repr(self.s), {"PageRangeSet": PageRangeSet}) == self.s
        other = PageRangeSet([(UNIVERSE + 5 + self.OFFSET, 1)])
        assert other != self.s

    @precondition(lambda self: len(self.model) > UNIVERSE // 2)
    @rule()
    def clear(self) -> None:
        self.s.clear()
        self.model.clear()

    @invariant()
    def matches_model(self) -> None:
        check_structure(self.s)
        assert self.s.to_list() == model_ranges(self.model)
        assert self.s.page_count == len(self.model)


class FarPageRangeSetMachine(PageRangeSetMachine):
    """The same at the top of the 64-bit page space, where every stored end is close to MAX_END."""

    OFFSET = MAX_END - 2 * UNIVERSE - 8


#: ``vector`` for ``layout``: batches of any size merged by numpy (``_union_vector``), or never.
VECTOR_ALWAYS = (0, 10**9)
VECTOR_NEVER = (10**9, 0)


@contextmanager
def layout(load: int, rebuild_ratio: int, vector: tuple[int, int] = VECTOR_NEVER) -> Iterator[None]:
    """Run with a given sublist load and batch strategy thresholds."""
    saved = ranges_mod._LOAD, ranges_mod._REBUILD_RATIO, ranges_mod._VECTOR_MIN, ranges_mod._VECTOR_RATIO
    ranges_mod._LOAD, ranges_mod._REBUILD_RATIO = load, rebuild_ratio
    ranges_mod._VECTOR_MIN, ranges_mod._VECTOR_RATIO = vector
    try:
        yield
    finally:
        ranges_mod._LOAD, ranges_mod._REBUILD_RATIO, ranges_mod._VECTOR_MIN, ranges_mod._VECTOR_RATIO = saved


MACHINE_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    ("load", "rebuild_ratio", "vector"),
    [
        (2, 0, VECTOR_NEVER),  # tiny sublists, batches always range by range
        (4, 0, VECTOR_NEVER),
        (4, 10**9, VECTOR_NEVER),  # batches always rebuilt
        (6, 3, VECTOR_NEVER),
        (2, 0, VECTOR_ALWAYS),  # batches always merged by numpy, cut into tiny sublists
        (6, 0, VECTOR_ALWAYS),
        (ranges_mod._LOAD, ranges_mod._REBUILD_RATIO, (ranges_mod._VECTOR_MIN, ranges_mod._VECTOR_RATIO)),
    ],
)
def test_state_machine(load: int, rebuild_ratio: int, vector: tuple[int, int]) -> None:
    with layout(load, rebuild_ratio, vector):
        run_state_machine_as_test(PageRangeSetMachine, settings=MACHINE_SETTINGS)


@pytest.mark.parametrize(
    ("load", "rebuild_ratio", "vector"), [(4, 0, VECTOR_NEVER), (4, 10**9, VECTOR_NEVER), (4, 0, VECTOR_ALWAYS)]
)
def test_state_machine_big_page_numbers(load: int, rebuild_ratio: int, vector: tuple[int, int]) -> None:
    with layout(load, rebuild_ratio, vector):
        run_state_machine_as_test(FarPageRangeSetMachine, settings=MACHINE_SETTINGS)


@given(st.lists(st.tuples(st.integers(0, 10**12), st.integers(0, 10**6)), max_size=40))
def test_coalesce_merges_sorts_and_drops_empty(batch: list[tuple[int, int]]) -> None:
    out = coalesce(batch)
    assert out == sorted(out)
    assert all(c > 0 for _, c in out)
    assert all(s1 + c1 < s2 for (s1, c1), (s2, _) in pairwise(out))
    # Same pages: compare as boundary sweeps (the ranges can be huge).
    assert PageRangeSet(out) == PageRangeSet(batch)
    assert sum(c for _, c in out) == PageRangeSet(batch).page_count


@given(rel_batches)
def test_coalesce_matches_page_model(batch: list[tuple[int, int]]) -> None:
    assert coalesce(batch) == model_ranges(pages_of(batch))


@given(rel_batches, rel_batches)
def test_add_many_equals_looping_add(stored: list[tuple[int, int]], batch: list[tuple[int, int]]) -> None:
    one = PageRangeSet(stored)
    many = PageRangeSet(stored)
    looped = sum(one.add(s, c) for s, c in batch)
    # A batch may overlap itself; looping add counts each new page once too.
    assert many.add_many(batch) == looped
    assert many == one
