"""Replay speed of the embedded log: folding recorded events and re-deciding the inbox (audit).

Builds a log with the real ``EngineRunner`` -- many VMs reporting status every tick (what most of
a production log is), plus balloon transactions -- then measures, in the same run:

* **read**: the event rows as stored (``SqliteReader.iter_stored_events``), the floor of any pass;
* **baseline**: reading the event rows and parsing their JSON (``iter_events`` + ``orjson``), the
  reading and parsing every replay paid before stored forms were read directly;
* **fold (json)**: the fold as it was done through JSON (``event_from_dict(loads(...))``), for the
  speed-up of the direct path in the same run;
* **fold**: stored rows -> ``records.event_from_stored`` -> ``evolve`` (what recovery and
  ``hvdm replay`` do);
* **re-decide**: inbox -> the runner's ``step`` -> stored form -> comparison with the stored row
  (``hvdm audit``'s proof);
* **audit**: the whole ``audit()`` (re-decide, compare, fold, behaviour report).

Each phase runs ``--repeat`` times and keeps its best time. Rates are events per second of CPU
time of this process (what one core does; on a shared machine wall time also counts other
processes' turns) and of wall time; ratios are against the baseline's CPU rate. The targets:
200,000 events/s folding and re-deciding, 150,000 events/s for the whole audit, on one core.

Run: ``python -m bench.replay [--vms 200] [--ticks 400] [--repeat 3] [--jobs 1 2 4]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable

from services.audit.divergence import RecordedStream, VmComparison
from services.audit.jobs import audit_jobs
from services.audit.logfile import engine_config
from services.audit.reader import SqliteReader, stored_events
from services.audit.replay import replay_inbox
from services.audit.report import audit
from services.dm_engine import EngineConfig, initial_state
from services.dm_engine import inputs as inp
from services.dm_engine.decider import evolve
from services.dm_engine.inputs import ALL_VMS
from services.dm_engine.records import event_from_dict, event_from_stored, loads, to_dict
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, CapabilitiesReport, StatusReport, VersionRequest, encode
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog

CONFIG = EngineConfig(post_init_wait_ticks=1, balloon_timeout_ticks=10**9)


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} python={platform.python_version()}"


def build_log(path: str, vms: int, ticks: int) -> int:
    """Write the benchmark log; returns the number of events recorded."""
    log = SqliteLog(path)
    runner = EngineRunner(log, CONFIG)
    rows: list[tuple[str, int, dict[str, object], str | None]] = []
    for v in range(vms):
        vm = f"vm{v:04d}"
        for record in (
            inp.ChannelOpened(tick=0, boot_bytes=4 << 30, maxmem_bytes=16 << 30),
            inp.GuestMessage(tick=0, raw=encode(VersionRequest(trans_id=1, version=0x20000))),
            inp.GuestMessage(
                tick=0, raw=encode(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))
            ),
        ):
            rows.append((vm, 0, to_dict(record), None))
    log.append_inputs(rows)
    for tick in range(1, ticks + 1):
        rows = [(ALL_VMS, tick, to_dict(inp.Tick(tick=tick)), None)]
        for v in range(vms):
            vm = f"vm{v:04d}"
            raw = encode(StatusReport(trans_id=2 + tick, num_avail=700_000 + v, num_committed=300_000 + tick))
            rows.append((vm, tick, to_dict(inp.GuestMessage(tick=tick, raw=raw)), None))
            if tick % 100 == 50 and v % 10 == 0:
                # Every tenth VM balloons 512 MiB in 510-range messages of 2 MiB, as Linux does.
                rows.append((vm, tick, to_dict(inp.SetTarget(tick=tick, target_bytes=(4 << 30) - (512 << 20))), None))
                base = (tick // 100) * 131072 % (1 << 20)
                ranges = tuple((base + 512 * i, 512) for i in range(256))
                raw = encode(BalloonResponse(more_pages=False, ranges=ranges))
                rows.append((vm, tick, to_dict(inp.GuestMessage(tick=tick, raw=raw)), None))
            if tick % 100 == 80 and v % 10 == 0:
                rows.append((vm, tick, to_dict(inp.SetTarget(tick=tick, target_bytes=4 << 30)), None))
        log.append_inputs(rows)
        if tick % 50 == 0:
            runner.run_until_idle(5000)
    runner.run_until_idle(5000)
    events = log.event_count()
    log.close()
    return events


def timed(fn: Callable[[], int], repeat: int) -> tuple[float, float, int]:
    """(best CPU seconds, best wall seconds, events) over ``repeat`` runs."""
    cpu = wall = float("inf")
    n = 0
    for _ in range(max(1, repeat)):
        started, started_cpu = time.perf_counter(), time.process_time()
        n = fn()
        cpu = min(cpu, time.process_time() - started_cpu)
        wall = min(wall, time.perf_counter() - started)
    return cpu, wall, n


def main(argv: list[str] | None = None) -> int:  # noqa: C901 -- a linear script: build, replay, report
    parser = argparse.ArgumentParser(prog="bench.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase; the best is kept")
    parser.add_argument(
        "--jobs", type=int, nargs="*", default=[1, 2, 4], help="also time audit_jobs with these process counts"
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "replay.db")
        started = time.perf_counter()
        events = build_log(path, args.vms, args.ticks)
        built = time.perf_counter() - started
        print(f"log: {args.vms} VMs x {args.ticks} ticks, {events:,} events (built in {built:.1f} s)")
        reader = SqliteReader(path)
        consumed = reader.consumed_position()
        config, _ = engine_config(reader)

        def read() -> int:
            n = 0
            for _row in reader.iter_stored_events():
                n += 1
            return n

        def fold_json() -> int:
            states: dict[str, VmState] = {}
            n = 0
            for row in reader.iter_events():
                state = states.get(row.vm)
                if state is None:
                    state = states[row.vm] = initial_state(row.vm)
                evolve(state, event_from_dict(loads(row.record)))
                n += 1
            return n

        def baseline() -> int:
            n = 0
            for row in reader.iter_events():
                loads(row.record)
                n += 1
            return n

        def fold() -> int:
            states: dict[str, VmState] = {}
            n = 0
            for vm, _seq, _pos, record in stored_events(reader):
                state = states.get(vm)
                if state is None:
                    state = states[vm] = initial_state(vm)
                evolve(state, event_from_stored(record))
                n += 1
            return n

        def redecide() -> int:
            comparisons: dict[str, VmComparison] = {}
            recorded = RecordedStream(stored_events(reader))
            _, decisions = replay_inbox(reader, config, consumed)
            n = 0
            for d in decisions:
                cmp = comparisons.get(d.vm)
                if cmp is None:
                    cmp = comparisons[d.vm] = VmComparison(d.vm, recorded.for_vm(d.vm), consumed)
                for e, text in zip(d.events, d.records, strict=True):
                    cmp.expect(d.inbox_pos, text, e)
                    n += 1
            assert all(c.matches for c in comparisons.values())
            return n

        def whole_audit() -> int:
            report = audit(reader)
            assert report.replay_matches
            return report.events

        def jobs_audit(jobs: int) -> Callable[[], int]:
            def run() -> int:
                report = audit_jobs(reader, jobs, min_records=0)
                assert report.replay_matches
                return report.events

            return run

        results: dict[str, tuple[float, float, int]] = {}
        phases: list[tuple[str, Callable[[], int]]] = [
            ("read", read),
            ("baseline", baseline),
            ("fold (json)", fold_json),
            ("fold", fold),
            ("re-decide", redecide),
            ("audit", whole_audit),
        ]
        for name, fn in phases:
            results[name] = timed(fn, args.repeat)
        for j in args.jobs:
            results[f"audit -j{j}"] = timed(jobs_audit(j), 1)
        reader.close()
    base_rate = results["baseline"][2] / results["baseline"][0]
    header = f"{'phase':12} {'events':>9} {'cpu s':>7} {'wall s':>7} {'events/s cpu':>13} {'events/s wall':>14}"
    print(f"{header} {'vs baseline':>11}")
    for name, (cpu, wall, n) in results.items():
        rate = n / cpu
        if name.startswith("audit -j"):  # other processes do the work: only wall time says anything
            print(f"{name:12} {n:9,} {'':>7} {wall:7.2f} {'':>13} {n / wall:14,.0f}")
            continue
        print(f"{name:12} {n:9,} {cpu:7.2f} {wall:7.2f} {rate:13,.0f} {n / wall:14,.0f} {rate / base_rate:10.2f}x")
    print(f"fold speed-up over the JSON path: {results['fold (json)'][0] / results['fold'][0]:.2f}x")
    if "audit -j1" in results:
        one = results["audit -j1"][1]
        for j in args.jobs:
            seconds = results[f"audit -j{j}"][1]
            speedup = one / seconds
            print(f"audit --jobs {j}: speed-up {speedup:.2f}x, efficiency {speedup / j:.0%} (cores: {os.cpu_count()})")

    def rate_of(name: str) -> float:
        return results[name][2] / results[name][0]

    for name, target in (("fold", 200_000), ("re-decide", 200_000), ("audit", 150_000)):
        verdict = "MET" if rate_of(name) >= target else "NOT MET"
        print(f"target {target:,} events/s (CPU time, one core) for {name}: {verdict} ({rate_of(name):,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
