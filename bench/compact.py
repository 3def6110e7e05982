"""Bytes on disk before and after ``hvdm compact``, against the uncompacted log of the same run.

Each workload of ``bench.log_size`` (status reports; a mix of status and balloon rounds) is written
through the real ``EngineRunner`` with every batch stamped one simulated hour after the previous
(the stamps are the only thing faked: ``sqlite_log``'s clock), twice: once with every row live, once
archived into compressed segments (what the runner does every ``ARCHIVE_EVERY`` records). Then:

* **half**: ``compact`` at the middle of the stamps (keep the newer half in full): bytes after /
  bytes before, and bytes per input kept;
* **all**: ``compact`` everything consumed: what is left per VM (its snapshot and its summary),
  whatever the history's length -- the floor of a log under retention;
* the audit of the compacted log still replays (``replay_matches``), and takes the time of the kept
  history only (ratio against the audit of the whole log).

Run: ``python -m bench.compact [--vms 20] [--ticks 3000] [--workloads status mix]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass

from bench.engine import machine
from bench.log_size import CONFIG, inbox_row, workload
from services.audit import audit
from services.audit.reader import SqliteReader
from services.embedded.runner import EngineRunner
from services.event_log import sqlite_log
from services.event_log.compaction import compact, file_bytes
from services.event_log.sqlite_log import SqliteLog

HOUR = 3600.0


class _Clock:
    """Stamps for ``sqlite_log``: one simulated hour per batch, ending now."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()


def build(path: str, name: str, vms: int, ticks: int, archived: bool) -> tuple[int, float]:
    """Write the workload; returns (inputs, wall time of the first batch)."""
    clock = _Clock(time.time() - (ticks + 1) * HOUR)
    start = clock.now
    names = vars(sqlite_log)  # the module's ``time``, which stamps inbox rows
    real = names["time"]
    names["time"] = clock
    inputs = 0
    try:
        log = SqliteLog(path)
        runner = EngineRunner(log, CONFIG, archive_every=0)
        for batch in workload(name, vms, ticks):
            log.append_inputs(inbox_row(vm, tick, record) for vm, tick, record in batch)
            inputs += len(batch)
            runner.run_until_idle(5000)
            clock.now += HOUR
        if archived:
            runner.archive()
        log.close()
    finally:
        names["time"] = real
    settle(path)
    return inputs, start


def settle(path: str) -> None:
    """Free pages dropped and the WAL checkpointed: the size a log settles at."""
    con = sqlite3.connect(path)
    con.execute("VACUUM")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def timed_audit(path: str) -> tuple[bool, float]:
    reader = SqliteReader(path)
    started = time.perf_counter()
    report = audit(reader)
    elapsed = time.perf_counter() - started
    reader.close()
    return report.replay_matches, elapsed


@dataclass
class Row:
    workload: str
    form: str
    inputs: int
    before: int
    half: int
    half_kept_inputs: int
    half_seconds: float
    all_bytes: int
    audit_ratio: float
    matches: bool


def measure(name: str, vms: int, ticks: int, archived: bool, tmp: str) -> Row:
    path = os.path.join(tmp, f"{name}-{'archived' if archived else 'live'}.db")
    inputs, start = build(path, name, vms, ticks, archived)
    before = file_bytes(path)
    whole_ok, whole_seconds = timed_audit(path)
    everything = path + ".all.db"
    shutil.copy(path, everything)
    started = time.perf_counter()
    half = compact(path, start + (ticks // 2) * HOUR)
    half_seconds = time.perf_counter() - started
    assert half.cut is not None and half.bytes_after is not None
    ok, seconds = timed_audit(path)
    compact(everything, time.time() + 1)
    return Row(
        name,
        "archived" if archived else "live rows",
        inputs,
        before,
        half.bytes_after,
        inputs - half.cut.pos,
        half_seconds,
        file_bytes(everything),
        seconds / whole_seconds,
        ok and whole_ok,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.compact", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=3000)
    parser.add_argument("--workloads", nargs="+", choices=("status", "mix"), default=["status", "mix"])
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(f"{args.vms} VMs x {args.ticks} ticks per workload, batches stamped one hour apart")
    print(
        f"{'workload':9} {'form':10} {'inputs':>8} {'before B':>11} {'half B':>11} {'ratio':>6} {'B/kept in':>9} "
        f"{'compact s':>9} {'all B':>9} {'B/VM':>6} {'audit':>6} replay"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            for archived in (False, True):
                r = measure(name, args.vms, args.ticks, archived, tmp)
                print(
                    f"{r.workload:9} {r.form:10} {r.inputs:8,} {r.before:11,} {r.half:11,} {r.half / r.before:5.2f}x "
                    f"{r.half / r.half_kept_inputs:9.1f} {r.half_seconds:9.2f} {r.all_bytes:9,} "
                    f"{r.all_bytes / args.vms:6,.0f} {r.audit_ratio:5.2f}x {'matches' if r.matches else 'DIVERGES'}"
                )
    print(
        "ratio = bytes after compacting the older half / bytes of the whole log (baseline, same run); "
        "all = everything compacted: one snapshot + one summary per VM; audit = audit time after / before"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
