"""The Kafka engine on a local tansu broker: throughput of one and two workers against the embedded
log in the same run, input-to-event latency, and recovery time after a worker's SIGKILL.

(a) throughput: a backlog of status reports from 1,000 VMs (one report per VM per tick) is put in
    the inbox first, then ``hvdm engine --broker`` workers drain it; the rate counts committed inbox
    records from the first commit to the last. Baseline: ``EngineRunner`` on SQLite with the same
    inputs, in this process.
(b) latency: reports paced at a fixed rate through one worker; latency is the events record's
    timestamp minus its input's timestamp (both producer create-times on this machine).
(c) recovery: two workers share 1,000 VMs under paced load; one is killed with SIGKILL; recovery is
    the time from the kill until each partition has a new events record, the worst partition
    counting.

Run: ``python -m bench.kafka_engine [--quick]``. Every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.engine import CONFIG, handshake_inputs, machine
from services.dm_engine import inputs as inp
from services.dm_engine.records import to_dict
from services.dm_engine.runner import EngineRunner
from services.dm_protocol import StatusReport, encode
from services.event_log.sqlite_log import ALL_VMS, SqliteLog
from services.kafka_engine import envelope
from services.kafka_engine.kafka_log import GroupOffsets, PartitionReader, ensure_topics, new_producer
from services.kafka_engine.settings import KafkaSettings
from services.kafka_engine.tansu import start_broker

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4


def status(vm_index: int, round_: int) -> inp.GuestMessage:
    raw = encode(StatusReport(trans_id=3 + round_, num_avail=700_000 + vm_index, num_committed=300_000 + round_))
    return inp.GuestMessage(tick=2 + round_, raw=raw)


def settings_for(url: str, prefix: str) -> KafkaSettings:
    return KafkaSettings.from_url(
        f"{url}?prefix={prefix}&partitions={PARTITIONS}&ticks=external&session_timeout=3&heartbeat=0.5"
        "&rebalance_timeout=3&commit_interval=0.2"
    )


def publish_backlog(settings: KafkaSettings, vms: int, rounds: int) -> int:
    """Handshakes, then ``rounds`` of (Tick to every partition, one report per VM). Returns records."""
    producer = new_producer(settings)
    n = 0
    for v in range(vms):
        for record in handshake_inputs(4 << 30):
            if isinstance(record, inp.Tick):
                continue
            producer.send(settings.inbox, key=f"vm{v}".encode(), value=envelope.inbox_value(f"vm{v}", to_dict(record)))
            n += 1
    for r in range(rounds):
        for p in range(PARTITIONS):
            producer.send(settings.inbox, key=b"*", value=envelope.tick_value(2 + r), partition=p)
            n += 1
        for v in range(vms):
            value = envelope.inbox_value(f"vm{v}", to_dict(status(v, r)))
            producer.send(settings.inbox, key=f"vm{v}".encode(), value=value)
            n += 1
    producer.flush()
    producer.close()
    return n


def start_workers(settings: KafkaSettings, count: int, logdir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        log = open(logdir / f"{settings.prefix}-w{i}.log", "wb")  # noqa: SIM115 - owned by the child
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "services", "engine", "--broker", settings.url, "--batch", "1000"],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def drain_rate(settings: KafkaSettings, total: int, workers: int, logdir: Path, timeout: float = 600) -> float:
    group = GroupOffsets(settings)
    procs = start_workers(settings, workers, logdir)
    try:
        deadline = time.monotonic() + timeout
        first: tuple[float, int] | None = None
        while True:
            done = sum(group.committed(PARTITIONS).values())
            now = time.monotonic()
            if first is None and done > 0:
                first = (now, done)
            if done >= total:
                assert first is not None
                return (done - first[1]) / max(1e-9, now - first[0])
            if now > deadline:
                raise TimeoutError(f"workers committed {done} of {total} records")
            time.sleep(0.05)
    finally:
        stop(procs)
        group.close()


def embedded_rate(vms: int, rounds: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        log = SqliteLog(os.path.join(tmp, "bench.db"))
        runner = EngineRunner(log, CONFIG)
        for v in range(vms):
            log.append_inputs([(f"vm{v}", r.tick, to_dict(r), None) for r in handshake_inputs(4 << 30)])
        runner.run_until_idle()
        rows: list[tuple[str, int, dict[str, object], str | None]] = []
        for r in range(rounds):
            rows.append((ALL_VMS, 2 + r, to_dict(inp.Tick(tick=2 + r)), None))
            rows.extend((f"vm{v}", 2 + r, to_dict(status(v, r)), None) for v in range(vms))
        log.append_inputs(rows)
        started = time.perf_counter()
        n = runner.run_until_idle(1000)
        elapsed = time.perf_counter() - started
        log.close()
        return n / elapsed


def paced_load(settings: KafkaSettings, vms: int, rate: float, seconds: float, stop_flag: threading.Event) -> None:
    """One report per VM per round, a Tick per partition per round, at ``rate`` reports/s."""
    producer = new_producer(settings)
    started = time.monotonic()
    sent = 0
    r = 0
    while time.monotonic() - started < seconds and not stop_flag.is_set():
        for p in range(PARTITIONS):
            producer.send(settings.inbox, key=b"*", value=envelope.tick_value(100 + r), partition=p)
        for v in range(vms):
            value = envelope.inbox_value(f"vm{v}", to_dict(status(v, 100 + r)))
            producer.send(settings.inbox, key=f"vm{v}".encode(), value=value)
            sent += 1
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0.005:
                time.sleep(ahead)
        r += 1
    producer.flush()
    producer.close()


def inbox_times(settings: KafkaSettings, reader: PartitionReader) -> dict[tuple[int, int], int]:
    return {(p, rec.offset): rec.timestamp for p in range(PARTITIONS) for rec in reader.read(settings.inbox, p)}


def event_times(settings: KafkaSettings, reader: PartitionReader) -> list[tuple[int, int, int]]:
    """(partition, inbox offset, events record timestamp ms) for every events record."""
    out = []
    for p in range(PARTITIONS):
        for rec in reader.read(settings.events, p):
            value = envelope.decode(rec.value)
            out.append((p, int(value["inbox"][1]), rec.timestamp))
    return out


def wait_committed(settings: KafkaSettings, timeout: float = 120) -> None:
    """Until the group has committed everything in the inbox."""
    group = GroupOffsets(settings)
    reader = PartitionReader(settings)
    try:
        deadline = time.monotonic() + timeout
        ends = reader.highwaters(settings.inbox, range(PARTITIONS))
        while time.monotonic() < deadline:
            committed = group.committed(PARTITIONS)
            if all(committed[p] >= ends[p] for p in ends):
                return
            time.sleep(0.1)
        raise TimeoutError("workers did not catch up")
    finally:
        group.close()
        reader.close()


def latency(settings: KafkaSettings, vms: int, rate: float, seconds: float, logdir: Path) -> tuple[float, float, int]:
    publish_backlog(settings, vms, 0)  # handshakes only
    procs = start_workers(settings, 1, logdir)
    try:
        wait_committed(settings)
        paced_from_ms = time.time() * 1000
        paced_load(settings, vms, rate, seconds, threading.Event())
        wait_committed(settings)
    finally:
        stop(procs)
    reader = PartitionReader(settings)
    try:
        sent = inbox_times(settings, reader)
        lat = sorted(
            ts - sent[(p, o)]
            for p, o, ts in event_times(settings, reader)
            if (p, o) in sent and sent[(p, o)] >= paced_from_ms  # the paced part, not the handshakes
        )
    finally:
        reader.close()
    return lat[len(lat) // 2] / 1000, lat[int(len(lat) * 0.99)] / 1000, len(lat)


def recovery(settings: KafkaSettings, vms: int, rate: float, logdir: Path) -> tuple[float, float]:
    publish_backlog(settings, vms, 0)
    procs = start_workers(settings, 2, logdir)
    stop_flag = threading.Event()
    try:
        wait_committed(settings)
        time.sleep(8)  # both workers in the group and settled
        load = threading.Thread(target=paced_load, args=(settings, vms, rate, 60.0, stop_flag))
        load.start()
        time.sleep(3)
        killed_at = time.time()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        time.sleep(15)
        stop_flag.set()
        load.join()
        wait_committed(settings)
    finally:
        stop_flag.set()
        stop(procs)
    reader = PartitionReader(settings)
    try:
        times = event_times(settings, reader)
    finally:
        reader.close()
    kill_ms = killed_at * 1000
    per_partition: list[tuple[float, float]] = []
    for p in range(PARTITIONS):
        after = [ts for q, _, ts in times if q == p and ts > kill_ms]
        before = [ts for q, _, ts in times if q == p and ts <= kill_ms]
        if after:
            last_before = max(before) if before else kill_ms
            per_partition.append(((min(after) - kill_ms) / 1000, (min(after) - last_before) / 1000))
    worst = max(per_partition)
    return worst[0], worst[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.kafka_engine", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    vms = 1000
    rounds = 10 if args.quick else 30
    print(f"machine: {machine()}; broker: tansu (memory storage), {PARTITIONS} partitions, same machine")
    broker = start_broker()
    logdir = Path(tempfile.mkdtemp(prefix="hvdm-bench-kafka-"))
    try:
        embedded = embedded_rate(vms, rounds)
        s1 = settings_for(broker.url, "b1")
        ensure_topics(s1)
        total = publish_backlog(s1, vms, rounds)
        one = drain_rate(s1, total, 1, logdir)
        s2 = settings_for(broker.url, "b2")
        ensure_topics(s2)
        total2 = publish_backlog(s2, vms, rounds)
        two = drain_rate(s2, total2, 2, logdir)
        print(
            f"(a) throughput, {vms} VMs x {rounds} status rounds ({total} inbox records): one worker "
            f"{one:,.0f} records/s, two workers {two:,.0f} records/s; embedded SQLite runner {embedded:,.0f} "
            f"records/s; kafka/embedded ratio {one / embedded:.2f} (one), {two / embedded:.2f} (two)"
        )
        rate = 1000.0
        s3 = settings_for(broker.url, "b3")
        ensure_topics(s3)
        p50, p99, n = latency(s3, vms, rate, 5 if args.quick else 15, logdir)
        print(
            f"(b) input-to-event latency at {rate:.0f} reports/s, one worker: "
            f"p50 {p50:.3f} s, p99 {p99:.3f} s ({n} inputs)"
        )
        s4 = settings_for(broker.url, "b4")
        ensure_topics(s4)
        since_kill, gap = recovery(s4, vms, rate, logdir)
        print(
            f"(c) recovery, {vms} VMs, 2 workers, SIGKILL of one (session timeout 3 s): partitions processed again "
            f"{since_kill:.1f} s after the kill (longest gap in a partition's events {gap:.1f} s)"
        )
    finally:
        broker.stop()
    print(f"worker logs: {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
