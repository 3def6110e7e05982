"""Benchmark ``PageRangeSet`` against what a Python user would pick instead, on balloon traces.

``python -m bench.ranges [--quick] [--seed N] [--tune]`` (or ``hvdm bench ranges ...``).

Traces (all replayed identically through every implementation, in one process):

* **a, Linux-like ballooning.** A guest gives up memory the way Linux's hv_balloon does: 2 MiB
  (512-page, 2 MiB-aligned) chunks while the buddy allocator has them, then single 4 KiB pages. Half
  of the guest's 2 MiB blocks go as chunks, then a quarter of the pages of the other blocks as single
  pages, at random. The ranges are cut into messages of 510 (a full ``DM_BALLOON_RESPONSE``) and the
  messages are shuffled; each message is one ``add_many``.
* **b, worst case.** Every page of a 4 GiB window (2**20 pages) as a single-page range, in random
  order, in batches of 510. The set grows to about 2**18 ranges and ends as one range: nearly every
  insert merges with a neighbour or joins two ranges.
* **c, unballoon.** ``pop_highest(524288)`` (QEMU's 2 GiB per-message cap) until empty, on the set
  left by trace a.
* **a', balloon-response accounting.** Trace a again, but each message is accounted the way the engine
  does it: the pages not yet ballooned (``difference``), the double frees (``intersection``), then
  ``add_many``.

Implementations:

* ``PageRangeSet`` (``add_many`` per message);
* a one-range-at-a-time loop over a ``sortedcontainers.SortedDict`` start -> end, implementing QEMU's
  insert (PRT.c) inline: the baseline;
* ``portion``: a union of closed-open ``Interval`` objects, ``|``-ed with each message;
* ``intervaltree``: ``addi`` each range, then ``merge_overlaps(strict=False)`` per message.

The peers are too slow for the full traces, so they run on smaller instances sized to take seconds
(a prefix of trace a, a complete 2**15-page instance of trace b, smaller sets for c), and
``PageRangeSet`` and the baseline run on those same instances too: every ratio compares equal work.
``portion``'s cost per message grows with the set (it rebuilds its sorted list of intervals), so its
ratio depends on the instance size. Only ``PageRangeSet`` and the baseline also report how many pages
each message newly added; the peers just compute the union. Every run's final set (or popped
sequence) is checked against ``PageRangeSet``'s.

Each timing is the best of 3 runs, more for runs shorter than 0.2 s in total, fewer once the runs have
taken 5 s. Rates and ratios
use the process's CPU time, because other work on a shared machine inflates wall-clock time; the wall
time of the same best run is printed next to it.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import intervaltree
import portion
from sortedcontainers import SortedDict

from services.range_store import PageRangeSet
from services.range_store import ranges as ranges_module

Range = tuple[int, int]
Message = list[Range]

BLOCK_PAGES = 512  # 2 MiB
MESSAGE_RANGES = 510  # ranges in a full DM_BALLOON_RESPONSE
UNBALLOON_MAX_PAGES = 524_288  # QEMU's per-message unballoon cap (2 GiB)
TIB_PAGES = 1 << 28  # 1 TiB in 4 KiB pages
MIN_SECONDS = 0.2  # keep re-running a contender until its runs add up to this


# ---------------------------------------------------------------------------------------- memory


def deep_sizeof(obj: object) -> int:
    """Bytes of ``obj`` and everything it references (containers, their items, instance state).

    Each object is counted once; classes, modules and functions are shared, so they are not counted.
    Cached small ints are counted like any other object (a slight overestimate).
    """
    seen: set[int] = set()
    total = 0
    stack: list[object] = [obj]
    shared = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, shared):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        stack.extend(gc.get_referents(item))
        # Objects with __slots__ and no __dict__ are traversed by gc only if they hold GC-tracked
        # values; read the slots explicitly so that plain ints in slots are counted too.
        for klass in type(item).__mro__:
            for name in getattr(klass, "__slots__", ()):
                value = getattr(item, name, None)
                if value is not None:
                    stack.append(value)
    return total


# ---------------------------------------------------------------------------------------- traces


def linux_trace(guest_pages: int, rng: random.Random) -> list[Message]:
    """Trace a: 2 MiB chunks of half the blocks, then single pages of a quarter of the rest."""
    blocks = list(range(guest_pages // BLOCK_PAGES))
    rng.shuffle(blocks)
    half = len(blocks) // 2
    ranges: list[Range] = [(b * BLOCK_PAGES, BLOCK_PAGES) for b in blocks[:half]]
    singles: list[Range] = []
    for b in blocks[half:]:
        base = b * BLOCK_PAGES
        singles.extend((base + off, 1) for off in rng.sample(range(BLOCK_PAGES), BLOCK_PAGES // 4))
    rng.shuffle(singles)
    ranges += singles
    messages = [ranges[k : k + MESSAGE_RANGES] for k in range(0, len(ranges), MESSAGE_RANGES)]
    rng.shuffle(messages)
    return messages


def worst_trace(pages: int, rng: random.Random) -> list[Message]:
    """Trace b: every page of [0, pages) as a single-page range, random order, batches of 510."""
    order = list(range(pages))
    rng.shuffle(order)
    return [[(p, 1) for p in order[k : k + MESSAGE_RANGES]] for k in range(0, pages, MESSAGE_RANGES)]


# ---------------------------------------------------------------------------------------- contenders


def sorteddict_add(tree: Any, start: int, count: int) -> int:
    """QEMU's page_range_tree_insert (PRT.c) on a SortedDict start -> end; returns new pages."""
    end = start + count
    i = tree.bisect_right(start)
    dup = 0
    cur, cur_end = start, end
    if i:
        prev_start, prev_end = tree.peekitem(i - 1)
        if prev_end >= start:
            if prev_end >= end:
                return 0
            dup = prev_end - start
            cur = prev_start
    while i < len(tree):
        next_start, next_end = tree.peekitem(i)
        if next_start > cur_end:
            break
        dup += min(next_end, end) - next_start
        if next_end > cur_end:
            cur_end = next_end
        del tree[next_start]
    tree[cur] = cur_end
    return count - dup


def sorteddict_pop(tree: Any, max_pages: int) -> Range | None:
    """QEMU's page_range_tree_pop on a SortedDict start -> end."""
    if not tree:
        return None
    start, end = tree.peekitem(-1)
    if end - start > max_pages:
        tree[start] = end - max_pages
        return (end - max_pages, max_pages)
    tree.popitem(-1)
    return (start, end - start)


@dataclass
class Run:
    """One timed replay: CPU and wall seconds of its best run."""

    name: str
    ops: int
    cpu: float
    wall: float
    result: list[Range]

    @property
    def rate(self) -> float:
        return self.ops / self.cpu if self.cpu > 0 else float("inf")


def _timed(fn: Callable[[], list[Range]], budget: float = 5.0) -> tuple[float, float, list[Range]]:
    """CPU and wall seconds of the best run: 3 runs, more while under MIN_SECONDS, fewer past ``budget``."""
    best = (float("inf"), float("inf"))
    spent = 0.0
    runs = 0
    result: list[Range] = []
    while runs < 3 or (spent < MIN_SECONDS and runs < 1000):
        if runs < 3:
            gc.collect()
        runs += 1
        c0 = time.process_time()
        w0 = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - w0
        cpu = time.process_time() - c0
        best = min(best, (cpu, wall))
        spent += wall
        if spent > budget:
            break
    return best[0], best[1], result


def add_prs(messages: Sequence[Message]) -> Callable[[], list[Range]]:
    def run() -> list[Range]:
        s = PageRangeSet()
        add_many = s.add_many
        for msg in messages:
            add_many(msg)
        return s.to_list()

    return run


def add_sorteddict(messages: Sequence[Message]) -> Callable[[], list[Range]]:
    def run() -> list[Range]:
        tree = SortedDict()
        for msg in messages:
            for start, count in msg:
                if count:
                    sorteddict_add(tree, start, count)
        return [(s, e - s) for s, e in tree.items()]

    return run


def add_portion(messages: Sequence[Message]) -> Callable[[], list[Range]]:
    closedopen = portion.closedopen

    def run() -> list[Range]:
        union = portion.empty()
        for msg in messages:
            union = union | portion.Interval(*[closedopen(s, s + c) for s, c in msg])
        return [] if union.empty else [(a.lower, a.upper - a.lower) for a in union]

    return run


def add_intervaltree(messages: Sequence[Message]) -> Callable[[], list[Range]]:
    def run() -> list[Range]:
        tree = intervaltree.IntervalTree()
        for msg in messages:
            addi = tree.addi
            for s, c in msg:
                addi(s, s + c)
            tree.merge_overlaps(strict=False)
        return sorted((iv.begin, iv.end - iv.begin) for iv in tree)

    return run


def account_prs(messages: Sequence[Message]) -> Callable[[], list[Range]]:
    """Per message: (pages newly ballooned, pages already ballooned), then record the message."""

    def run() -> list[Range]:
        s = PageRangeSet()
        out: list[Range] = []
        for msg in messages:
            fresh = s.difference(msg)
            dup = s.intersection(msg)
            s.add_many(msg)
            out.append((sum(c for _, c in fresh), sum(c for _, c in dup)))
        return out

    return run


def account_portion(messages: Sequence[Message]) -> Callable[[], list[Range]]:
    closedopen = portion.closedopen

    def pages(iv: Any) -> int:
        return 0 if iv.empty else sum(a.upper - a.lower for a in iv)

    def run() -> list[Range]:
        union = portion.empty()
        out: list[Range] = []
        for msg in messages:
            iv = portion.Interval(*[closedopen(s, s + c) for s, c in msg])
            out.append((pages(iv - union), pages(iv & union)))
            union = union | iv
        return out

    return run


def pop_prs(ranges: list[Range]) -> Callable[[], list[Range]]:
    def run() -> list[Range]:
        s = PageRangeSet(ranges)
        popped: list[Range] = []
        append = popped.append
        pop = s.pop_highest
        item = pop(UNBALLOON_MAX_PAGES)
        while item is not None:
            append(item)
            item = pop(UNBALLOON_MAX_PAGES)
        return popped

    return run


def pop_sorteddict(ranges: list[Range]) -> Callable[[], list[Range]]:
    def run() -> list[Range]:
        tree = SortedDict((s, s + c) for s, c in ranges)
        popped: list[Range] = []
        item = sorteddict_pop(tree, UNBALLOON_MAX_PAGES)
        while item is not None:
            popped.append(item)
            item = sorteddict_pop(tree, UNBALLOON_MAX_PAGES)
        return popped

    return run


def pop_portion(ranges: list[Range]) -> Callable[[], list[Range]]:
    def run() -> list[Range]:
        union = portion.Interval(*[portion.closedopen(s, s + c) for s, c in ranges])
        popped: list[Range] = []
        while not union.empty:
            top = union[-1]
            lower = max(top.lower, top.upper - UNBALLOON_MAX_PAGES)
            popped.append((lower, top.upper - lower))
            union = union - portion.closedopen(lower, top.upper)
        return popped

    return run


def pop_intervaltree(ranges: list[Range]) -> Callable[[], list[Range]]:
    def run() -> list[Range]:
        tree = intervaltree.IntervalTree.from_tuples((s, s + c) for s, c in ranges)
        popped: list[Range] = []
        while tree:
            (top,) = tree.at(tree.end() - 1)
            tree.remove(top)
            lower = max(top.begin, top.end - UNBALLOON_MAX_PAGES)
            if lower > top.begin:
                tree.addi(top.begin, lower)
            popped.append((lower, top.end - lower))
        return popped

    return run


# ---------------------------------------------------------------------------------------- reporting


def _row(run: Run, reference: Run | None, unit: str) -> str:
    ratio = ""
    if reference is not None and run is not reference:
        ratio = f"PageRangeSet x{reference.rate / run.rate:,.1f}"
    return (
        f"    {run.name:<27}{run.ops:>10,} {unit:<7}{run.cpu:>8.3f} s cpu{run.wall:>8.3f} s wall"
        f"{run.rate:>12,.0f} /s   {ratio}"
    )


def _group(
    title: str,
    ops: int,
    unit: str,
    contenders: Iterable[tuple[str, Callable[[], list[Range]]]],
    failures: list[str],
) -> Run:
    """Time each contender on the same input, print one line each, check they agree."""
    print(f"  {title}")
    runs: list[Run] = []
    for name, fn in contenders:
        cpu, wall, result = _timed(fn)
        run = Run(name, ops, cpu, wall, result)
        runs.append(run)
        print(_row(run, runs[0], unit), flush=True)
        if result != runs[0].result:
            failures.append(f"{title}: {name} disagrees with {runs[0].name}")
            print(f"    !! {name} result differs from {runs[0].name}")
    return runs[0]


def _machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"machine: {platform.machine()}, processor {platform.processor() or '?'!r}"
        f"{f' ({model})' if model else ''}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.platform()}"
    )


def _memory() -> None:
    print("memory of a set holding one 1 TiB range (start 2**40-1, 2**28 pages), deep sizeof:")
    start = (1 << 40) - 1
    rows: list[tuple[str, object]] = [
        ("PageRangeSet", PageRangeSet([(start, TIB_PAGES)])),
        ("SortedDict start->end", SortedDict({start: start + TIB_PAGES})),
        ("portion Interval", portion.closedopen(start, start + TIB_PAGES)),
        ("intervaltree IntervalTree", intervaltree.IntervalTree.from_tuples([(start, start + TIB_PAGES)])),
    ]
    for name, obj in rows:
        print(f"    {name:<28}{deep_sizeof(obj):>8,} bytes")


# ---------------------------------------------------------------------------------------- tuning


def tune(rng: random.Random) -> None:
    """Time one 510-range add_many and remove_many, merged range by range vs by rebuild."""
    saved = ranges_module._REBUILD_RATIO
    print(
        f"one {MESSAGE_RANGES}-range batch into a set of n ranges, CPU µs, best of 20 "
        f"(rebuild is chosen when n <= {saved} * {MESSAGE_RANGES}):"
    )
    print(f"    {'n':>6} {'n/k':>6}   {'add: per range':>14} {'rebuild':>8}   {'remove: per range':>17} {'rebuild':>8}")
    try:
        for n in (250, 500, 1000, 2000, 4000, 8000, 16000, 64000):
            universe = n * 8
            stored = [(p, 3) for p in sorted(rng.sample(range(0, universe, 8), n))]
            singles = [(p, 1) for p in rng.sample(range(universe), MESSAGE_RANGES)]
            times: list[float] = []
            for method in (PageRangeSet.add_many, PageRangeSet.remove_many):
                for ratio in (0, 1 << 60):  # never rebuild / always rebuild
                    ranges_module._REBUILD_RATIO = ratio
                    best = float("inf")
                    for _ in range(20):
                        s = PageRangeSet(stored)
                        t0 = time.process_time()
                        method(s, singles)
                        best = min(best, time.process_time() - t0)
                    times.append(best * 1e6)
            print(
                f"    {n:>6} {n / MESSAGE_RANGES:>6.1f}   {times[0]:>14.0f} {times[1]:>8.0f}"
                f"   {times[2]:>17.0f} {times[3]:>8.0f}"
            )
    finally:
        ranges_module._REBUILD_RATIO = saved


# ---------------------------------------------------------------------------------------- main


@dataclass(frozen=True)
class Sizes:
    """Instance sizes. The peers' instances are the same in both modes, so their ratios compare."""

    guest_mib: int  # trace a
    worst_pages: int  # trace b
    peer_messages: int = 20  # prefix of trace a for every contender
    peer_worst_pages: int = 1 << 14  # complete trace b instance for every contender
    portion_messages: int | None = None  # larger prefix of trace a, portion only
    portion_worst_pages: int | None = None  # larger trace b instance, portion only
    portion_pop_ranges: int = MESSAGE_RANGES  # portion's pops are O(n) each: a small set


FULL = Sizes(guest_mib=16 << 10, worst_pages=1 << 20, portion_messages=80, portion_worst_pages=1 << 16)
QUICK = Sizes(guest_mib=4 << 10, worst_pages=1 << 17, portion_pop_ranges=128)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.ranges", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller full traces, no large portion runs")
    parser.add_argument("--seed", type=int, default=20231106)
    parser.add_argument("--tune", action="store_true", help="only measure the add_many rebuild crossover")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    print(_machine())
    if args.tune:
        tune(rng)
        return 0
    return run_all(QUICK if args.quick else FULL, rng)


def run_all(sizes: Sizes, rng: random.Random) -> int:
    """Run every trace at the given sizes; 1 if any contender disagreed with PageRangeSet."""
    trace_a = linux_trace(sizes.guest_mib << 8, rng)
    trace_b = worst_trace(sizes.worst_pages, rng)
    small_b = worst_trace(sizes.peer_worst_pages, rng)
    big_b = worst_trace(sizes.portion_worst_pages, rng) if sizes.portion_worst_pages else []
    # The traces stay alive for the whole run: keep the collector from rescanning them.
    gc.collect()
    gc.freeze()
    failures: list[str] = []

    def count(messages: Sequence[Message]) -> int:
        return sum(map(len, messages))

    def adders(messages: Sequence[Message], *peers: str) -> list[tuple[str, Callable[[], list[Range]]]]:
        contenders = [
            ("PageRangeSet.add_many", add_prs(messages)),
            ("SortedDict one at a time", add_sorteddict(messages)),
        ]
        if "portion" in peers:
            contenders.append(("portion Interval |", add_portion(messages)))
        if "intervaltree" in peers:
            contenders.append(("intervaltree + merge", add_intervaltree(messages)))
        return contenders

    chunks = sum(1 for msg in trace_a for _, c in msg if c == BLOCK_PAGES)
    print(
        f"\ntrace a (Linux-like): {sizes.guest_mib / 1024:g} GiB guest, {count(trace_a):,} ranges in "
        f"{len(trace_a):,} shuffled messages of <= {MESSAGE_RANGES} ({chunks:,} x 512 pages, then single pages)"
    )
    full_a = _group("full trace", count(trace_a), "ranges", adders(trace_a), failures)
    print(f"    -> {len(full_a.result):,} ranges stored at the end")
    prefix_a = trace_a[: sizes.peer_messages]
    _group(
        f"first {len(prefix_a)} messages",
        count(prefix_a),
        "ranges",
        adders(prefix_a, "portion", "intervaltree"),
        failures,
    )
    if sizes.portion_messages:
        longer_a = trace_a[: sizes.portion_messages]
        _group(
            f"first {len(longer_a)} messages",
            count(longer_a),
            "ranges",
            adders(longer_a, "portion"),
            failures,
        )

    print("\ntrace a' (balloon-response accounting): difference + intersection + add_many per message")
    _group("full trace", count(trace_a), "ranges", [("PageRangeSet", account_prs(trace_a))], failures)
    _group(
        f"first {len(prefix_a)} messages",
        count(prefix_a),
        "ranges",
        [("PageRangeSet", account_prs(prefix_a)), ("portion - & |", account_portion(prefix_a))],
        failures,
    )

    print(
        f"\ntrace b (worst case): {sizes.worst_pages:,} single pages in random order, "
        f"batches of {MESSAGE_RANGES}, ending as one range"
    )
    _group("full trace", count(trace_b), "ranges", adders(trace_b), failures)
    _group(
        f"the same on {sizes.peer_worst_pages:,} pages",
        count(small_b),
        "ranges",
        adders(small_b, "portion", "intervaltree"),
        failures,
    )
    if big_b:
        _group(
            f"the same on {sizes.portion_worst_pages:,} pages",
            count(big_b),
            "ranges",
            adders(big_b, "portion"),
            failures,
        )

    print(f"\ntrace c (unballoon): pop_highest({UNBALLOON_MAX_PAGES:,}) until empty")
    stored_a = full_a.result
    _group(
        f"set from full trace a ({len(stored_a):,} ranges)",
        len(stored_a),
        "pops",
        [("PageRangeSet.pop_highest", pop_prs(stored_a)), ("SortedDict", pop_sorteddict(stored_a))],
        failures,
    )
    stored_prefix = PageRangeSet(r for msg in prefix_a for r in msg).to_list()
    _group(
        f"set from the first {len(prefix_a)} messages ({len(stored_prefix):,} ranges)",
        len(stored_prefix),
        "pops",
        [
            ("PageRangeSet.pop_highest", pop_prs(stored_prefix)),
            ("SortedDict", pop_sorteddict(stored_prefix)),
            ("intervaltree", pop_intervaltree(stored_prefix)),
        ],
        failures,
    )
    stored_small = PageRangeSet(trace_a[0][: sizes.portion_pop_ranges]).to_list()
    _group(
        f"set from the first {sizes.portion_pop_ranges} ranges of trace a ({len(stored_small):,} ranges)",
        len(stored_small),
        "pops",
        [
            ("PageRangeSet.pop_highest", pop_prs(stored_small)),
            ("SortedDict", pop_sorteddict(stored_small)),
            ("portion Interval -", pop_portion(stored_small)),
            ("intervaltree", pop_intervaltree(stored_small)),
        ],
        failures,
    )
    print()
    _memory()
    gc.unfreeze()
    if failures:
        print("\nFAILED cross-checks:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
