"""Engine throughput on the embedded log: status reports from many VMs and 510-range balloon
responses, each measured through the SQLite runner and, as the baseline in the same process,
through the pure ``process`` function alone (so the ratio is the cost of durability).

Each side runs ``--repeat`` times, the two sides alternating (so a burst of load on a shared machine
hits both), and the best run of each counts. Two clocks: wall time, and the CPU time of this process
(``time.process_time``), which other jobs on a shared machine disturb far less; SQLite's writes
here never wait for the disk (WAL, ``synchronous=NORMAL``: no fsync per commit), so CPU time is
the durable path's cost too. Targets (issue 14): durable/pure >= 0.5 on status reports, and the
fragmented balloon worst case (510-range answers shuffled over RAM) >= 500,000 ranges/s through
SQLite.

Run: ``hvdm bench engine`` or ``python -m bench.engine [--quick] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial

from services.dm_engine import EngineConfig, initial_state, process
from services.dm_engine import inputs as inp
from services.dm_engine.records import to_dict
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, CapabilitiesReport, StatusReport, VersionRequest, encode
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog

CONFIG = EngineConfig(post_init_wait_ticks=1, balloon_timeout_ticks=10**9)


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} python={platform.python_version()}"


def handshake_inputs(boot_bytes: int) -> list[inp.Input]:
    return [
        inp.ChannelOpened(tick=0, boot_bytes=boot_bytes, maxmem_bytes=4 * boot_bytes),
        inp.GuestMessage(tick=0, raw=encode(VersionRequest(trans_id=1, version=0x20000))),
        inp.GuestMessage(
            tick=0, raw=encode(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))
        ),
        inp.Tick(tick=1),
    ]


def status_inputs(vms: int, per_vm: int) -> list[tuple[str, inp.Input]]:
    out: list[tuple[str, inp.Input]] = []
    for round_ in range(per_vm):
        tick = 2 + round_
        for v in range(vms):
            raw = encode(StatusReport(trans_id=3 + round_, num_avail=700_000 + v, num_committed=300_000 + round_))
            out.append((f"vm{v}", inp.GuestMessage(tick=tick, raw=raw)))
    return out


def balloon_inputs(messages: int, shuffled: bool = True) -> tuple[list[inp.Input], int]:
    """A 256 GiB guest asked to give 200 GiB: 2 MiB ranges, 510 per message, either shuffled over
    all of RAM (the set fragments: worst case) or in address order (what a Linux guest with
    contiguous free memory returns: the set stays a few ranges)."""
    boot_pages = 256 << 18
    starts = list(range(0, boot_pages, 512))
    if shuffled:
        random.Random(7).shuffle(starts)
    records: list[inp.Input] = [inp.SetTarget(tick=2, target_bytes=(boot_pages - 200 * (1 << 18)) << 12)]
    ranges = 0
    for m in range(messages):
        chunk = tuple((s, 512) for s in starts[m * 510 : (m + 1) * 510])
        ranges += len(chunk)
        records.append(inp.GuestMessage(tick=2, raw=encode(BalloonResponse(more_pages=True, ranges=chunk))))
    return records, ranges


Timing = tuple[float, float]  # (wall seconds, CPU seconds)


def timed(fn: Callable[[], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_pure(setup: dict[str, list[inp.Input]], work: list[tuple[str, inp.Input]]) -> Timing:
    states: dict[str, VmState] = {}
    for vm, records in setup.items():
        states[vm] = initial_state(vm)
        for r in records:
            process(states[vm], r, CONFIG)

    def run() -> None:
        for vm, r in work:
            process(states[vm], r, CONFIG)

    return timed(run)


def bench_sqlite(setup: dict[str, list[inp.Input]], work: list[tuple[str, inp.Input]], batch: int) -> Timing:
    with tempfile.TemporaryDirectory() as tmp:
        log = SqliteLog(os.path.join(tmp, "bench.db"))
        runner = EngineRunner(log, CONFIG)
        for vm, records in setup.items():
            log.append_inputs([(vm, r.tick, to_dict(r), None) for r in records])
        runner.run_until_idle()
        log.append_inputs([(vm, r.tick, to_dict(r), None) for vm, r in work])
        elapsed = timed(lambda: runner.run_until_idle(batch))
        log.close()
        return elapsed


def best_of(rep: int, pure: Callable[[], Timing], durable: Callable[[], Timing]) -> tuple[Timing, Timing]:
    """Best wall and best CPU time of each side over ``rep`` alternating runs."""
    p: list[Timing] = []
    d: list[Timing] = []
    for _ in range(rep):
        p.append(pure())
        d.append(durable())
    return (min(w for w, _ in p), min(c for _, c in p)), (min(w for w, _ in d), min(c for _, c in d))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.engine", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs of each side (a shared machine is noisy)")
    args = parser.parse_args(argv)
    rep = max(1, args.repeat)
    vms = 1000
    per_vm = 5 if args.quick else 20
    print(f"machine: {machine()}")

    setup = {f"vm{v}": handshake_inputs(4 << 30) for v in range(vms)}
    work = status_inputs(vms, per_vm)
    pure, durable = best_of(rep, lambda: bench_pure(setup, work), lambda: bench_sqlite(setup, work, 1000))
    n = len(work)
    for clock, i in (("wall", 0), ("cpu", 1)):
        print(
            f"(a) status reports, {vms} VMs [{clock}]: sqlite runner {n / durable[i]:,.0f} records/s; "
            f"pure process {n / pure[i]:,.0f} records/s; durable/pure ratio {pure[i] / durable[i]:.2f} (target 0.5)"
        )

    messages = 60 if args.quick else 200
    for label, shuffled in (("shuffled over RAM", True), ("in address order", False)):
        records, ranges = balloon_inputs(messages, shuffled)
        big = {"big": handshake_inputs(256 << 30)}
        work_b = [("big", r) for r in records]
        pure, durable = best_of(rep, partial(bench_pure, big, work_b), partial(bench_sqlite, big, work_b, 50))
        target = " (target 500,000 through sqlite)" if shuffled else ""
        for clock, i in (("wall", 0), ("cpu", 1)):
            print(
                f"(b) balloon responses, {messages} x 510 ranges {label} [{clock}]: "
                f"sqlite runner {ranges / durable[i]:,.0f} ranges/s; pure process {ranges / pure[i]:,.0f} ranges/s; "
                f"durable/pure ratio {pure[i] / durable[i]:.2f}{target}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
