"""Smoke test of bench/ranges.py at tiny sizes: every contender runs and agrees with PageRangeSet."""

from __future__ import annotations

import random

import pytest

from bench import ranges as bench


def test_tiny_run_agrees(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "MIN_SECONDS", 0.0)
    sizes = bench.Sizes(
        guest_mib=64,
        worst_pages=2048,
        peer_messages=2,
        peer_worst_pages=1024,
        portion_messages=3,
        portion_worst_pages=1536,
        portion_pop_ranges=16,
    )
    assert bench.run_all(sizes, random.Random(1)) == 0
    out = capsys.readouterr().out
    for heading in ("trace a ", "trace a' ", "trace b ", "trace c ", "1 TiB range"):
        assert heading in out
    assert "FAILED" not in out
    assert "PageRangeSet x" in out


def test_traces_have_the_documented_shape() -> None:
    messages = bench.linux_trace(64 << 8, random.Random(2))
    ranges = [r for msg in messages for r in msg]
    assert all(len(msg) <= bench.MESSAGE_RANGES for msg in messages)
    chunks = [r for r in ranges if r[1] == bench.BLOCK_PAGES]
    assert len(chunks) == 16 and all(s % bench.BLOCK_PAGES == 0 for s, _ in chunks)
    assert len(ranges) - len(chunks) == 16 * bench.BLOCK_PAGES // 4
    assert len(set(ranges)) == len(ranges)
    worst = [r for msg in bench.worst_trace(1000, random.Random(3)) for r in msg]
    assert sorted(worst) == [(p, 1) for p in range(1000)]


def test_deep_sizeof_counts_slots_and_containers() -> None:
    small = bench.deep_sizeof([1 << 40])
    assert small > bench.deep_sizeof([])
    assert bench.deep_sizeof([[1 << 40], [1 << 41]]) > 2 * small - 100
