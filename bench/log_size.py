"""Bytes on disk per input of the embedded log, next to a plain-JSON baseline written in the same run.

Three workloads go through the real ``EngineRunner`` on a fresh SQLite file each, with the inbox
written the way ``EmbeddedService.submit`` writes it:

* **status**: handshaken VMs reporting status every tick (what almost all of a fleet's log is);
* **balloon**: SetTarget and 256-range balloon answers, round after round;
* **mix**: status every tick, and every tenth VM ballooning 512 MiB in and out every 100 ticks.

For each, the whole file (inbox + events + outbox + snapshots + indexes + meta, after a WAL
checkpoint) divided by the inputs written, twice: with every row live (format 2 rows, the share of
each table from SQLite's ``dbstat``) and once the consumed history is archived into compressed
segments (what the runner does every ``ARCHIVE_EVERY`` records; VACUUMed). And the
baseline: the same inputs and events as JSON lines (``{"vm","tick","record"}`` per input,
``{"vm","seq","inbox_pos","record"}`` per event), uncompressed. ``--profile`` adds the top lines of
a cProfile of the SQLite runner on status reports and of pure ``process`` on the same inputs.

Run: ``python -m bench.log_size [--vms 200] [--ticks 200] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from bench.engine import machine
from services.dm_engine import EngineConfig, initial_state, process
from services.dm_engine import inputs as inp
from services.dm_engine.inputs import ALL_VMS
from services.dm_engine.records import to_dict
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, CapabilitiesReport, StatusReport, VersionRequest, encode
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog

CONFIG = EngineConfig(post_init_wait_ticks=1, balloon_timeout_ticks=10**9)
#: The target of issue 14 for a status-report input, all included.
TARGET_BYTES = 60
#: Status reports a fleet of 10,000 VMs writes in a day at one report per second.
FLEET_DAY_INPUTS = 10_000 * 86_400

Row = tuple[str, int, inp.Input]


def inbox_row(vm: str, tick: int, record: inp.Input) -> tuple[str, int, dict[str, object], None]:
    """The row ``EmbeddedService.submit`` appends (the record stamped with the current tick)."""
    return vm, tick, to_dict(record), None


def handshake(vm: str) -> Iterator[Row]:
    yield vm, 0, inp.ChannelOpened(tick=0, boot_bytes=4 << 30, maxmem_bytes=16 << 30)
    yield vm, 0, inp.GuestMessage(tick=0, raw=encode(VersionRequest(trans_id=1, version=0x20000)))
    raw = encode(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))
    yield vm, 0, inp.GuestMessage(tick=0, raw=raw)


def status(vm: str, v: int, tick: int) -> Row:
    raw = encode(
        StatusReport(
            trans_id=2 + tick,
            num_avail=700_000 + v * 37 + (tick * 7919) % 4096,
            num_committed=300_000 + (tick * 104729) % 8192,
        )
    )
    return vm, tick, inp.GuestMessage(tick=tick, raw=raw)


def balloon_round(vm: str, tick: int) -> Iterator[Row]:
    yield vm, tick, inp.SetTarget(tick=tick, target_bytes=(4 << 30) - (512 << 20))
    base = (tick // 10) * 131072 % (1 << 20)
    ranges = tuple((base + 512 * i, 512) for i in range(256))
    yield vm, tick, inp.GuestMessage(tick=tick, raw=encode(BalloonResponse(more_pages=False, ranges=ranges)))


def workload(name: str, vms: int, ticks: int) -> Iterator[list[Row]]:
    """Batches of inbox rows, one batch per tick."""
    names = [f"vm{v:05d}" for v in range(vms)]
    yield [row for vm in names for row in handshake(vm)]
    for tick in range(1, ticks + 1):
        batch: list[Row] = [(ALL_VMS, tick, inp.Tick(tick=tick))]
        for v, vm in enumerate(names):
            if name in ("status", "mix"):
                batch.append(status(vm, v, tick))
            if name == "balloon" and tick % 10 == v % 10:
                batch.extend(balloon_round(vm, tick))
                batch.append((vm, tick + 5, inp.SetTarget(tick=tick, target_bytes=4 << 30)))
            if name == "mix" and v % 10 == 0:
                if tick % 100 == 50:
                    batch.extend(balloon_round(vm, tick))
                elif tick % 100 == 80:
                    batch.append((vm, tick, inp.SetTarget(tick=tick, target_bytes=4 << 30)))
        yield batch


@dataclass
class Size:
    inputs: int
    events: int
    file_bytes: int
    tables: dict[str, int]
    json_bytes: int
    #: The whole file once the consumed history is archived into compressed segments (VACUUMed).
    archived_bytes: int = 0
    #: Bytes per table of that file (segments, snapshots, ...).
    archived_tables: dict[str, int] | None = None


def table_bytes(path: str) -> dict[str, int]:
    """Bytes of pages per table, its indexes counted with it (``dbstat``)."""
    con = sqlite3.connect(path)
    owners = {str(n): str(t) for n, t in con.execute("SELECT name, tbl_name FROM sqlite_master")}
    out: dict[str, int] = {}
    for name, size in con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
        table = owners.get(str(name), str(name))
        out[table] = out.get(table, 0) + int(size)
    con.close()
    return out


def measure(name: str, vms: int, ticks: int, tmp: str) -> Size:
    path = os.path.join(tmp, f"{name}.db")
    log = SqliteLog(path)
    runner = EngineRunner(log, CONFIG, archive_every=0)
    inputs = 0
    for batch in workload(name, vms, ticks):
        log.append_inputs(inbox_row(vm, tick, record) for vm, tick, record in batch)
        inputs += len(batch)
        runner.run_until_idle(5000)
    json_bytes = 0
    for row in log.iter_inbox():
        json_bytes += len(json.dumps({"vm": row.vm, "tick": row.tick, "record": row.record})) + 1
    events = 0
    for ev in log.iter_events():
        json_bytes += len(f'{{"vm":"{ev.vm}","seq":{ev.seq},"inbox_pos":{ev.inbox_pos},"record":{ev.record}}}') + 1
        events += 1
    log.close()
    live = _settled_size(path)
    tables = table_bytes(path)
    log = SqliteLog(path)
    EngineRunner(log, CONFIG, archive_every=0).archive()
    log.close()
    archived = _settled_size(path, vacuum=True)
    return Size(inputs, events, live, tables, json_bytes, archived, table_bytes(path))


def _settled_size(path: str, vacuum: bool = False) -> int:
    """File size with the WAL checkpointed into it (and free pages dropped, if ``vacuum``)."""
    con = sqlite3.connect(path)
    if vacuum:
        con.execute("VACUUM")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return os.path.getsize(path)


def profile_runner(vms: int, rounds: int, top: int) -> str:
    """cProfile of the runner and of pure ``process`` on the same status reports."""
    setup = [row for v in range(vms) for row in handshake(f"vm{v:05d}")]
    work = [status(f"vm{v:05d}", v, 2 + r) for r in range(rounds) for v in range(vms)]
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        log = SqliteLog(os.path.join(tmp, "profile.db"))
        runner = EngineRunner(log, CONFIG)
        log.append_inputs(inbox_row(vm, tick, r) for vm, tick, r in setup)
        log.append_inputs([inbox_row(ALL_VMS, 1, inp.Tick(tick=1))])
        runner.run_until_idle()
        log.append_inputs(inbox_row(vm, tick, r) for vm, tick, r in work)
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.runcall(runner.run_until_idle, 1000)
        durable = time.perf_counter() - started
        log.close()
    out.write(f"--- SQLite runner, {len(work):,} status reports ({len(work) / durable:,.0f}/s under the profiler)\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    states: dict[str, VmState] = {}
    for vm, _, r in setup:
        process(states.setdefault(vm, initial_state(vm)), r, CONFIG)
    for state in states.values():
        process(state, inp.Tick(tick=1), CONFIG)

    def pure() -> None:
        for vm, _, r in work:
            process(states[vm], r, CONFIG)

    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.runcall(pure)
    elapsed = time.perf_counter() - started
    out.write(f"--- pure process, same inputs ({len(work) / elapsed:,.0f}/s under the profiler)\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.log_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="also print cProfile top lines of the runner")
    parser.add_argument(
        "--workloads", nargs="+", choices=("status", "balloon", "mix"), default=["status", "balloon", "mix"]
    )
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"{args.vms} VMs x {args.ticks} ticks per workload")
    print(
        f"{'workload':9} {'inputs':>8} {'events':>8} {'JSON B/input':>12} {'live rows':>10} {'vs JSON':>8} "
        f"{'archived':>9} {'vs JSON':>8}  live rows per table (B/input)"
    )
    results: dict[str, Size] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            s = results[name] = measure(name, args.vms, args.ticks, tmp)
            per = s.file_bytes / s.inputs
            base = s.json_bytes / s.inputs
            tables = " ".join(
                f"{t}={b / s.inputs:.0f}"
                for t, b in sorted(s.tables.items(), key=lambda kv: -kv[1])
                if b / s.inputs >= 1
            )
            arch = s.archived_bytes / s.inputs
            print(
                f"{name:9} {s.inputs:8,} {s.events:8,} {base:12.1f} {per:10.1f} {per / base:7.2f}x "
                f"{arch:9.1f} {arch / base:7.2f}x  {tables}"
            )
    for name, s in results.items():
        parts = sorted((s.archived_tables or {}).items(), key=lambda kv: -kv[1])
        print(f"{name:9} archived, per table (B/input): " + " ".join(f"{t}={b / s.inputs:.1f}" for t, b in parts))
    s = results.get("status") or next(iter(results.values()))
    kept = s.archived_tables or {}
    # What grows with every input, and what is kept once per VM (its latest snapshot, its archived
    # sequence number) whatever the length of the history.
    growing = sum(kept.get(t, 0) for t in ("segments", "inbox", "events", "outbox")) / s.inputs
    per_vm = sum(kept.get(t, 0) for t in ("snapshots", "archived")) / args.vms
    verdict = "MET" if growing <= TARGET_BYTES else "NOT MET"
    print(
        f"target <= {TARGET_BYTES} B per status-report input, all included (archived history): {growing:.1f} B per "
        f"input that grows with the log + {per_vm:,.0f} B per VM kept once (snapshot): {verdict} "
        f"(whole file of this short run: {s.archived_bytes / s.inputs:.1f} B/input)"
    )
    day = FLEET_DAY_INPUTS
    print(
        f"a fleet-day (10,000 VMs reporting at 1 Hz: {day:,} inputs): {day * s.json_bytes / s.inputs / 1e9:,.0f} GB "
        f"as JSON lines, {day * s.file_bytes / s.inputs / 1e9:,.0f} GB as live rows, "
        f"{(day * growing + 10_000 * per_vm) / 1e9:,.1f} GB archived"
    )
    if args.profile:
        print(profile_runner(1000, 10, 25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
