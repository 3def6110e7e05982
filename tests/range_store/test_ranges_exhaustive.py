"""Exhaustive small cases: every range of a 16-page universe against many stored patterns.

Random generation rarely hits the exact boundary cases (a range ending exactly where the first range
of the next sublist starts, and so on); enumerating them does. Runs at tiny sublist loads so that
every stored range boundary is also a sublist boundary somewhere, with both batch strategies.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import pairwise

import pytest

from services.range_store import PageRangeSet
from services.range_store import ranges as ranges_mod

PAGES = 16


def patterns() -> Iterator[frozenset[int]]:
    """Stored page sets: structured ones, then a fixed random sample of all 2**16."""
    yield frozenset()
    yield frozenset(range(PAGES))
    yield frozenset(range(0, PAGES, 2))
    yield frozenset(range(1, PAGES, 2))
    yield frozenset(p for p in range(PAGES) if p % 4 < 2)
    yield frozenset(p for p in range(PAGES) if p % 3 == 1)
    rng = random.Random(16)
    for _ in range(120):
        mask = rng.getrandbits(PAGES)
        yield frozenset(p for p in range(PAGES) if mask >> p & 1)


def ranges_of(pages: frozenset[int] | set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in sorted(pages):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def check(s: PageRangeSet, model: set[int]) -> None:
    assert s.to_list() == ranges_of(model)
    assert s.page_count == len(model)
    assert len(s) == len(ranges_of(model))
    flat = [b for sub in s._lists for b in sub]
    assert all(a < b for a, b in pairwise(flat))
    assert all(sub and len(sub) % 2 == 0 for sub in s._lists)
    assert list(s._mins) == [sub[0] for sub in s._lists]


@pytest.mark.parametrize(("load", "rebuild_ratio"), [(2, 0), (4, 0), (2, 10**9)])
def test_every_small_range_against_every_pattern(
    monkeypatch: pytest.MonkeyPatch, load: int, rebuild_ratio: int
) -> None:
    monkeypatch.setattr(ranges_mod, "_LOAD", load)
    monkeypatch.setattr(ranges_mod, "_REBUILD_RATIO", rebuild_ratio)
    for stored in patterns():
        base = PageRangeSet(ranges_of(stored))
        for start in range(PAGES + 1):
            for count in range(PAGES + 2 - start):
                span = set(range(start, start + count))
                new = span - stored
                gone = span & stored
                s = base.copy()
                assert s.add(start, count) == len(new)
                check(s, set(stored) | new)
                s = base.copy()
                assert s.add_many([(start, count)]) == len(new)
                check(s, set(stored) | new)
                s = base.copy()
                assert s.remove(start, count) == len(gone)
                check(s, set(stored) - gone)
                s = base.copy()
                assert s.remove_many([(start, count)]) == len(gone)
                check(s, set(stored) - gone)
                assert base.overlap_count(start, count) == len(gone)
                assert base.intersection([(start, count)]) == ranges_of(gone)
                assert base.difference([(start, count)]) == ranges_of(new)
                assert list(base.irange(start, start + count)) == ranges_of(gone)
        check(base, set(stored))


@pytest.mark.parametrize("load", [2, 4])
def test_every_pair_of_single_pages_in_one_batch(monkeypatch: pytest.MonkeyPatch, load: int) -> None:
    """Two-range batches, range by range: the second may touch what the first just became."""
    monkeypatch.setattr(ranges_mod, "_LOAD", load)
    monkeypatch.setattr(ranges_mod, "_REBUILD_RATIO", 0)
    for stored in list(patterns())[:40]:
        base = PageRangeSet(ranges_of(stored))
        for a in range(PAGES):
            for b in range(a, PAGES + 1):
                for count in (1, 2):
                    batch = [(a, count), (b, count)]
                    span = {p for s, c in batch for p in range(s, s + c)}
                    s = base.copy()
                    assert s.add_many(batch) == len(span - stored)
                    check(s, set(stored) | span)
