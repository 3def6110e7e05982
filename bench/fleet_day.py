"""A synthetic fleet-day slice, end to end: write it through the embedded service, size it, audit it.

Why a slice and not a day: a fleet of 10,000 VMs reporting status at 1 Hz writes 864 million inputs
a day. The slice runs the same path for ``--vms`` x ``--seconds`` and extrapolates linearly; what it
ran is printed beside every figure.

**The write path** is the one ``hvdm run`` uses: an ``EmbeddedService`` (its ``submit``, one inbox
transaction per input as the gateway makes them, its ticker's ``append_tick``, its
``process_pending`` in batches of ``batch_size`` = 1,000) on a fresh SQLite file, with the default
``EngineConfig`` and the runner's own archiving of consumed history (every ``ARCHIVE_EVERY``
records). Only the clock is frozen: time moves when the benchmark appends the next tick, so the
slice runs as fast as the machine allows and is the same on every run.

**The fleet.** Boot sizes as in the rebalancer simulation (2 / 4 / 8 / 16 GiB for 30 / 40 / 20 /
10 % of the VMs, maximum 4 x boot). Each VM opens its channel and handshakes at tick 0; like a
Linux guest (guest-behaviour.md 3) it stays silent for the engine's post-init wait (50 ticks, ticks
only), then reports status once per tick: ``num_committed`` about 35 % of boot plus a few pages of
noise, ``num_avail`` what is left after the balloon.

**Balloon traffic** follows the rebalancer's ``hvdm`` policy on its own model (``hvdm rebalance
--simulate --vms 1000 --hours 8``, seed 1, the README's table): per VM-minute it made 0.0513
balloon and 0.1149 unballoon operations (and 0.1116 hot-add chunks, not modelled here: a VM
needs memory backends for them), ballooning 161,618 pages (631 MiB) per operation and
unballooning 61,259 (239 MiB). So by default ``--balloon-share`` = 0.166 of the VMs get a new
target each minute (spread evenly over its seconds, drawn from a fixed permutation): a VM with
nothing ballooned is asked for 316 x 2 MiB = 161,792 pages less, otherwise for up to 120 x 2 MiB
= 61,440 pages back (one balloon to three unballoons, against the model's 1 : 2.2). The guest
side answers the engine's real requests the next tick as a Linux guest does, through the guest
simulator's ``GuestMemory`` and ``linux_balloon_up`` (2 MiB units, lowest free pages first, up to
510 ranges per ``BALLOON_RESPONSE``: here one response of 316 ranges per balloon), and frees what
an ``UNBALLOON_REQUEST`` lists, answering the last one.

**Measured**, in one process: the write rate (inputs/s, with the share of it spent appending and
in the engine), the file on disk per input and in total (after a WAL checkpoint; split by table
into what grows with the log and what is kept once per VM), against **plain JSON lines** of the
same inputs and events (``bench.log_size``'s baseline); the audit (``audit_jobs``, i.e. ``hvdm
audit --jobs N``) for each of ``--jobs-list``, with speed-up and efficiency (speed-up / jobs)
against **the single-job audit**; for job counts above this machine's cores, the N parts are
audited one after another (``PartReader``) and the slowest part stands for the wall time N cores
would take (a simulation of more cores: the merge is not included); and ``replay_matches``. Then
a full day at the same rates.

Run: ``python -m bench.fleet_day [--vms 10000] [--seconds 3600] [--balloon-share 0.166]
[--jobs-list 1 2 4] [--db FILE] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.engine import machine
from bench.log_size import table_bytes
from services.audit.jobs import PartReader, audit_jobs, default_jobs, split
from services.audit.reader import SqliteReader
from services.audit.report import audit
from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import ChannelOpened, GuestMessage, SetTarget
from services.dm_engine.step import Processed
from services.dm_protocol import (
    BalloonRequest,
    CapabilitiesReport,
    Message,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    decode,
    encode,
)
from services.embedded.clock import TickClock
from services.embedded.runner import EngineRunner
from services.embedded.service import EmbeddedService
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim.balloon import linux_balloon_up
from services.guest_sim.memory import PAGES_IN_2M, GuestMemory
from services.units import GIB, PAGE_SIZE

#: Re-targets per VM-minute: the rebalancer model's balloon + unballoon operations (docstring).
DEFAULT_BALLOON_SHARE = 0.166
#: Pages asked for per balloon (161,618 in the model, rounded to 2 MiB units) and per unballoon.
BALLOON_PAGES = 316 * PAGES_IN_2M
UNBALLOON_PAGES = 120 * PAGES_IN_2M
#: (boot GiB, VMs out of 10): the rebalancer simulation's mix.
BOOT_MIX = ((2, 3), (4, 4), (8, 2), (16, 1))
DAY_SECONDS = 86_400
#: The VMs of the fleet the issue is about, for the day's extrapolation at fleet width.
FLEET_VMS = 10_000
#: Records per engine batch: ``EmbeddedService``'s default.
BATCH_SIZE = 1000


def cpu_now() -> float:
    """CPU seconds of this process and of its children that have ended (the audit's workers).

    Why CPU time beside wall time: the machine is shared, and under load wall time measures the
    neighbours; CPU time is what the work costs a core of its own."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass(slots=True)
class Stopwatch:
    """Wall and CPU seconds accumulated over the intervals it was running."""

    wall: float = 0.0
    cpu: float = 0.0
    _started: tuple[float, float] | None = None

    def start(self) -> Stopwatch:
        self._started = (time.perf_counter(), cpu_now())
        return self

    def stop(self) -> Stopwatch:
        assert self._started is not None
        wall, cpu = self._started
        self.wall += time.perf_counter() - wall
        self.cpu += cpu_now() - cpu
        self._started = None
        return self

    def add(self, other: Stopwatch) -> None:
        self.wall += other.wall
        self.cpu += other.cpu


def boot_gib(v: int) -> int:
    slot = v % 10
    for gib, share in BOOT_MIX:
        if slot < share:
            return gib
        slot -= share
    raise AssertionError("BOOT_MIX covers ten slots")


@dataclass(slots=True)
class Guest:
    """One simulated Linux guest, as much of it as the log sees."""

    vm: str
    boot_pages: int
    trans_id: int = 0
    #: The guest simulator's memory model, made at the first balloon request (most VMs never need it).
    memory: GuestMemory | None = None
    #: Messages to send at the next tick (answers to the engine's requests), with their ranges.
    pending: list[tuple[bytes, int]] = field(default_factory=list)

    def send(self, message: Message) -> bytes:
        """Encode with the guest's next transaction id (Linux counts them up per message)."""
        self.trans_id += 1
        return encode(replace(message, trans_id=self.trans_id))

    @property
    def ballooned_pages(self) -> int:
        return 0 if self.memory is None else self.memory.ballooned.page_count

    def status(self, tick: int, v: int) -> bytes:
        # Committed_AS: about 35 % of boot, a little noise each second (a deterministic hash).
        noise = ((tick * 2654435761 + v * 40503) >> 9) & 1023
        committed = self.boot_pages * 7 // 20 + noise
        avail = self.boot_pages - self.boot_pages // 32 - committed - self.ballooned_pages
        return self.send(StatusReport(num_avail=max(avail, 0), num_committed=committed))

    def on_host_message(self, raw: bytes) -> None:
        message = decode(raw)
        if isinstance(message, BalloonRequest):
            if self.memory is None:
                self.memory = GuestMemory(self.boot_pages, self.boot_pages // 32)
            for response in linux_balloon_up(self.memory, message.num_pages):
                self.pending.append((self.send(response), len(response.ranges)))
        elif isinstance(message, UnballoonRequest):
            assert self.memory is not None, "unballoon before any balloon"
            for start, count in message.ranges:
                self.memory.release_ballooned(start, count)
            if not message.more_pages:
                self.pending.append((self.send(UnballoonResponse()), -1))


@dataclass(slots=True)
class Workload:
    """What a phase wrote, by kind (inbox records, and the engine's requests they answered)."""

    inputs: int = 0
    ticks: int = 0
    handshake: int = 0
    status_reports: int = 0
    set_targets: int = 0
    balloon_requests: int = 0
    balloon_responses: int = 0
    balloon_ranges: int = 0
    unballoon_requests: int = 0
    unballoon_responses: int = 0

    def count_inputs(self) -> None:
        self.inputs = self.handshake + self.ticks + self.status_reports + self.set_targets
        self.inputs += self.balloon_responses + self.unballoon_responses


@dataclass(slots=True)
class Write:
    """The measured slice, and the warm-up before it (in the log and the audit, not in the rates)."""

    time: Stopwatch
    submit: Stopwatch
    engine: Stopwatch
    workload: Workload
    warmup: Workload
    warmup_time: Stopwatch
    #: Table bytes once the warm-up was written (``table_bytes``), to size the slice alone.
    warmup_tables: dict[str, int]
    events: int
    warmup_events: int
    #: The file as the running service left it: history since the last archiving still in live rows.
    live_file_bytes: int


def frozen_service(path: str) -> EmbeddedService:
    """``EmbeddedService.open`` with a clock that stands still: ticks come only from ``append_tick``."""
    log = SqliteLog(path)
    runner = EngineRunner(log, EngineConfig())
    clock = TickClock(tick_seconds=runner.config.tick_seconds, monotonic=lambda: 0.0)
    return EmbeddedService(log, runner, clock, batch_size=BATCH_SIZE)


#: Pages ballooned at each phase of a VM's cycle (balloon, then unballoon three times), so that a
#: VM drawn at a random phase starts the slice where the cycle would have left it.
PHASE_PAGES = tuple(
    max(0, BALLOON_PAGES - k * UNBALLOON_PAGES) for k in range(-(-BALLOON_PAGES // UNBALLOON_PAGES) + 1)
)


class SliceWriter:
    """The fleet's guests and the operator, driving one embedded service second by second."""

    def __init__(self, path: str, vms: int, seed: int) -> None:
        self.path = path
        self.service = frozen_service(path)
        self.guests = [Guest(f"vm{v:05d}", boot_gib(v) * GIB // PAGE_SIZE) for v in range(vms)]
        self._by_name = {g.vm: g for g in self.guests}
        self.rng = random.Random(seed)
        #: The phase being written: its counts, its seconds appending and in the engine.
        self.work = Workload()
        self.submit_time = Stopwatch()
        self.engine_time = Stopwatch()
        self.tick = 0
        self.service.add_listener(self._heard)

    def _heard(self, batch: Sequence[Processed]) -> None:
        """What the gateway would deliver: every host message goes to its guest."""
        work = self.work
        for p in batch:
            for _, raw in p.outbox:
                kind = type(decode(raw))
                if kind is BalloonRequest:
                    work.balloon_requests += 1
                elif kind is UnballoonRequest:
                    work.unballoon_requests += 1
                self._by_name[p.vm].on_host_message(raw)

    def engine(self) -> None:
        self.engine_time.start()
        self.service.process_pending()
        self.engine_time.stop()

    def handshake(self) -> None:
        submit = self.service.submit
        for g in self.guests:
            boot = g.boot_pages * PAGE_SIZE
            submit(g.vm, ChannelOpened(boot_bytes=boot, maxmem_bytes=4 * boot))
            submit(g.vm, GuestMessage(raw=g.send(VersionRequest(version=0x20000))))
            submit(g.vm, GuestMessage(raw=g.send(CapabilitiesReport(balloon=True, hot_add=True, hot_add_alignment=7))))
            self.work.handshake += 3
        self.engine()

    def quiet_second(self) -> None:
        """A tick and nothing else (the guests' silence after the handshake)."""
        self.tick += 1
        self.service.append_tick(self.tick)
        self.work.ticks += 1
        self.engine()

    def second(self, targets: Sequence[tuple[Guest, int]]) -> None:
        """One second: the tick, what each guest sends, the new targets (pages); then the engine."""
        self.submit_time.start()
        work, submit = self.work, self.service.submit
        self.tick += 1
        tick = self.tick
        self.service.append_tick(tick)
        work.ticks += 1
        for v, g in enumerate(self.guests):
            if g.pending:
                for raw, ranges in g.pending:
                    submit(g.vm, GuestMessage(raw=raw))
                    if ranges >= 0:
                        work.balloon_responses += 1
                        work.balloon_ranges += ranges
                    else:
                        work.unballoon_responses += 1
                g.pending.clear()
            submit(g.vm, GuestMessage(raw=g.status(tick, v)))
            work.status_reports += 1
        for g, target in targets:
            submit(g.vm, SetTarget(target_bytes=target * PAGE_SIZE))
            work.set_targets += 1
        self.submit_time.stop()
        self.engine()

    def warm_up(self) -> Workload:
        """The handshakes, the post-init wait (ticks only: a Linux guest is silent then), and one
        minute of status in which each VM drawn at a phase of its balloon cycle that holds pages
        balloons them; a few seconds more for the last answers. Then the runner archives it all."""
        self.handshake()
        for _ in range(self.service.runner.config.post_init_wait_ticks):
            self.quiet_second()
        guests = self.guests
        phases = [PHASE_PAGES[self.rng.randrange(len(PHASE_PAGES))] for _ in guests]
        for second in range(60):
            due = [(guests[v], guests[v].boot_pages - phases[v]) for v in range(second, len(guests), 60) if phases[v]]
            self.second(due)
        for _ in range(3):
            self.second(())
        # The runner's own archiving, at the phase boundary instead of at the next ARCHIVE_EVERY
        # records, so that what the slice adds can be told from what it found.
        self.service.runner.archive()
        self.work.count_inputs()
        return self.work

    def run(self, seconds: int, share: float) -> tuple[Workload, Stopwatch]:
        """The measured slice: status every second, ``share`` of the VMs re-targeted per minute,
        spread evenly over its seconds, in a fixed random order; returns its counts and seconds."""
        self.work = Workload()
        self.submit_time, self.engine_time = Stopwatch(), Stopwatch()
        guests = self.guests
        order = list(range(len(guests)))
        self.rng.shuffle(order)
        cursor = 0
        per_second = share * len(guests) / 60
        watch = Stopwatch().start()
        for i in range(seconds):
            targets = []
            # floor((i + 1) r) - floor(i r) new targets this second (the epsilon absorbs float error).
            for _ in range(math.floor((i + 1) * per_second + 1e-9) - math.floor(i * per_second + 1e-9)):
                g = guests[order[cursor]]
                cursor = (cursor + 1) % len(guests)
                ballooned = g.ballooned_pages
                if ballooned:
                    targets.append((g, g.boot_pages - ballooned + min(ballooned, UNBALLOON_PAGES)))
                else:
                    targets.append((g, g.boot_pages - BALLOON_PAGES))
            self.second(targets)
        self.work.count_inputs()
        return self.work, watch.stop()


def write_slice(path: str, vms: int, seconds: int, share: float, seed: int = 1) -> Write:
    """Warm up, then run the slice through the embedded service; what was written, and how fast."""
    writer = SliceWriter(path, vms, seed)
    log = writer.service.log
    warm_watch = Stopwatch().start()
    warm = writer.warm_up()
    warm_watch.stop()
    warmup_events = log.event_count()
    settle(path)
    warmup_tables = table_bytes(path)
    work, watch = writer.run(seconds, share)
    live_file = settle(path)
    # The slice's tail (fewer than ARCHIVE_EVERY records) goes where the runner would put it next,
    # so every input of the slice is counted in its archived form; that archiving is part of the
    # cost of writing the slice.
    archiving = Stopwatch().start()
    writer.service.runner.archive()
    archiving.stop()
    watch.add(archiving)
    writer.engine_time.add(archiving)
    assert log.inbox_high_watermark() == warm.inputs + work.inputs, "every input is one inbox record"
    events = log.event_count() - warmup_events
    log.close()
    return Write(
        watch,
        writer.submit_time,
        writer.engine_time,
        work,
        warm,
        warm_watch,
        warmup_tables,
        events,
        warmup_events,
        live_file,
    )


@dataclass(slots=True)
class Size:
    file_bytes: int
    tables: dict[str, int]
    #: Bytes the slice added to what grows with the log (segments, live rows, indexes).
    slice_growing_bytes: int
    #: Bytes kept once per VM however long the log (latest snapshot, archived sequence number).
    per_vm_bytes: int
    free_bytes: int
    #: The slice's inputs and events as plain JSON lines.
    json_bytes: int


#: Tables kept once per VM, whatever the length of the history.
PER_VM_TABLES = ("snapshots", "archived")


def settle(path: str) -> int:
    """Checkpoint the WAL into the file: the size the disk holds once the writer is idle."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return os.path.getsize(path)


def growing(tables: dict[str, int]) -> int:
    return sum(b for t, b in tables.items() if t not in PER_VM_TABLES)


def json_lines_bytes(path: str, after: int) -> int:
    """The baseline: every input after ``after`` and its events as a plain JSON line
    (``bench.log_size``'s form)."""
    reader = SqliteReader(path)
    total = 0
    try:
        for row in reader.iter_inbox(after):
            total += len(json.dumps({"vm": row.vm, "tick": row.tick, "record": row.record})) + 1
        for ev in reader.iter_events():
            if ev.inbox_pos > after:
                total += len(f'{{"vm":"{ev.vm}","seq":{ev.seq},"inbox_pos":{ev.inbox_pos},"record":{ev.record}}}') + 1
    finally:
        reader.close()
    return total


def measure_size(path: str, write: Write, vms: int) -> Size:
    file_bytes = settle(path)
    tables = table_bytes(path)
    con = sqlite3.connect(path)
    page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
    free = int(con.execute("PRAGMA freelist_count").fetchone()[0]) * page_size
    con.close()
    per_vm = sum(tables.get(t, 0) for t in PER_VM_TABLES)
    added = growing(tables) - growing(write.warmup_tables)
    return Size(file_bytes, tables, added, per_vm, free, json_lines_bytes(path, write.warmup.inputs))


@dataclass(slots=True)
class AuditRun:
    jobs: int
    time: Stopwatch
    events: int
    replay_matches: bool
    #: Parts audited one after another in this process (more jobs than cores): their times.
    parts: list[Stopwatch]

    @property
    def simulated(self) -> bool:
        return bool(self.parts)

    @property
    def seconds(self) -> float:
        """The wall time with ``jobs`` cores: measured, or for parts the slowest part's CPU time
        (what it would take on a core of its own; the merge is not included)."""
        return max(p.cpu for p in self.parts) if self.parts else self.time.wall


def part_read_seconds(path: str) -> Stopwatch:
    """What any part of a split audit pays before deciding anything: reading the log for one VM
    (every archived segment is unpacked whole, whatever VMs the part has)."""
    reader = SqliteReader(path)
    try:
        consumed, high, first = reader.consumed_position(), reader.inbox_high_watermark(), reader.vms()[:1]
    finally:
        reader.close()
    watch = Stopwatch().start()
    part = PartReader(path, first, consumed, high)
    try:
        for _ in part.iter_inbox():
            pass
        for _ in part.iter_events():
            pass
    finally:
        part.close()
    return watch.stop()


def audit_runs(path: str, jobs_list: Sequence[int], cores: int) -> list[AuditRun]:
    out: list[AuditRun] = []
    reader = SqliteReader(path)
    try:
        for jobs in jobs_list:
            if jobs <= cores:
                watch = Stopwatch().start()
                report = audit_jobs(reader, jobs, min_records=0)
                watch.stop()
                out.append(AuditRun(jobs, watch, report.events, report.replay_matches, []))
                progress(f"audit --jobs {jobs}: {watch.wall:.0f} s wall, {watch.cpu:.0f} s CPU")
                continue
            consumed = reader.consumed_position()
            high = reader.inbox_high_watermark()
            parts: list[Stopwatch] = []
            total = Stopwatch()
            events = 0
            matches = True
            for part in split(reader.vms(), jobs):
                watch = Stopwatch().start()
                part_reader = PartReader(path, part, consumed, high)
                try:
                    report = audit(part_reader, vms=part)
                finally:
                    part_reader.close()
                parts.append(watch.stop())
                total.add(watch)
                events += report.events
                matches = matches and report.replay_matches
            out.append(AuditRun(jobs, total, events, matches, parts))
            progress(f"audit in {jobs} parts: {', '.join(f'{p.cpu:.0f}' for p in parts)} s CPU")
    finally:
        reader.close()
    return out


def progress(line: str) -> None:
    """Where a long run is (stderr, so the report on stdout stays whole)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def report(args: argparse.Namespace, path: str) -> dict[str, Any]:
    cores = default_jobs()
    write = write_slice(path, args.vms, args.seconds, args.balloon_share)
    progress(
        f"written: warm-up {write.warmup.inputs:,} inputs in {write.warmup_time.wall:.0f} s, "
        f"slice {write.workload.inputs:,} in {write.time.wall:.0f} s"
    )
    size = measure_size(path, write, args.vms)
    progress("sized; auditing")
    audits = audit_runs(path, args.jobs_list, cores)
    part_read = part_read_seconds(path)
    w = write.workload
    inputs = w.inputs
    rate, cpu_rate = inputs / write.time.wall, inputs / write.time.cpu
    base = next((a for a in audits if a.jobs == 1), None)
    growing_per_input = size.slice_growing_bytes / inputs
    per_vm = size.per_vm_bytes / args.vms

    def critical(a: AuditRun) -> float:
        """CPU seconds of the longest job, were each on a core of its own: the slowest part, or the
        processes' total split evenly (the split is round-robin, and the parts come out even)."""
        return a.seconds if a.simulated else a.time.cpu / a.jobs

    def audit_row(a: AuditRun) -> dict[str, Any]:
        # Against the single-job audit: wall time, or CPU time for parts (see ``AuditRun.seconds``).
        speedup = None if base is None else (base.time.cpu if a.simulated else base.time.wall) / a.seconds
        return {
            "jobs": a.jobs,
            "seconds": a.seconds,
            "wall_seconds": a.time.wall,
            "cpu_seconds": a.time.cpu,
            "events": a.events,
            "events_per_s": a.events / a.seconds,
            "speedup": speedup,
            "efficiency": None if speedup is None else speedup / a.jobs,
            "cpu_speedup": None if base is None else base.time.cpu / critical(a),
            "simulated": a.simulated,
            "part_cpu_seconds": [p.cpu for p in a.parts],
            "replay_matches": a.replay_matches,
        }

    def day(vms: int) -> dict[str, Any]:
        """A day of the slice's traffic per VM and second, at ``vms`` VMs, at the slice's rates."""
        day_inputs = round(inputs / args.seconds / args.vms * vms * DAY_SECONDS)
        day_events = round(write.events / inputs * day_inputs)
        fleet_rate = day_inputs / DAY_SECONDS
        return {
            "vms": vms,
            "inputs": day_inputs,
            "events": day_events,
            "bytes": round(growing_per_input * day_inputs + per_vm * vms),
            "json_bytes": round(size.json_bytes / inputs * day_inputs),
            "write_seconds": day_inputs / rate,
            "write_cpu_seconds": day_inputs / cpu_rate,
            # What the writer sustains against what the fleet sends (1 Hz per VM and its share):
            # measured, and on a core of its own.
            "realtime_ratio": rate / fleet_rate,
            "realtime_ratio_cpu": cpu_rate / fleet_rate,
            # On cores of their own (the critical CPU time of ``audit_row``), and as measured here.
            "audit_seconds": {str(a.jobs): day_events / (a.events / critical(a)) for a in audits},
            "audit_wall_seconds": {
                str(a.jobs): day_events / (a.events / a.time.wall) for a in audits if not a.simulated
            },
            "audit_cpu_seconds": {str(a.jobs): day_events / (a.events / a.time.cpu) for a in audits},
        }

    def watch(sw: Stopwatch) -> dict[str, float]:
        return {"seconds": sw.wall, "cpu_seconds": sw.cpu}

    days = {"day": day(args.vms), "fleet_day": day(FLEET_VMS)}
    return {
        "machine": machine(),
        "cores": cores,
        "load_average": list(os.getloadavg()),
        "slice": {
            "vms": args.vms,
            "seconds": args.seconds,
            "balloon_share": args.balloon_share,
            "balloon_pages": BALLOON_PAGES,
            "unballoon_pages": UNBALLOON_PAGES,
            "batch_size": BATCH_SIZE,
        },
        "warmup": {**asdict(write.warmup), **watch(write.warmup_time), "events": write.warmup_events},
        "workload": asdict(w),
        "events": write.events,
        "write": {
            **watch(write.time),
            "inputs_per_s": rate,
            "inputs_per_cpu_s": cpu_rate,
            "submit": watch(write.submit),
            "engine": watch(write.engine),
        },
        "size": {
            "file_bytes": size.file_bytes,
            "live_file_bytes": write.live_file_bytes,
            "bytes_per_input": growing_per_input,
            "per_vm_bytes": per_vm,
            "free_bytes": size.free_bytes,
            "tables": size.tables,
            "json_bytes": size.json_bytes,
            "json_bytes_per_input": size.json_bytes / inputs,
            "vs_json": size.slice_growing_bytes / size.json_bytes,
        },
        "audit": [audit_row(a) for a in audits],
        "part_read": watch(part_read),
        "replay_matches": all(a.replay_matches for a in audits),
        **days,
    }


def print_report(r: dict[str, Any]) -> None:
    s, w, wr, z, wu = r["slice"], r["workload"], r["write"], r["size"], r["warmup"]
    load = ", ".join(f"{x:.1f}" for x in r["load_average"])
    print(f"machine: {r['machine']} (cores usable: {r['cores']}; load average at the end {load})")
    print(
        f"slice: {s['vms']:,} VMs x {s['seconds']:,} s of 1 Hz status; {s['balloon_share']} of the VMs re-targeted "
        f"per minute ({s['balloon_pages']:,} pages out, or up to {s['unballoon_pages']:,} back); after a warm-up of "
        f"{wu['inputs']:,} inputs ({wu['ticks']} ticks, {wu['balloon_responses']:,} balloon responses putting the "
        f"fleet into its steady state) written in {wu['seconds']:.1f} s"
    )
    print(
        f"inputs: {w['inputs']:,} ({w['status_reports']:,} status, {w['set_targets']:,} targets, "
        f"{w['balloon_responses']:,} balloon responses ({w['balloon_ranges']:,} ranges) to "
        f"{w['balloon_requests']:,} requests, {w['unballoon_responses']:,} unballoon responses to "
        f"{w['unballoon_requests']:,} requests, {w['ticks']:,} ticks); {r['events']:,} events"
    )
    print(
        f"write: {wr['seconds']:.1f} s wall, {wr['cpu_seconds']:.1f} s CPU: {wr['inputs_per_s']:,.0f} inputs/s "
        f"({wr['inputs_per_cpu_s']:,.0f} per CPU second); appending {wr['submit']['cpu_seconds']:.1f} s CPU, "
        f"engine {wr['engine']['cpu_seconds']:.1f} s CPU"
    )
    tables = " ".join(f"{t}={b / 1e6:.1f}" for t, b in sorted(z["tables"].items(), key=lambda kv: -kv[1]) if b >= 1e5)
    print(
        f"size: {z['bytes_per_input']:.1f} B per input of the slice, all included, + {z['per_vm_bytes']:,.0f} B per "
        f"VM kept once; plain JSON lines {z['json_bytes_per_input']:.1f} B/input: {z['vs_json']:.3f}x. "
        f"File with the warm-up {z['file_bytes'] / 1e6:,.1f} MB ({z['free_bytes'] / 1e6:.1f} MB of it free pages; "
        f"{z['live_file_bytes'] / 1e6:,.1f} MB before archiving the last records)"
    )
    print(f"  per table (MB): {tables}")
    for a in r["audit"]:
        if a["simulated"]:
            parts = ", ".join(f"{p:.1f}" for p in a["part_cpu_seconds"])
            how = f"slowest of {len(a['part_cpu_seconds'])} parts audited one after another, CPU s: {parts}"
            basis = "CPU time"
        else:
            how = f"{a['jobs']} process{'es' if a['jobs'] > 1 else ''}, {a['cpu_seconds']:.1f} s CPU in all"
            basis = "wall time"
        print(
            f"audit --jobs {a['jobs']}: {a['seconds']:.1f} s ({how}), {a['events']:,} events, "
            f"{a['events_per_s']:,.0f} events/s; speed-up {a['speedup']:.2f}x vs --jobs 1 ({basis}), "
            f"efficiency {a['efficiency']:.0%}; on idle cores (CPU time) {a['cpu_speedup']:.2f}x, "
            f"{a['cpu_speedup'] / a['jobs']:.0%}; replay_matches={a['replay_matches']}"
        )
    print(
        f"  (any part of a split audit first reads the whole log: {r['part_read']['cpu_seconds']:.1f} s CPU for a "
        "part of one VM)"
    )
    for key in ("day", "fleet_day"):
        d = r[key]
        if key == "fleet_day" and d["vms"] == r["day"]["vms"]:
            continue
        audits = ", ".join(f"--jobs {j}: {sec / 3600:,.1f} h" for j, sec in d["audit_seconds"].items())
        walls = ", ".join(f"--jobs {j}: {sec / 3600:,.1f} h" for j, sec in d["audit_wall_seconds"].items())
        print(
            f"a day at {d['vms']:,} VMs: {d['inputs']:,} inputs, {d['events']:,} events; "
            f"{d['bytes'] / 1e9:,.1f} GB on disk (JSON lines {d['json_bytes'] / 1e9:,.0f} GB, "
            f"{d['bytes'] / d['json_bytes']:.3f}x); write {d['write_seconds'] / 3600:,.1f} h "
            f"({d['realtime_ratio']:.2f}x real time; on a core of its own {d['write_cpu_seconds'] / 3600:,.1f} h, "
            f"{d['realtime_ratio_cpu']:.2f}x); audit on cores of their own {audits} (at this run's wall time {walls})"
        )
    print(f"replay_matches: {r['replay_matches']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.fleet_day", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=FLEET_VMS)
    parser.add_argument("--seconds", type=int, default=3600, help="seconds of 1 Hz status after the warm-up")
    parser.add_argument(
        "--balloon-share",
        type=float,
        default=DEFAULT_BALLOON_SHARE,
        help="fraction of the VMs given a new target each minute (default: the rebalancer model's)",
    )
    parser.add_argument("--jobs-list", type=int, nargs="+", default=[1, 2, 4], metavar="N")
    parser.add_argument("--db", metavar="FILE", help="write the log here and keep it (must not exist)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON here ('-': stdout only)")
    args = parser.parse_args(argv)
    if args.vms < 1 or args.seconds < 1 or not 0 <= args.balloon_share <= 60 or min(args.jobs_list) < 1:
        parser.error("need --vms >= 1, --seconds >= 1, 0 <= --balloon-share <= 60 and jobs >= 1")
    if args.db:
        if Path(args.db).exists():
            parser.error(f"--db {args.db} exists; the slice needs a fresh log")
        r = report(args, args.db)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            r = report(args, os.path.join(tmp, "fleet_day.db"))
    if args.json == "-":
        print(json.dumps(r, indent=1, sort_keys=True))
        return 0 if r["replay_matches"] else 1
    print_report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    return 0 if r["replay_matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
