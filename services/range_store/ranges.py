"""Sets of guest pages, kept as merged page ranges.

A :class:`PageRangeSet` holds guest page numbers the way QEMU's hv-balloon page range tree does
(``hw/hyperv/hv-balloon-page_range_tree.c``, host-behaviour spec section 4): as sorted, disjoint,
*non-adjacent* ranges, merged on every insert, so a 1 TiB contiguous range costs a few hundred bytes.
Inserting reports how many pages were new, which is how a double free is detected.

Layout
------
The ranges are kept as one strictly increasing sequence of *boundaries* ``s0, e0, s1, e1, ...``
(range ``i`` is the half-open ``[s_i, e_i)``), cut into ``array('Q')`` sublists of about ``_LOAD``
boundaries, with ``_mins`` holding the first boundary of each sublist. It is the layout of
``sortedcontainers.SortedList`` (sorted sublists found with two C-level bisects), specialised:

* the ranges are non-adjacent, so the boundaries are strictly increasing and a boundary's parity says
  what it is: even positions are starts, odd ones ends. Page ``p`` is in the set iff an odd number of
  boundaries are ``<= p``;
* a sublist always holds whole ranges (an even number of boundaries), so the parity of an index inside
  a sublist is its global parity;
* merging a range into its neighbours rewrites, inserts or deletes at most two boundaries of one
  sublist. With a ``SortedDict`` start -> end (QEMU's shape), moving a start is a delete plus an
  insert, each with its own bisect and positional-index upkeep;
* the boundaries are unsigned 64-bit machine words, as in QEMU's ``uint64_t`` tree. Bisecting a list
  of ``int`` objects follows one pointer per comparison into objects scattered over the heap: on the
  benchmark's large sets that made lookups twice as slow.

So the set does not keep its ranges in sortedcontainers types. Measured side by side on trace a of
``bench/ranges.py`` (add_many of the same messages, CPU time, 2-core EPYC VM), a ``SortedList`` of starts
plus a dict of ends did about 74,000 ranges/s through the public API and 142,000 when reading the
SortedList's internal sublists; this layout did 175,000 with ``list`` sublists and 296,000 with
``array('Q')`` ones. A ``SortedDict`` holding one range also weighs about 1 KB; this set under 400
bytes. Range ends are limited to ``MAX_END`` (2**64 - 1), as in QEMU.

Runtime complexities below use ``n`` for the number of stored ranges and ``k`` for the number of
ranges passed in.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any

# numpy is imported inside the functions that use it: light commands (``hvdm decode``) and the
# small sets most VMs hold never pay for loading it.


__all__ = ["PageRangeSet", "RangeBatch", "coalesce"]

#: Sublists and ``_mins`` are ``array('Q')``: unsigned 64-bit machine words, like QEMU's ``uint64_t``
#: tree. Bisecting a list of ``int`` objects chases one pointer per comparison into objects scattered
#: over the heap; on the benchmark's large sets that made lookups about twice as slow as bisecting
#: the contiguous words of an array.
_TYPECODE = "Q"

#: Largest range end (``start + count``) that can be stored. QEMU asserts the same: no 64-bit overflow.
MAX_END = (1 << 64) - 1

_count_of = itemgetter(1)

#: Target number of boundaries (two per range) per sublist. Sublists are split above twice this and
#: joined with a neighbour below half of it. Even, so that a split never cuts a range in two.
_LOAD = 1000

#: A batch of ``k`` ranges is merged by rebuilding the whole structure in one linear pass when
#: ``k * _REBUILD_RATIO >= n``; otherwise range by range with bisects. Chosen by measurement
#: (``bench/ranges.py --tune``): with 510-range batches, rebuilding wins for add_many and for
#: remove_many up to 1,000-2,000 stored ranges. (A merge walk that bisects the flat boundary list once
#: per batch range and copies the stretches between as slices was measured too: it never won.)
_REBUILD_RATIO = 3


#: A batch of at least ``_VECTOR_MIN`` ranges with ``k * _VECTOR_RATIO >= n`` is merged by numpy over
#: the flat boundary array (one copy of the set, two ``searchsorted`` calls, one delete and one
#: insert, all in C) and the sublists are cut again; below that, range by range. Chosen by
#: measurement (CPU time, 510-range batches of isolated ranges into n stored ones): range by range
#: costs 1.1-1.3 us per batch range whatever n; the vector path 0.7 us at n = 5,000, 0.9 at 20,000,
#: 1.6 at 50,000 and 5.4 at 200,000 (it copies the set), so it wins up to about 64 stored ranges per
#: batch range (32,000 stored ranges for a full balloon answer).
_VECTOR_MIN = 48
_VECTOR_RATIO = 64


Bounds = Any  # a 1-D numpy uint64 array of boundaries (numpy's own annotations are loose here)


def _vector_bounds(items: Sequence[tuple[int, int]]) -> tuple[Bounds, Bounds, int, bool]:
    """(starts, ends, empty ranges, repeats) of ``(start, count)`` pairs, merged, as uint64 arrays.

    One sort and one coalescing pass, both in numpy. ``repeats`` says whether two ranges shared a
    page (touching is not sharing). Raises ValueError on a negative value or an end past ``MAX_END``.
    """
    import numpy as np

    try:
        flat = np.fromiter(chain.from_iterable(items), dtype=np.uint64, count=2 * len(items))
    except OverflowError:
        raise ValueError("page range outside 0 .. 2**64 - 1") from None
    starts = flat[0::2]
    counts = flat[1::2]
    nonzero = counts != 0
    empty = len(counts) - int(np.count_nonzero(nonzero))
    if empty:
        starts = starts[nonzero]
        counts = counts[nonzero]
    ends = starts + counts
    if np.any(ends < starts):  # wrapped around: the end does not fit in 64 bits
        raise ValueError(f"range end does not fit in 64 bits (max {MAX_END})")
    if not len(starts):
        return starts, ends, empty, False
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    reach = np.maximum.accumulate(ends[order])
    later = starts[1:]
    before = reach[:-1]
    repeats = bool(np.any(later < before))
    gaps = np.flatnonzero(later > before)  # a new merged range begins after each gap
    first = np.empty(len(gaps) + 1, dtype=np.intp)
    first[0] = 0
    first[1:] = gaps + 1
    last = np.empty(len(gaps) + 1, dtype=np.intp)
    last[:-1] = gaps
    last[-1] = len(starts) - 1
    return starts[first], reach[last], empty, repeats


class RangeBatch:
    """A batch of ``(start, count)`` ranges (one guest message), sorted and merged once, in numpy.

    What :func:`coalesce` gives as a list, kept as two arrays so that a whole message can be
    checked against a :class:`PageRangeSet` in a few C calls (:meth:`PageRangeSet.covers`,
    :meth:`PageRangeSet.isdisjoint`) instead of a Python loop per range. It also says whether the
    message repeated a page and how many of its ranges were empty.

    >>> b = RangeBatch([(10, 2), (0, 4), (4, 1), (11, 5), (30, 0)])
    >>> b.to_list(), b.pages, b.empty, b.repeats
    ([(0, 5), (10, 6)], 11, 1, True)

    Values are non-negative ints with ends up to ``MAX_END`` (ValueError otherwise).

    Runtime complexity: O(k*log(k))
    """

    __slots__ = ("empty", "ends", "pages", "repeats", "starts")

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        import numpy as np

        self.starts, self.ends, self.empty, self.repeats = _vector_bounds(ranges)
        #: Pages in the merged batch (each page once).
        self.pages = int(np.sum(self.ends - self.starts, dtype=np.uint64))

    def __len__(self) -> int:
        """Number of merged ranges."""
        return len(self.starts)

    def to_list(self) -> list[tuple[int, int]]:
        """The merged ranges, ascending: ``coalesce`` of the batch (Python ints).

        Runtime complexity: O(k)
        """
        return list(zip(self.starts.tolist(), (self.ends - self.starts).tolist(), strict=True))


def _merged_bounds(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """Sort and merge ``(start, count)`` pairs into a flat boundary list ``[s0, e0, s1, e1, ...]``.

    Overlapping and adjacent ranges are joined, zero counts dropped. Raises ValueError on a negative
    start or count.
    """
    items = sorted(ranges)
    if not items:
        return []
    if items[0][0] < 0:
        raise ValueError(f"negative page number in range {items[0]!r}")
    bounds: list[int] = []
    # Bound once: this loop runs once per range of every batch.
    append = bounds.append
    end = -1
    for start, count in items:
        if count <= 0:
            if count < 0:
                raise ValueError(f"negative page count in range {(start, count)!r}")
            continue
        if start > end:
            end = start + count
            append(start)
            append(end)
        elif start + count > end:
            end = start + count
            bounds[-1] = end
    return bounds


def _sorted_batch(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The batch sorted, after checking that it can be stored (before anything is changed)."""
    items = sorted(ranges)
    if items:
        if items[0][0] < 0:
            raise ValueError(f"negative page number in range {items[0]!r}")
        # Two C-level passes: cheaper than testing each range in the Python loop that follows.
        if min(map(_count_of, items)) < 0:
            raise ValueError("negative page count in batch")
        if items[-1][0] + max(map(_count_of, items)) > MAX_END:
            _check_end(max(s + c for s, c in items))
    return items


def _check(start: int, count: int) -> None:
    if start < 0:
        raise ValueError(f"negative page number {start}")
    if count < 0:
        raise ValueError(f"negative page count {count}")


def _check_end(end: int) -> None:
    if end > MAX_END:
        raise ValueError(f"range end {end} does not fit in 64 bits (max {MAX_END})")


def _pairs(bounds: list[int]) -> list[tuple[int, int]]:
    """``[s0, e0, s1, e1, ...]`` -> ``[(s0, e0 - s0), (s1, e1 - s1), ...]``."""
    it = iter(bounds)
    return [(s, e - s) for s, e in zip(it, it, strict=True)]


def _pages_in(bounds: Sequence[int]) -> int:
    """Total pages of a flat boundary list (sum of ends minus sum of starts, both in C)."""
    return sum(bounds[1::2]) - sum(bounds[::2])


def coalesce(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort ``(start, count)`` ranges and merge the overlapping and adjacent ones.

    Zero counts are dropped; a negative start or count raises ValueError.

    >>> coalesce([(10, 2), (0, 4), (4, 1), (11, 5), (30, 0)])
    [(0, 5), (10, 6)]

    Runtime complexity: O(k*log(k))
    """
    return _pairs(_merged_bounds(ranges))


class PageRangeSet:
    """A set of guest page numbers stored as merged ``(start, count)`` ranges.

    Ranges are kept sorted, disjoint and non-adjacent (always merged), never empty. Memory is
    O(number of ranges), independent of their sizes.

    >>> s = PageRangeSet([(0, 4), (8, 2)])
    >>> s.add(4, 2)
    2
    >>> s
    PageRangeSet([(0, 6), (8, 2)])
    >>> len(s), s.page_count, 5 in s, 6 in s
    (2, 8, True, False)

    Page numbers and counts are non-negative ints (ValueError otherwise); a stored range must end at
    or below ``MAX_END`` (2**64 - 1), while removals and queries accept any size. Iterating yields
    ``(start, count)`` in ascending order. Mutating the set while iterating over it (including
    through :meth:`irange`) is not supported.

    Runtime complexity of the constructor: O(k*log(k))
    """

    __slots__ = ("_len", "_lists", "_mins", "_pages")

    _lists: list[array[int]]
    _mins: array[int]
    _len: int
    _pages: int

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        bounds = _merged_bounds(ranges)
        if bounds:
            _check_end(bounds[-1])
        self._load(bounds)

    def _flat(self) -> Bounds:
        """All boundaries as one uint64 array (a copy: the sublists may change afterwards)."""
        import numpy as np

        if not self._lists:
            return np.empty(0, dtype=np.uint64)
        return np.frombuffer(b"".join(self._lists), dtype=np.uint64)

    def _load_flat(self, flat: Bounds) -> None:
        """Replace the contents with a merged flat boundary array (numpy)."""
        import numpy as np

        load = _LOAD
        self._lists = [array(_TYPECODE, flat[k : k + load].tobytes()) for k in range(0, len(flat), load)]
        self._mins = array(_TYPECODE, flat[::load].tobytes())
        self._len = len(flat) >> 1
        self._pages = int(np.sum(flat[1::2] - flat[0::2], dtype=np.uint64))

    def _load(self, bounds: list[int]) -> None:
        """Replace the contents with a merged flat boundary list."""
        lists = [array(_TYPECODE, bounds[k : k + _LOAD]) for k in range(0, len(bounds), _LOAD)]
        self._lists = lists
        self._mins = array(_TYPECODE, [sub[0] for sub in lists])
        self._len = len(bounds) >> 1
        self._pages = _pages_in(bounds)

    # ------------------------------------------------------------------ size and membership

    def __len__(self) -> int:
        """Number of stored (merged) ranges, not pages; see :attr:`page_count`.

        >>> len(PageRangeSet([(0, 2), (2, 2), (10, 1)]))
        2

        Runtime complexity: O(1)
        """
        return self._len

    @property
    def page_count(self) -> int:
        """Total number of pages in the set, maintained incrementally.

        >>> PageRangeSet([(0, 2), (10, 2**28)]).page_count
        268435458

        Runtime complexity: O(1)
        """
        return self._pages

    def __contains__(self, page: object) -> bool:
        """``page in s``: whether the page number is in the set.

        >>> s = PageRangeSet([(10, 5)])
        >>> 9 in s, 10 in s, 14 in s, 15 in s
        (False, True, True, False)

        Runtime complexity: O(log(n))
        """
        if not isinstance(page, int):
            return False
        pos = bisect_right(self._mins, page) - 1
        if pos < 0:
            return False
        # Odd number of boundaries <= page: the last one is a start, so page is inside its range.
        return bool(bisect_right(self._lists[pos], page) & 1)

    def overlap_count(self, start: int, count: int) -> int:
        """Number of pages of ``[start, start + count)`` that are in the set.

        >>> PageRangeSet([(0, 4), (8, 4)]).overlap_count(2, 8)
        4

        Runtime complexity: O(log(n) + m) for m stored ranges overlapping the range
        """
        _check(start, count)
        if not count:
            return 0
        return _pages_in(self._walk([start, start + count], True))

    # ------------------------------------------------------------------ single-range updates

    def add(self, start: int, count: int) -> int:
        """Add pages ``[start, start + count)``; return how many were not already present.

        Adjacent and overlapping ranges are merged. A return value below ``count`` means some pages
        were already in the set (a double free, for a balloon response). Raises ValueError, changing
        nothing, on a negative value or an end past ``MAX_END``.

        >>> s = PageRangeSet([(0, 4)])
        >>> s.add(2, 4)
        2
        >>> s.to_list()
        [(0, 6)]

        Runtime complexity: O(log(n) + m) for m stored ranges swallowed by the new one
        """
        _check(start, count)
        if not count:
            return 0
        _check_end(start + count)
        return self._splice(start, start + count, True)

    def remove(self, start: int, count: int) -> int:
        """Remove pages ``[start, start + count)``; return how many were present.

        A stored range straddling either end is cut (split in two if it covers both ends).

        >>> s = PageRangeSet([(0, 10)])
        >>> s.remove(4, 2)
        2
        >>> s.to_list()
        [(0, 4), (6, 4)]

        Runtime complexity: O(log(n) + m) for m stored ranges overlapping the range
        """
        _check(start, count)
        if not count:
            return 0
        return self._splice(start, start + count, False)

    def _splice(self, s: int, e: int, adding: bool) -> int:
        """Make ``[s, e)`` entirely present (``adding``) or absent; return the pages that changed.

        General case, also used by the batch methods when a change crosses a sublist boundary: it
        replaces the boundaries in ``[s, e]`` by at most two new ones chosen by parity. With ``i`` =
        boundaries ``< s`` and ``j`` = boundaries ``<= e``: an odd ``i`` means ``s`` is inside (or at
        the end of) a stored range, an odd ``j`` that ``e`` is inside (or at the start of) one.
        """
        lists = self._lists
        mins = self._mins
        if not lists:
            if not adding:
                return 0
            lists.append(array(_TYPECODE, (s, e)))
            mins.append(s)
            self._len += 1
            self._pages += e - s
            return e - s
        # lo=1: the sublist whose first boundary is <= s, or the first one (never -1).
        pos = bisect_right(mins, s, 1) - 1
        sub = lists[pos]
        i = bisect_left(sub, s)
        last = bisect_right(mins, e, pos) - 1
        if last <= pos:
            last = pos
            j = bisect_right(sub, e, i)
            old = sub[i:j]
        else:
            tail = lists[last]
            j = bisect_right(tail, e)
            old = sub[i:]
            for k in range(pos + 1, last):
                old += lists[k]
            old += tail[:j]
        odd_i = i & 1
        odd_j = j & 1
        # Pages of [s, e) present now: the stored boundaries in [s, e], clipped to it and paired up.
        # If i is odd, old[0] is an end whose range starts before s: s stands in for that start. If
        # j is odd, old[-1] is a start whose range ends after e: e stands in for that end.
        present = sum(old[::2]) - sum(old[1::2]) - s if odd_i else _pages_in(old)
        if odd_j:
            present += e
        if adding:
            delta = (e - s) - present
            new = array(_TYPECODE, ([] if odd_i else [s]) + ([] if odd_j else [e]))
        else:
            delta = present
            new = array(_TYPECODE, ([s] if odd_i else []) + ([e] if odd_j else []))
        if not delta:
            # Fully present (adding) or fully absent (removing): the boundaries are already right.
            return 0
        if last == pos:
            sub[i:j] = new
        else:
            # Spanning sublists: keep the head of the first and the tail of the last as one sublist
            # (each part may hold half a range), drop those in between, then rebalance.
            sub = sub[:i] + new + lists[last][j:]
            lists[pos : last + 1] = [sub]
            del mins[pos + 1 : last + 1]
        if sub:
            mins[pos] = sub[0]
            self._balance(pos)
        else:
            del lists[pos]
            del mins[pos]
        self._len += (len(new) - len(old)) >> 1
        self._pages += delta if adding else -delta
        return delta

    def _balance(self, pos: int) -> None:
        """Split sublist ``pos`` if it grew past ``2 * _LOAD``, join it to a neighbour if it shrank."""
        lists = self._lists
        mins = self._mins
        sub = lists[pos]
        size = len(sub)
        if size < _LOAD >> 1 and len(lists) > 1:
            if pos + 1 < len(lists):
                sub += lists[pos + 1]
                del lists[pos + 1]
                del mins[pos + 1]
            else:
                lists[pos - 1] += sub
                del lists[pos]
                del mins[pos]
                pos -= 1
                sub = lists[pos]
            size = len(sub)
        if size > _LOAD << 1:
            half = (size >> 2) << 1
            lists.insert(pos + 1, sub[half:])
            mins.insert(pos + 1, sub[half])
            del sub[half:]
            if size - half > _LOAD << 1:
                # Only after a splice that joined two full sublists.
                self._balance(pos + 1)

    # ------------------------------------------------------------------ batch updates

    def add_many(self, ranges: Iterable[tuple[int, int]]) -> int:  # noqa: C901 -- one pass, unrolled for speed
        """Add a batch of ``(start, count)`` ranges; return how many pages were not already present.

        The batch may be in any order and its ranges may overlap each other; each new page is
        counted once. The batch is sorted, then, if it is small relative to the set, merged in one
        ascending pass with two bisects per batch range (a batch range that overlaps or touches the
        previous one is absorbed by the stored range that one became, so no separate coalescing pass
        is needed); a large batch is merged by rebuilding the structure from one sorted merge. The
        whole batch is checked first: on a negative value or an end past ``MAX_END`` it raises
        ValueError and changes nothing.

        >>> s = PageRangeSet([(10, 10)])
        >>> s.add_many([(5, 10), (0, 2), (1, 3), (20, 1)])
        10
        >>> s.to_list()
        [(0, 4), (5, 16)]

        Runtime complexity: O(k*log(k) + k*log(n)), or O(k*log(k) + n) when k is large
        """
        batch = ranges if isinstance(ranges, list | tuple) else list(ranges)
        if len(batch) >= _VECTOR_MIN and len(batch) * _VECTOR_RATIO >= self._len:
            # Checked, sorted and merged by numpy (_vector_bounds raises ValueError before any change).
            return self._union_vector(batch)
        items = _sorted_batch(batch)
        if not items:
            return 0
        if len(items) * _REBUILD_RATIO >= self._len:
            return self._union_rebuild(items)
        # Hot path (510-range balloon responses): attributes and globals bound to locals once per
        # batch, because each is read several times per range and a local read is the cheapest.
        lists = self._lists
        mins = self._mins
        splice = self._splice
        balance = self._balance
        _bisect_left = bisect_left
        _bisect_right = bisect_right
        load2 = _LOAD << 1
        loadh = _LOAD >> 1
        added = 0
        spliced = 0
        nranges = 0
        for s, c in items:
            if not c:
                continue
            e = s + c
            pos = _bisect_right(mins, s, 1) - 1  # lo=1: never -1 (see _splice)
            sub = lists[pos]
            i = _bisect_left(sub, s)
            size = len(sub)
            if i < size:
                b = sub[i]
                if b > e:
                    # No boundary in [s, e]: inside a stored range, or a new isolated range.
                    if i & 1:
                        continue
                    # Two inserts: an array slice assignment would need an array built per range.
                    sub.insert(i, e)
                    sub.insert(i, s)
                    if not i:
                        mins[pos] = s
                    added += e - s
                    nranges += 1
                    if size >= load2:
                        balance(pos)
                    continue
                j = _bisect_right(sub, e, i + 1)
                if j == size and pos + 1 < len(mins) and mins[pos + 1] <= e:
                    spliced += splice(s, e, True)
                    continue
                if j == i + 1:
                    if i & 1:
                        # b ends the range holding s (or touching it): extend that range up to e.
                        sub[i] = e
                        added += e - b
                    else:
                        # b starts a range reaching past e: move its start down to s.
                        sub[i] = s
                        if not i:
                            mins[pos] = s
                        added += b - s
                    continue
                if j == i + 2 and i & 1:
                    # [s, e) fills the gap between two stored ranges: join them.
                    added += sub[i + 1] - b
                    del sub[i : i + 2]
                    nranges -= 1
                    if size - 2 < loadh:
                        balance(pos)
                    continue
                spliced += splice(s, e, True)
            elif pos + 1 < len(mins) and mins[pos + 1] <= e:
                spliced += splice(s, e, True)
            else:
                # Past the last boundary of this sublist, clear of the next: append a range.
                sub.append(s)
                sub.append(e)
                added += e - s
                nranges += 1
                if size >= load2:
                    balance(pos)
        # The inline paths above leave the counters to us; splice() keeps its own.
        self._pages += added
        self._len += nranges
        return added + spliced

    def _union_vector(self, items: Sequence[tuple[int, int]]) -> int:
        """Merge ``items`` into the set with numpy over the flat boundaries; return pages added.

        The batch is merged first (disjoint, non-adjacent ranges), then each of its ranges does to
        the flat array what :meth:`_splice` does to a sublist, all at once: the stored boundaries in
        ``[s, e]`` go, ``s`` comes in if an even number of boundaries lie below it (it starts a
        range) and ``e`` if an even number lie at or below it (it ends one). The batch ranges' closed
        spans are disjoint, so their deletions never overlap, and they are in order, so every new
        boundary's place is its own search position less the deletions before it.
        """
        import numpy as np

        starts, ends, _, _ = _vector_bounds(items)
        if not len(starts):
            return 0  # only empty ranges
        flat = self._flat()
        below: Bounds = np.searchsorted(flat, starts, "left")  # boundaries < s
        upto: Bounds = np.searchsorted(flat, ends, "right")  # boundaries <= e
        gone = upto - below
        removed_before = np.cumsum(gone) - gone
        total = int(removed_before[-1] + gone[-1])
        if total:
            hit = np.flatnonzero(gone)
            runs = gone[hit]
            # Indices below[r] .. upto[r] - 1 for every hit range r, concatenated.
            offsets = np.arange(total) - np.repeat(np.cumsum(runs) - runs, runs)
            flat = np.delete(flat, np.repeat(below[hit], runs) + offsets)
        at = below - removed_before
        new = np.empty(2 * len(starts), dtype=np.uint64)
        new[0::2] = starts
        new[1::2] = ends
        wanted = np.empty(2 * len(starts), dtype=bool)
        wanted[0::2] = (below & 1) == 0
        wanted[1::2] = (upto & 1) == 0
        # Equal positions keep their order in np.insert: a range's start before its end.
        flat = np.insert(flat, np.repeat(at, 2)[wanted], new[wanted])
        before = self._pages
        self._load_flat(flat)
        return self._pages - before

    def covers(self, batch: RangeBatch) -> bool:
        """Whether every page of ``batch`` is in the set.

        >>> PageRangeSet([(0, 10), (20, 5)]).covers(RangeBatch([(2, 3), (20, 5)]))
        True
        >>> PageRangeSet([(0, 10), (20, 5)]).covers(RangeBatch([(8, 3)]))
        False

        Runtime complexity: O(n + k*log(n)) (a copy of the boundaries, in C)
        """
        import numpy as np

        at, below_end = self._positions(batch)
        return bool(np.all(at & 1) and np.array_equal(at, below_end))

    def isdisjoint(self, batch: RangeBatch) -> bool:
        """Whether no page of ``batch`` is in the set (touching a stored range is not sharing).

        >>> PageRangeSet([(0, 10)]).isdisjoint(RangeBatch([(10, 5), (30, 1)]))
        True
        >>> PageRangeSet([(0, 10)]).isdisjoint(RangeBatch([(9, 2)]))
        False

        Runtime complexity: O(n + k*log(n)) (a copy of the boundaries, in C)
        """
        import numpy as np

        at, below_end = self._positions(batch)
        return not np.any(at & 1) and np.array_equal(at, below_end)

    def _positions(self, batch: RangeBatch) -> tuple[Bounds, Bounds]:
        """For each merged batch range [s, e): (boundaries <= s, boundaries < e). The range lies in
        one stored range if the first is odd and both are equal, in one gap if even and equal.

        Found by numpy on a copy of the boundaries, unless the set is large for the batch (the
        threshold of ``add_many``'s vector path): then two bisects per batch range, as the copy
        would cost more."""
        import numpy as np

        if self._len <= len(batch) * _VECTOR_RATIO:
            flat = self._flat()
            return np.searchsorted(flat, batch.starts, "right"), np.searchsorted(flat, batch.ends, "left")
        lists = self._lists
        mins = self._mins
        offsets = list(accumulate(map(len, lists), initial=0))
        at: list[int] = []
        below_end: list[int] = []
        for s, e in zip(batch.starts.tolist(), batch.ends.tolist(), strict=True):
            pos = bisect_right(mins, s) - 1
            at.append(0 if pos < 0 else offsets[pos] + bisect_right(lists[pos], s))
            pos = bisect_left(mins, e) - 1
            below_end.append(0 if pos < 0 else offsets[pos] + bisect_left(lists[pos], e))
        return np.array(at, dtype=np.intp), np.array(below_end, dtype=np.intp)

    def _union_rebuild(self, items: list[tuple[int, int]]) -> int:
        """Merge sorted ``(start, count)`` items into the set by rebuilding it; return pages added."""
        before = self._pages
        it = chain.from_iterable(self._lists)
        # Both runs are sorted: the sort inside _merged_bounds merges them in linear time.
        self._load(_merged_bounds([(s, e - s) for s, e in zip(it, it, strict=True)] + items))
        return self._pages - before

    def remove_many(self, ranges: Iterable[tuple[int, int]]) -> int:  # noqa: C901 -- one pass, unrolled for speed
        """Remove a batch of ``(start, count)`` ranges; return how many pages were present.

        The batch may be in any order and may overlap itself; each removed page is counted once.

        >>> s = PageRangeSet([(0, 10), (20, 10)])
        >>> s.remove_many([(8, 14), (0, 1), (0, 2)])
        6
        >>> s.to_list()
        [(2, 6), (22, 8)]

        Runtime complexity: O(k*log(k) + k*log(n)), or O(k*log(k) + n) when k is large
        """
        bounds = _merged_bounds(ranges)
        if not bounds or not self._len:
            return 0
        if (len(bounds) >> 1) * _REBUILD_RATIO >= self._len:
            before = self._pages
            self._load(_subtract(list(chain.from_iterable(self._lists)), bounds))
            return before - self._pages
        # Hot path (unballoon): bound to locals for the same reason as in add_many.
        lists = self._lists
        mins = self._mins
        splice = self._splice
        balance = self._balance
        _bisect_left = bisect_left
        _bisect_right = bisect_right
        load2 = _LOAD << 1
        loadh = _LOAD >> 1
        removed = 0
        spliced = 0
        nranges = 0
        it = iter(bounds)
        for s, e in zip(it, it, strict=True):
            if not lists:
                break
            pos = _bisect_right(mins, s, 1) - 1  # lo=1: never -1 (see _splice)
            sub = lists[pos]
            i = _bisect_left(sub, s)
            size = len(sub)
            if i == size:
                # Past this sublist's last range: only the next sublist can overlap [s, e).
                if pos + 1 < len(mins) and mins[pos + 1] < e:
                    spliced += splice(s, e, False)
                continue
            b = sub[i]
            if b > e:
                # No boundary in [s, e]: inside one stored range (split it), or in a gap.
                if i & 1:
                    sub.insert(i, e)
                    sub.insert(i, s)
                    removed += e - s
                    nranges += 1
                    if size >= load2:
                        balance(pos)
                continue
            j = _bisect_right(sub, e, i + 1)
            if j == size and (size == 2 or (pos + 1 < len(mins) and mins[pos + 1] <= e)):
                # May empty this sublist or reach into the next one.
                spliced += splice(s, e, False)
            elif j == i + 1:
                if i & 1:
                    # b ends the range holding s: that range now ends at s.
                    sub[i] = s
                    removed += b - s
                else:
                    # b starts a range reaching past e: that range now starts at e.
                    sub[i] = e
                    if not i:
                        mins[pos] = e
                    removed += e - b
            elif j == i + 2 and not i & 1:
                # [s, e) covers the stored range [b, sub[i + 1]) and touches no other: drop it.
                removed += sub[i + 1] - b
                del sub[i : i + 2]
                if not i:
                    mins[pos] = sub[0]
                nranges -= 1
                if size - 2 < loadh:
                    balance(pos)
            else:
                spliced += splice(s, e, False)
        # The inline paths above leave the counters to us; splice() keeps its own.
        self._pages -= removed
        self._len += nranges
        return removed + spliced

    def clear(self) -> None:
        """Remove every page.

        >>> s = PageRangeSet([(0, 4)])
        >>> s.clear()
        >>> s, len(s), s.page_count
        (PageRangeSet([]), 0, 0)

        Runtime complexity: O(1) (plus freeing the sublists)
        """
        self._lists = []
        self._mins = array(_TYPECODE)
        self._len = 0
        self._pages = 0

    # ------------------------------------------------------------------ unballoon order

    def pop_highest(self, max_pages: int) -> tuple[int, int] | None:
        """Take up to ``max_pages`` pages from the top of the highest range, QEMU's unballoon order.

        If the highest range holds more than ``max_pages`` pages, its top ``max_pages`` pages are
        returned as ``(start + count - max_pages, max_pages)`` and the range shrinks; otherwise the
        whole range is removed and returned. Returns None if the set is empty or ``max_pages`` is 0.

        >>> s = PageRangeSet([(0, 4), (10, 10)])
        >>> s.pop_highest(4)
        (16, 4)
        >>> s.pop_highest(100)
        (10, 6)
        >>> s.to_list()
        [(0, 4)]

        Runtime complexity: O(1)
        """
        if max_pages < 0:
            raise ValueError(f"negative page count {max_pages}")
        lists = self._lists
        if not lists or not max_pages:
            return None
        sub = lists[-1]
        e = sub[-1]
        s = sub[-2]
        if e - s > max_pages:
            top = e - max_pages
            sub[-1] = top
            self._pages -= max_pages
            return (top, max_pages)
        del sub[-2:]
        if not sub:
            lists.pop()
            self._mins.pop()
        self._len -= 1
        self._pages -= e - s
        return (s, e - s)

    def peek_highest(
        self, max_pages: int, max_ranges: int, lo: int = 0, hi: int | None = None
    ) -> list[tuple[int, int]]:
        """What successive :meth:`pop_highest` calls would return, without changing the set.

        Only pages in ``[lo, hi)`` are considered (stored ranges are clipped to that window; ``hi``
        None means no upper bound). Ranges are taken from the top down until ``max_pages`` pages or
        ``max_ranges`` ranges are reached; the last one may be the top part of a range. The result is
        in descending order.

        >>> s = PageRangeSet([(0, 10), (20, 10), (40, 10)])
        >>> s.peek_highest(15, 10)
        [(40, 10), (25, 5)]
        >>> s.peek_highest(100, 2, lo=5, hi=25)
        [(20, 5), (5, 5)]

        Runtime complexity: O(log(n) + r) for r ranges returned
        """
        if max_pages < 0 or max_ranges < 0:
            raise ValueError("max_pages and max_ranges must not be negative")
        out: list[tuple[int, int]] = []
        lists = self._lists
        if not max_pages or not max_ranges or not lists:
            return out
        if hi is None:
            pos = len(lists) - 1
            sub = lists[pos]
            k = len(sub)
        else:
            if hi <= lo:
                return out
            pos = bisect_left(self._mins, hi) - 1
            if pos < 0:
                return out
            sub = lists[pos]
            # Boundaries < hi, rounded up to a whole range: an odd count means hi cuts a range.
            k = (bisect_left(sub, hi) + 1) & ~1
        remaining = max_pages
        while True:
            while k:
                s = sub[k - 2]
                e = sub[k - 1]
                k -= 2
                if hi is not None and e > hi:
                    e = hi
                if e <= lo:
                    return out
                if s < lo:
                    s = lo
                size = e - s
                if size >= remaining:
                    out.append((e - remaining, remaining))
                    return out
                out.append((s, size))
                remaining -= size
                if len(out) >= max_ranges:
                    return out
            pos -= 1
            if pos < 0:
                return out
            sub = lists[pos]
            k = len(sub)

    # ------------------------------------------------------------------ queries against a batch

    def _walk(self, bounds: list[int], inside: bool) -> list[int]:
        """The parts of the merged ranges ``bounds`` that are in the set (``inside``) or not.

        Per batch range: two bisects, a third only if some stored boundary lies strictly inside it,
        then one slice of those boundaries.
        The pieces come out merged: the batch ranges are non-adjacent and so are the stored ones.
        """
        out: list[int] = []
        lists = self._lists
        if not lists:
            return out if inside else bounds
        # Bound to locals: each is read once or more per batch range.
        mins = self._mins
        append = out.append
        last = len(lists) - 1
        want = 1 if inside else 0
        it = iter(bounds)
        for s, e in zip(it, it, strict=True):
            pos = bisect_right(mins, s, 1) - 1  # lo=1: never -1 (see _splice)
            sub = lists[pos]
            k = bisect_right(sub, s)  # boundaries <= s: odd iff s is in the set
            size = len(sub)
            if k < size and sub[k] < e:
                j = bisect_left(sub, e, k + 1)  # boundaries < e
                inner = sub[k:j]
            elif k < size or pos == last or mins[pos + 1] >= e:
                # No stored boundary inside [s, e): all of it is in the set, or none of it.
                if (k & 1) == want:
                    append(s)
                    append(e)
                continue
            else:
                inner = sub[k:k]
                j = size
            if j == size:
                # [s, e) may run on into the following sublists: gather their boundaries below e.
                for p in range(pos + 1, last + 1):
                    nxt = lists[p]
                    if nxt[0] >= e:
                        break
                    cut = bisect_left(nxt, e)
                    inner += nxt[:cut]
                    if cut < len(nxt):
                        break
            # s, the inner boundaries, e: consecutive pieces alternate in and out of the set, the
            # first being in iff k is odd. The wanted pieces are every other one, so their
            # boundaries are one contiguous slice.
            points = [s, *inner, e]
            first = 0 if (k & 1) == want else 1
            out += points[first : first + ((len(points) - first) >> 1 << 1)]
        return out

    def intersection(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The parts of ``ranges`` that are in the set, merged and ascending.

        ``ranges`` may be in any order and may overlap.

        >>> PageRangeSet([(0, 4), (8, 4)]).intersection([(6, 4), (2, 1), (3, 2)])
        [(2, 2), (8, 2)]

        Runtime complexity: O(k*log(k) + k*log(n) + m) for m stored ranges overlapping them
        """
        return _pairs(self._walk(_merged_bounds(ranges), True))

    def difference(self, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The parts of ``ranges`` that are not in the set, merged and ascending.

        ``ranges`` may be in any order and may overlap.

        >>> PageRangeSet([(0, 4), (8, 4)]).difference([(6, 4), (2, 1), (3, 2)])
        [(4, 1), (6, 2)]

        Runtime complexity: O(k*log(k) + k*log(n) + m) for m stored ranges overlapping them
        """
        return _pairs(self._walk(_merged_bounds(ranges), False))

    # ------------------------------------------------------------------ iteration and copies

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yield the stored ranges as ``(start, count)``, ascending.

        >>> list(PageRangeSet([(8, 2), (0, 4)]))
        [(0, 4), (8, 2)]

        Runtime complexity: O(n) for the whole iteration
        """
        for sub in self._lists:
            it = iter(sub)
            for s, e in zip(it, it, strict=True):
                yield (s, e - s)

    def __reversed__(self) -> Iterator[tuple[int, int]]:
        """Yield the stored ranges as ``(start, count)``, descending.

        >>> list(reversed(PageRangeSet([(8, 2), (0, 4)])))
        [(8, 2), (0, 4)]

        Runtime complexity: O(n) for the whole iteration
        """
        for sub in reversed(self._lists):
            for k in range(len(sub) - 2, -1, -2):
                s = sub[k]
                yield (s, sub[k + 1] - s)

    def irange(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Yield the stored ranges clipped to pages ``[lo, hi)``, as ``(start, count)``, ascending.

        >>> list(PageRangeSet([(0, 4), (8, 4), (20, 1)]).irange(2, 10))
        [(2, 2), (8, 2)]

        Runtime complexity: O(log(n) + r) for r ranges yielded
        """
        lists = self._lists
        if hi <= lo or not lists:
            return
        pos = bisect_right(self._mins, lo, 1) - 1  # lo=1: never -1 (see _splice)
        sub = lists[pos]
        # Index of the start of the first range ending after lo.
        k = bisect_right(sub, lo) & ~1
        while True:
            size = len(sub)
            while k < size:
                s = sub[k]
                if s >= hi:
                    return
                e = sub[k + 1]
                k += 2
                if s < lo:
                    s = lo
                if e > hi:
                    e = hi
                yield (s, e - s)
            pos += 1
            if pos >= len(lists):
                return
            sub = lists[pos]
            k = 0

    def to_list(self) -> list[tuple[int, int]]:
        """The stored ranges as a list of ``(start, count)``, ascending.

        >>> PageRangeSet([(4, 4), (0, 4), (9, 1)]).to_list()
        [(0, 8), (9, 1)]

        Runtime complexity: O(n)
        """
        return _pairs(list(chain.from_iterable(self._lists)))

    def copy(self) -> PageRangeSet:
        """An independent copy (a shallow copy suffices: page numbers are immutable ints).

        >>> s = PageRangeSet([(0, 4)])
        >>> t = s.copy()
        >>> t.add(4, 1), s == t, s.to_list()
        (1, False, [(0, 4)])

        Runtime complexity: O(n)
        """
        cls = type(self)
        new = cls.__new__(cls)
        new._lists = [sub[:] for sub in self._lists]
        new._mins = self._mins[:]
        new._len = self._len
        new._pages = self._pages
        return new

    __copy__ = copy

    def __eq__(self, other: object) -> bool:
        """Same pages (hence the same merged ranges), whatever the history of each set.

        >>> PageRangeSet([(0, 2), (2, 2)]) == PageRangeSet([(0, 4)])
        True

        Runtime complexity: O(n)
        """
        if not isinstance(other, PageRangeSet):
            return NotImplemented
        if self._len != other._len or self._pages != other._pages:
            return False
        return list(chain.from_iterable(self._lists)) == list(chain.from_iterable(other._lists))

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        """``PageRangeSet([(start, count), ...])``.

        >>> PageRangeSet([(3, 1)])
        PageRangeSet([(3, 1)])

        Runtime complexity: O(n)
        """
        return f"{type(self).__name__}({self.to_list()!r})"


def _subtract(a: list[int], b: list[int]) -> list[int]:
    """Flat boundary list of ``a`` minus ``b`` (both merged flat boundary lists), in one linear pass."""
    out: list[int] = []
    append = out.append
    j = 0
    nb = len(b)
    ita = iter(a)
    for s, e in zip(ita, ita, strict=True):
        # Skip the b ranges that end before this a range starts.
        while j < nb and b[j + 1] <= s:
            j += 2
        while j < nb and b[j] < e:
            bs = b[j]
            be = b[j + 1]
            if bs > s:
                append(s)
                append(bs)
            if be >= e:
                s = e
                break
            s = be
            j += 2
        if s < e:
            append(s)
            append(e)
    return out
