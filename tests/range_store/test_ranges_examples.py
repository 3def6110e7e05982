"""Example tests for PageRangeSet: merging, splitting, unballoon order, huge ranges, memory."""

from __future__ import annotations

import copy
import doctest

import pytest

import services.range_store.ranges as ranges_mod
from bench.ranges import deep_sizeof
from services.range_store import PageRangeSet, RangeBatch, coalesce
from services.range_store.ranges import MAX_END

TIB_PAGES = 1 << 28


def test_doctests() -> None:
    result = doctest.testmod(ranges_mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 30  # every public method carries an example
    assert result.failed == 0


# ------------------------------------------------------------------------------------ merging


def test_add_merges_left_right_and_both_sides() -> None:
    s = PageRangeSet([(0, 4), (10, 4)])
    assert s.add(4, 2) == 2  # touches the left range: extends it
    assert s.to_list() == [(0, 6), (10, 4)]
    assert s.add(8, 2) == 2  # touches the right range: moves its start down
    assert s.to_list() == [(0, 6), (8, 6)]
    assert s.add(6, 2) == 2  # fills the gap: joins both
    assert s.to_list() == [(0, 14)]
    assert (len(s), s.page_count) == (1, 14)


def test_add_isolated_and_inside() -> None:
    s = PageRangeSet([(10, 10)])
    assert s.add(0, 5) == 5
    assert s.add(30, 1) == 1
    assert s.add(12, 3) == 0  # already present: a double free
    assert s.to_list() == [(0, 5), (10, 10), (30, 1)]


def test_add_swallows_several_ranges_and_counts_only_new_pages() -> None:
    s = PageRangeSet([(2, 2), (6, 2), (10, 2)])
    assert s.add(0, 20) == 14
    assert s.to_list() == [(0, 20)]
    assert len(s) == 1


def test_add_many_with_overlapping_batch() -> None:
    s = PageRangeSet([(100, 10)])
    batch = [(5, 5), (0, 10), (8, 4), (105, 10), (12, 0), (50, 1), (50, 1)]
    assert s.add_many(batch) == 12 + 1 + 5
    assert s.to_list() == [(0, 12), (50, 1), (100, 15)]


@pytest.mark.parametrize("ratio", [0, 10**9])
def test_add_many_both_strategies_agree(monkeypatch: pytest.MonkeyPatch, ratio: int) -> None:
    monkeypatch.setattr(ranges_mod, "_REBUILD_RATIO", ratio)
    s = PageRangeSet([(0, 2), (10, 2), (20, 2)])
    assert s.add_many([(2, 1), (9, 1), (12, 8), (30, 1)]) == 1 + 1 + 8 + 1
    assert s.to_list() == [(0, 3), (9, 13), (30, 1)]


@pytest.mark.parametrize("vector", [False, True])
def test_add_many_vector_strategy_agrees_on_a_fragmented_balloon(monkeypatch: pytest.MonkeyPatch, vector: bool) -> None:
    """The benchmark's worst case in small: 2 MiB ranges shuffled over RAM, 510 per message, merged
    by numpy (``_union_vector``) or range by range; both end with the same set and counts."""
    import random

    monkeypatch.setattr(ranges_mod, "_LOAD", 64)  # many sublists, so re-cutting them is exercised
    monkeypatch.setattr(ranges_mod, "_VECTOR_MIN", 0 if vector else 10**9)
    monkeypatch.setattr(ranges_mod, "_VECTOR_RATIO", 10**9)
    monkeypatch.setattr(ranges_mod, "_REBUILD_RATIO", 0)
    starts = list(range(0, 4096 * 512, 512))
    random.Random(7).shuffle(starts)
    s = PageRangeSet()
    model = PageRangeSet()
    for m in range(0, 3000, 510):
        batch = [(p, 512) for p in starts[m : m + 510]] + [(starts[m] + 1, 3)]  # one repeat
        added = s.add_many(batch)
        assert added == sum(model.add(p, c) for p, c in batch)
        assert s == model and len(s) == len(model) and s.page_count == model.page_count
        assert [len(sub) % 2 for sub in s._lists] == [0] * len(s._lists)
        assert list(s._mins) == [sub[0] for sub in s._lists]


def test_vector_add_many_rejects_a_bad_batch_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranges_mod, "_VECTOR_MIN", 0)
    monkeypatch.setattr(ranges_mod, "_VECTOR_RATIO", 10**9)
    s = PageRangeSet([(0, 4), (MAX_END - 3, 2)])
    for bad in ([(8, 1), (-1, 1)], [(8, 1), (1, -1)], [(MAX_END - 5, 6)], [(MAX_END, 1)], [(1 << 64, 1)]):
        with pytest.raises(ValueError):
            s.add_many(bad)
    assert s.to_list() == [(0, 4), (MAX_END - 3, 2)]
    assert s.add_many(iter([(4, 2), (MAX_END - 1, 1), (9, 0)])) == 3  # any iterable; an end at MAX_END
    assert s.to_list() == [(0, 6), (MAX_END - 3, 3)]


def test_range_batch_rejects_what_cannot_be_stored() -> None:
    for bad in ([(-1, 1)], [(1, -1)], [(MAX_END, 1)], [(1 << 64, 0)]):
        with pytest.raises(ValueError):
            RangeBatch(bad)
    b = RangeBatch([(MAX_END - 1, 1), (0, 0)])
    assert b.to_list() == [(MAX_END - 1, 1)] and b.empty == 1 and not b.repeats
    assert PageRangeSet([(MAX_END - 5, 5)]).covers(b)
    assert RangeBatch([]).to_list() == [] and PageRangeSet().covers(RangeBatch([]))


def test_zero_counts_are_no_ops() -> None:
    s = PageRangeSet([(0, 4)])
    assert s.add(10, 0) == 0
    assert s.remove(2, 0) == 0
    assert s.add_many([(10, 0), (20, 0)]) == 0
    assert s.remove_many([(0, 0)]) == 0
    assert s.overlap_count(0, 0) == 0
    assert s.to_list() == [(0, 4)]
    assert PageRangeSet([(5, 0)]).to_list() == []


def test_negative_values_raise() -> None:
    s = PageRangeSet([(0, 4)])
    for bad in ((-1, 1), (1, -1)):
        with pytest.raises(ValueError):
            s.add(*bad)
        with pytest.raises(ValueError):
            s.remove(*bad)
        with pytest.raises(ValueError):
            s.overlap_count(*bad)
        with pytest.raises(ValueError):
            s.add_many([(8, 1), bad])
        with pytest.raises(ValueError):
            s.remove_many([bad])
        with pytest.raises(ValueError):
            s.intersection([bad])
        with pytest.raises(ValueError):
            s.difference([bad])
        with pytest.raises(ValueError):
            PageRangeSet([bad])
        with pytest.raises(ValueError):
            coalesce([bad])
    with pytest.raises(ValueError):
        s.pop_highest(-1)
    with pytest.raises(ValueError):
        s.peek_highest(-1, 1)
    with pytest.raises(ValueError):
        s.peek_highest(1, -1)
    assert s.to_list() == [(0, 4)], "a rejected batch changes nothing"


def test_range_end_must_fit_in_64_bits() -> None:
    s = PageRangeSet()
    assert s.add(MAX_END - 1, 1) == 1  # the last storable page
    with pytest.raises(ValueError):
        s.add(MAX_END, 1)
    with pytest.raises(ValueError):
        s.add_many([(0, 1), (MAX_END - 5, 6)])
    with pytest.raises(ValueError):
        PageRangeSet([(0, MAX_END + 1)])
    assert s.to_list() == [(MAX_END - 1, 1)]
    # Removing and querying beyond it is fine: nothing is stored there.
    assert s.overlap_count(0, 1 << 70) == 1
    assert s.remove(MAX_END - 1, 1 << 70) == 1
    assert s.difference([(MAX_END, 10)]) == [(MAX_END, 10)]
    assert (1 << 70) not in s


# ------------------------------------------------------------------------------------ removing


def test_remove_splits_cuts_and_drops() -> None:
    s = PageRangeSet([(0, 10), (20, 10), (40, 10)])
    assert s.remove(4, 2) == 2  # split
    assert s.to_list() == [(0, 4), (6, 4), (20, 10), (40, 10)]
    assert s.remove(8, 14) == 4  # cuts the tail of one range and the head of the next
    assert s.to_list() == [(0, 4), (6, 2), (22, 8), (40, 10)]
    assert s.remove(35, 100) == 10  # drops a whole range
    assert s.remove(100, 5) == 0
    assert s.to_list() == [(0, 4), (6, 2), (22, 8)]
    assert (len(s), s.page_count) == (3, 14)


def test_remove_many_and_double_remove() -> None:
    s = PageRangeSet([(0, 100)])
    assert s.remove_many([(10, 10), (15, 10), (90, 20)]) == 25
    assert s.remove_many([(10, 10)]) == 0
    assert s.to_list() == [(0, 10), (25, 65)]


# ------------------------------------------------------------------------------------ unballoon


def test_pop_highest_takes_the_top_of_the_highest_range() -> None:
    s = PageRangeSet([(0, 10), (100, 50)])
    assert s.pop_highest(20) == (130, 20)  # split: the top 20 pages
    assert s.to_list() == [(0, 10), (100, 30)]
    assert s.pop_highest(30) == (100, 30)  # exactly the rest
    assert s.pop_highest(1000) == (0, 10)
    assert s.pop_highest(1) is None
    assert (len(s), s.page_count) == (0, 0)


def test_pop_highest_zero_takes_nothing() -> None:
    s = PageRangeSet([(0, 10)])
    assert s.pop_highest(0) is None
    assert s.to_list() == [(0, 10)]


def test_peek_highest_limits_and_window() -> None:
    s = PageRangeSet([(0, 10), (20, 10), (40, 10), (60, 10)])
    before = s.to_list()
    assert s.peek_highest(25, 10) == [(60, 10), (40, 10), (25, 5)]  # page limit splits the last
    assert s.peek_highest(100, 2) == [(60, 10), (40, 10)]  # range limit
    assert s.peek_highest(100, 10, lo=25, hi=65) == [(60, 5), (40, 10), (25, 5)]  # window clips
    assert s.peek_highest(3, 10, lo=25, hi=65) == [(62, 3)]
    assert s.peek_highest(100, 10, lo=10, hi=20) == []  # a gap
    assert s.peek_highest(100, 10, lo=30, hi=30) == []
    assert s.peek_highest(0, 10) == []
    assert s.peek_highest(10, 0) == []
    assert s.peek_highest(100, 1 << 62, hi=5) == [(0, 5)]
    assert s.to_list() == before


def test_peek_highest_matches_successive_pops() -> None:
    s = PageRangeSet([(0, 3), (5, 7), (20, 1), (30, 64)])
    peeked = s.peek_highest(70, 10)
    popped = []
    remaining = 70
    while remaining and (item := s.pop_highest(remaining)) is not None:
        popped.append(item)
        remaining -= item[1]
    assert peeked == popped == [(30, 64), (20, 1), (7, 5)]


# ------------------------------------------------------------------------------------ queries


def test_intersection_and_difference() -> None:
    s = PageRangeSet([(0, 10), (20, 10)])
    batch = [(25, 10), (5, 10), (8, 4), (50, 0)]
    assert s.intersection(batch) == [(5, 5), (25, 5)]
    assert s.difference(batch) == [(10, 5), (30, 5)]
    assert PageRangeSet().intersection(batch) == []
    assert PageRangeSet().difference(batch) == [(5, 10), (25, 10)]
    assert s.intersection(s) == s.to_list()  # a PageRangeSet is an iterable of ranges too
    assert s.difference(s) == []


def test_membership_overlap_count_irange() -> None:
    s = PageRangeSet([(10, 5), (20, 5)])
    assert [p for p in range(30) if p in s] == [*range(10, 15), *range(20, 25)]
    assert "10" not in s
    assert s.overlap_count(12, 10) == 5
    assert list(s.irange(12, 22)) == [(12, 3), (20, 2)]
    assert list(s.irange(0, 100)) == [(10, 5), (20, 5)]
    assert list(s.irange(15, 20)) == []
    assert list(s.irange(30, 10)) == []


def test_iteration_equality_copy_repr() -> None:
    s = PageRangeSet([(20, 5), (0, 5), (5, 5)])
    assert list(s) == [(0, 10), (20, 5)]
    assert list(reversed(s)) == [(20, 5), (0, 10)]
    assert s == PageRangeSet([(0, 10), (20, 5)])
    assert s != PageRangeSet([(0, 10), (20, 4)])
    assert s != [(0, 10), (20, 5)]  # only equal to another PageRangeSet
    t = s.copy()
    t.add(10, 1)
    assert s.to_list() == [(0, 10), (20, 5)]
    assert copy.copy(s) == s
    assert copy.deepcopy(s) == s
    assert repr(s) == "PageRangeSet([(0, 10), (20, 5)])"
    with pytest.raises(TypeError):
        hash(s)
    s.clear()
    assert (list(s), len(s), s.page_count, bool(s)) == ([], 0, 0, False)
    s.add(3, 1)
    assert s.to_list() == [(3, 1)]


# ------------------------------------------------------------------------------------ scale


def test_huge_ranges() -> None:
    start = (1 << 40) - 1
    s = PageRangeSet([(start, TIB_PAGES)])
    assert s.page_count == TIB_PAGES
    assert start in s and start + TIB_PAGES - 1 in s and start + TIB_PAGES not in s
    assert s.add(start + TIB_PAGES, TIB_PAGES) == TIB_PAGES
    assert s.to_list() == [(start, 2 * TIB_PAGES)]
    assert s.remove(start + 1, TIB_PAGES) == TIB_PAGES
    assert s.to_list() == [(start, 1), (start + 1 + TIB_PAGES, TIB_PAGES - 1)]
    assert s.pop_highest(1 << 19) == (start + 2 * TIB_PAGES - (1 << 19), 1 << 19)
    assert s.overlap_count(0, 1 << 50) == TIB_PAGES - (1 << 19)
    assert s.peek_highest(1 << 60, 5, lo=start) == [(start + 1 + TIB_PAGES, TIB_PAGES - 1 - (1 << 19)), (start, 1)]


def test_one_tib_range_costs_a_few_hundred_bytes() -> None:
    one = PageRangeSet([((1 << 40) - 1, TIB_PAGES)])
    size = deep_sizeof(one)
    assert size < 512, size
    # O(1) in the range's size: 1 page or 1 TiB, the same structure.
    assert abs(deep_sizeof(PageRangeSet([(5, 1)])) - size) <= 64
    # The deep sizeof really walks the containers: a thousand ranges cost far more than one.
    many = PageRangeSet((p * 4, 2) for p in range(1000))
    assert deep_sizeof(many) > size + 1000 * 16


def test_many_ranges_across_sublists() -> None:
    # Enough ranges for several sublists at the production load, then merge them all.
    n = 5 * ranges_mod._LOAD
    s = PageRangeSet((2 * p, 1) for p in range(n))
    assert len(s._lists) > 2

    def add_in_messages(batch: list[tuple[int, int]]) -> int:
        # Balloon-response-sized batches: merged range by range, not by a rebuild.
        return sum(s.add_many(batch[k : k + 510]) for k in range(0, len(batch), 510))

    assert add_in_messages([(2 * p + 1, 1) for p in range(0, n - 1, 2)]) == n // 2  # [4q, 4q + 3)
    assert len(s) == n // 2
    assert add_in_messages([(8 * q + 3, 1) for q in range(n // 4)]) == n // 4  # [8q, 8q + 7)
    assert len(s) == n // 4
    # Sublists that shrink below half the load are joined with a neighbour.
    assert len(s._lists) <= 2 * len(s) * 2 // ranges_mod._LOAD + 1
    before = s.page_count
    assert s.add(0, 2 * n) == 2 * n - before
    assert s.to_list() == [(0, 2 * n)]
    assert s.remove(1, 2 * n - 2) == 2 * n - 2
    assert s.to_list() == [(0, 1), (2 * n - 1, 1)]
