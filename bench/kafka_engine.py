"""The Kafka engine on a local tansu broker: throughput of one and two workers against the embedded
log in the same run, input-to-event latency at 10,000 reports/s, and recovery time after a
worker's SIGKILL.

(a) throughput: a backlog of status reports from 1,000 VMs (one report per VM per tick, a Tick per
    partition per round) is put in the inbox first, then ``hvdm engine --broker`` workers drain
    it; the rate counts committed inbox records from the first commit to the last. Baseline:
    ``EngineRunner`` on SQLite with the same inputs, in this process. Repeated ``--repeat`` times
    (fresh topics each time); the ranges are min-max over the repeats.
(b) latency: 10,000 VMs, each sending one status report per second (10,000 inbox records/s, a
    Tick per partition per second), paced for ``--seconds`` through one worker; latency is the
    events record's timestamp minus its input's timestamp (both producer create-times on this
    machine: the input's when the publisher appended it, the events record's when the worker
    appended it to its producer batch -- the broker's acknowledgement follows within a round
    trip). The worker keeps up if the group has committed everything soon after the load stops.
(c) recovery: two workers share 1,000 VMs under paced load; one is killed with SIGKILL; recovery is
    the time from the kill until each partition has a new events record, the worst partition
    counting.

The publisher is aiokafka with one producer batch per partition per 5 ms slice (explicit
partitions, chosen by the same murmur2 hash as a keyed send), so that generating 10,000 records/s
costs the shared 2 cores little. Every process the bench starts is stopped.

Run: ``python -m bench.kafka_engine [--quick] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from bench.engine import CONFIG, handshake_inputs, machine
from services.dm_engine import inputs as inp
from services.dm_engine.inputs import ALL_VMS
from services.dm_engine.records import to_dict
from services.dm_protocol import StatusReport, encode
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog
from services.kafka_engine import envelope
from services.kafka_engine.kafka_log import GroupOffsets, PartitionReader, ensure_topics
from services.kafka_engine.settings import KafkaSettings
from services.kafka_engine.tansu import start_broker

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
#: Records handed to the engine per fetch (``hvdm engine --batch``).
WORKER_BATCH = 2000

Record = tuple[int, bytes, bytes]  # (partition, key, value)


def status(vm_index: int, round_: int) -> inp.GuestMessage:
    raw = encode(StatusReport(trans_id=3 + round_, num_avail=700_000 + vm_index, num_committed=300_000 + round_))
    return inp.GuestMessage(tick=2 + round_, raw=raw)


def settings_for(url: str, prefix: str) -> KafkaSettings:
    return KafkaSettings.from_url(
        f"{url}?prefix={prefix}&partitions={PARTITIONS}&ticks=external&session_timeout=3&heartbeat=0.5"
        "&rebalance_timeout=3&commit_interval=0.2"
    )


# ---------------------------------------------------------------------------------------- publishing
def partition_of(vm: str) -> int:
    """The partition a keyed send would choose (murmur2, as Kafka's default partitioner)."""
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(PARTITIONS))
    return int(DefaultPartitioner()(vm.encode(), parts, parts))


def handshake_records(vms: int) -> Iterator[Record]:
    for v in range(vms):
        vm = f"vm{v}"
        p = partition_of(vm)
        for record in handshake_inputs(4 << 30):
            if not isinstance(record, inp.Tick):
                yield p, vm.encode(), envelope.inbox_value(vm, to_dict(record))


def round_records(vms: int, round_: int, partitions: dict[int, int]) -> Iterator[Record]:
    """A Tick to every partition, then one status report per VM."""
    for p in range(PARTITIONS):
        yield p, ALL_VMS.encode(), envelope.tick_value(2 + round_)
    for v in range(vms):
        vm = f"vm{v}"
        yield partitions[v], vm.encode(), envelope.inbox_value(vm, to_dict(status(v, round_)))


class Publisher:
    """aiokafka producer sending explicit-partition batches; ``send`` waits for nothing."""

    def __init__(self, settings: KafkaSettings) -> None:
        from aiokafka import AIOKafkaProducer

        self.topic = settings.inbox
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            max_batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        self.pending: list[asyncio.Future[object]] = []

    async def __aenter__(self) -> Publisher:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()
        await self.producer.stop()

    async def send(self, records: Iterable[Record]) -> int:
        per: dict[int, list[tuple[bytes, bytes]]] = {}
        n = 0
        for p, key, value in records:
            per.setdefault(p, []).append((key, value))
            n += 1
        for p, items in per.items():
            batch = self.producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    self.pending.append(await self.producer.send_batch(batch, self.topic, partition=p))
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            batch.close()
            self.pending.append(await self.producer.send_batch(batch, self.topic, partition=p))
        return n

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        await asyncio.gather(*pending)


def publish(settings: KafkaSettings, records: Iterable[Record], chunk: int = 20_000) -> int:
    async def run() -> int:
        n = 0
        buf: list[Record] = []
        async with Publisher(settings) as pub:
            for r in records:
                buf.append(r)
                if len(buf) >= chunk:
                    n += await pub.send(buf)
                    buf = []
                    await pub.flush()
            n += await pub.send(buf)
        return n

    return asyncio.run(run())


def publish_backlog(settings: KafkaSettings, vms: int, rounds: int) -> int:
    """Handshakes, then ``rounds`` of (Tick to every partition, one report per VM). Returns records."""
    partitions = {v: partition_of(f"vm{v}") for v in range(vms)}

    def records() -> Iterator[Record]:
        yield from handshake_records(vms)
        for r in range(rounds):
            yield from round_records(vms, r, partitions)

    return publish(settings, records())


def paced_load(settings: KafkaSettings, vms: int, rate: float, seconds: float, stop_flag: threading.Event) -> int:
    """Rounds of (Tick to every partition, one report per VM) at ``rate`` reports/s, sent in 5 ms
    slices; returns the reports sent."""
    partitions = {v: partition_of(f"vm{v}") for v in range(vms)}

    async def run() -> int:
        sent = 0
        async with Publisher(settings) as pub:
            loop = asyncio.get_running_loop()
            started = loop.time()
            source = (rec for r in range(10**9) for rec in round_records(vms, 100 + r, partitions))
            while not stop_flag.is_set():
                elapsed = loop.time() - started
                if elapsed >= seconds:
                    break
                due = int(elapsed * rate) - sent
                if due > 0:
                    batch: list[Record] = []
                    while due > 0:
                        record = next(source)
                        batch.append(record)
                        if record[1] != b"*":
                            due -= 1
                            sent += 1
                    await pub.send(batch)
                    if len(pub.pending) > 400:
                        await pub.flush()
                await asyncio.sleep(0.005)
        return sent

    return asyncio.run(run())


# ---------------------------------------------------------------------------------------- workers
def start_workers(settings: KafkaSettings, count: int, logdir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        log = open(logdir / f"{settings.prefix}-w{i}.log", "wb")  # noqa: SIM115 - owned by the child
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services",
                    "engine",
                    "--broker",
                    settings.url,
                    "--batch",
                    str(WORKER_BATCH),
                    "-v",
                ],
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            if now > deadline or any(p.poll() is not None for p in procs):
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


# ---------------------------------------------------------------------------------------- reading back
def inbox_times(settings: KafkaSettings, reader: PartitionReader) -> dict[tuple[int, int], int]:
    return {(p, rec.offset): rec.timestamp for p in range(PARTITIONS) for rec in reader.read(settings.inbox, p)}


def event_times(settings: KafkaSettings, reader: PartitionReader) -> list[tuple[int, int, int]]:
    """(partition, inbox offset, events record timestamp ms) for every events record."""
    out = []
    for p in range(PARTITIONS):
        for rec in reader.read(settings.events, p):
            out.append((p, envelope.decode_events(rec.key, rec.value).offset, rec.timestamp))
    return out


def wait_committed(settings: KafkaSettings, timeout: float = 300) -> float:
    """Until the group has committed everything in the inbox; returns the seconds it took."""
    group = GroupOffsets(settings)
    reader = PartitionReader(settings)
    started = time.monotonic()
    try:
        deadline = started + timeout
        ends = reader.highwaters(settings.inbox, range(PARTITIONS))
        while time.monotonic() < deadline:
            committed = group.committed(PARTITIONS)
            if all(committed[p] >= ends[p] for p in ends):
                return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError("workers did not catch up")
    finally:
        group.close()
        reader.close()


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def latency(
    settings: KafkaSettings, vms: int, rate: float, seconds: float, logdir: Path, broker_pid: int
) -> tuple[float, float, float, int, float, dict[str, float]]:
    """(p50, p99, max latency s, inputs, seconds to catch up after the load, CPU share of one core
    per process: worker, broker, publisher)."""
    publish(settings, handshake_records(vms))
    procs = start_workers(settings, 1, logdir)
    try:
        wait_committed(settings)
        paced_from_ms = time.time() * 1000
        pids = {"worker": procs[0].pid, "broker": broker_pid, "publisher (bench)": os.getpid()}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        paced_load(settings, vms, rate, seconds, threading.Event())
        elapsed = time.monotonic() - started
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) / elapsed for name, pid in pids.items()}
        lag = wait_committed(settings)
    finally:
        stop(procs)
    reader = PartitionReader(settings)
    try:
        sent = inbox_times(settings, reader)
        lat = sorted(
            (ts - sent[(p, o)]) / 1000
            for p, o, ts in event_times(settings, reader)
            if (p, o) in sent and sent[(p, o)] >= paced_from_ms  # the paced part, not the handshakes
        )
    finally:
        reader.close()
    return percentile(lat, 0.5), percentile(lat, 0.99), lat[-1], len(lat), lag, cpu


def recovery(settings: KafkaSettings, vms: int, rate: float, logdir: Path) -> tuple[float, float]:
    publish(settings, handshake_records(vms))
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


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """``min-max (median)`` of repeated measurements, or the one value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(min(values))}-{fmt.format(max(values))} (median {fmt.format(statistics.median(values))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.kafka_engine", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller backlog, shorter latency run, one repeat")
    parser.add_argument("--repeat", type=int, default=3, help="throughput measurements per configuration")
    parser.add_argument("--rounds", type=int, default=None, help="status rounds of the 1,000-VM backlog")
    parser.add_argument("--latency-vms", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=None, help="paced-load duration of (b)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c")
    args = parser.parse_args(argv)
    vms = 1000
    rounds = args.rounds or (30 if args.quick else 150)
    repeat = 1 if args.quick else max(1, args.repeat)
    seconds = args.seconds or (8.0 if args.quick else 20.0)
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {machine()}; broker: tansu (memory storage), {PARTITIONS} partitions, same machine")
    broker = start_broker()
    logdir = Path(tempfile.mkdtemp(prefix="hvdm-bench-kafka-"))
    runs = iter(range(1, 10**6))
    try:
        if "a" not in skip:
            embedded: list[float] = []
            one: list[float] = []
            two: list[float] = []
            total = 0
            for _ in range(repeat):
                embedded.append(embedded_rate(vms, rounds))
                s1 = settings_for(broker.url, f"a{next(runs)}")
                ensure_topics(s1)
                total = publish_backlog(s1, vms, rounds)
                one.append(drain_rate(s1, total, 1, logdir))
                s2 = settings_for(broker.url, f"a{next(runs)}")
                ensure_topics(s2)
                publish_backlog(s2, vms, rounds)
                two.append(drain_rate(s2, total, 2, logdir))
            ratio1 = [o / e for o, e in zip(one, embedded, strict=True)]
            ratio2 = [t / e for t, e in zip(two, embedded, strict=True)]
            print(
                f"(a) throughput, {vms} VMs x {rounds} status rounds ({total:,} inbox records), {repeat} run(s): "
                f"one worker {spread(one)} records/s, two workers {spread(two)} records/s; embedded SQLite runner "
                f"{spread(embedded)} records/s; kafka/embedded ratio {spread(ratio1, '{:.2f}')} (one), "
                f"{spread(ratio2, '{:.2f}')} (two)",
                flush=True,
            )
        if "b" not in skip:
            lvms = args.latency_vms
            rate = float(lvms)  # one report per VM per second
            s3 = settings_for(broker.url, f"b{next(runs)}")
            ensure_topics(s3)
            p50, p99, worst, n, lag, cpu = latency(s3, lvms, rate, seconds, logdir, broker.process.pid)
            shares = ", ".join(f"{name} {share:.0%}" for name, share in cpu.items())
            print(
                f"(b) input-to-event latency, {lvms:,} VMs x 1 report/s ({rate:,.0f} records/s for {seconds:.0f} s), "
                f"one worker: p50 {p50:.3f} s, p99 {p99:.3f} s, max {worst:.3f} s ({n:,} inputs); committed everything "
                f"{lag:.2f} s after the load stopped; CPU of one core while loaded: {shares}",
                flush=True,
            )
        if "c" not in skip:
            s4 = settings_for(broker.url, f"c{next(runs)}")
            ensure_topics(s4)
            since_kill, gap = recovery(s4, vms, 1000.0, logdir)
            print(
                f"(c) recovery, {vms} VMs, 2 workers, SIGKILL of one (session timeout 3 s): partitions processed again "
                f"{since_kill:.1f} s after the kill (longest gap in a partition's events {gap:.1f} s)",
                flush=True,
            )
    finally:
        broker.stop()
    print(f"worker logs: {logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
