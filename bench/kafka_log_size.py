"""Bytes per input on Kafka (tansu), per batch codec, next to the embedded log and a plain-JSON baseline.

The workloads are ``bench.log_size``'s (status reports, balloon traffic, a demo mix), written the way
the distributed deployment writes them, on a local tansu broker, once per batch codec and record form
(``codec/records``: ``json`` = the JSON envelopes, ``compact`` = raw guest bytes and integer events,
see ``kafka_engine.envelope``):

* the **inbox** by the gateway's own publisher (``KafkaBackend.submit``, kafka-python, the
  deployment's compression) and the Tick records by a producer of the same settings (what the
  workers' tickers write, one record per partition per tick);
* **events**, **outbox** and **snapshots** by a real ``hvdm engine --broker`` worker (a subprocess),
  deciding tick after tick (lockstep: a tick's inputs are published, then the bench waits until the
  group has committed them).

Batching decides what compression can do, so it is fixed and stated: the gateway's producer sends
one batch per partition per tick (``VMS / PARTITIONS`` records, about what a gateway lingering a
report interval, or a busy one, sends) and the worker writes one events batch per partition per
tick. A second table sweeps the records per inbox batch (1 = a quiet gateway with a short linger).

"On disk" is the record batches the broker holds: tansu keeps its logs in memory, so each
partition is fetched raw (``kafka_engine.stored_batches``) and its batches' sizes are added up --
header, keys, values, record overhead and compression all included, exactly what a Kafka log
segment would hold (Kafka's index files, about 1-2 % of a segment, are not counted).

The embedded figures are ``bench.log_size.measure`` on the same workload in the same run (live rows,
and archived segments), the baseline its JSON lines (one line per input and per event).

It also times ``hvdm audit --broker`` of a larger status log (``--audit-vms``) in one process against
``--jobs 2`` and ``--jobs 4`` (split by partition: reading and auditing), with the reports compared.
On a machine shared with other jobs a pool's wall time shows the load more than the split, so the
pool's work is also run one share at a time and timed (the slowest share's reading + joining the
shares + the slowest share's audit): the time the split takes on idle cores.

Run: ``python -m bench.kafka_log_size [--vms 200] [--ticks 100] [--partitions 4] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.engine import machine
from bench.log_size import CONFIG, TARGET_BYTES, Size, measure, status, workload
from services.audit import audit
from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import ALL_VMS
from services.kafka_engine import audit_reader, envelope
from services.kafka_engine.audit_partitions import CutShare, audit_partitions, vms_by_partition
from services.kafka_engine.audit_reader import KafkaLogReader
from services.kafka_engine.gateway_backend import KafkaBackend
from services.kafka_engine.kafka_log import GroupOffsets, committed_offsets, ensure_topics, new_producer, read_meta
from services.kafka_engine.settings import KafkaSettings
from services.kafka_engine.stored_batches import TopicBytes, topic_bytes
from services.kafka_engine.tansu import LocalBroker, start_broker

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ("inbox", "events", "outbox", "snapshots", "meta")
#: Records per gateway batch in the inbox sweep.
SWEEP = (1, 4, 16, 64)
_runs = iter(range(1, 1 << 30))


def codecs() -> list[str]:
    """The deployment's codecs, and lz4 where its library is installed (it is not a dependency)."""
    out = ["none", "gzip", "zstd"]
    try:
        import lz4.frame  # noqa: F401

        out.insert(2, "lz4")
    except ImportError:
        pass
    return out


def variants() -> list[str]:
    """``codec/records`` pairs: every codec with the JSON envelopes, then with the compact records."""
    return [f"{codec}/{records}" for records in ("json", "compact") for codec in codecs()]


def settings_for(broker: LocalBroker, variant: str, partitions: int, linger: float = 30.0) -> KafkaSettings:
    codec, records = variant.split("/")
    return KafkaSettings.from_url(
        f"{broker.url}?prefix=size{next(_runs)}&partitions={partitions}&ticks=external&compression={codec}"
        f"&records={records}"
        f"&session_timeout=3&heartbeat=0.5&rebalance_timeout=3&commit_interval=0.02&linger={linger}"
    )


@dataclass
class KafkaSize:
    inputs: int
    settings: KafkaSettings
    topics: dict[str, TopicBytes] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(t.bytes for t in self.topics.values())

    def per_input(self, topic: str | None = None) -> float:
        if topic is None:
            return self.total / self.inputs
        return self.topics[topic].bytes / self.inputs


def _engine_config_file(tmp: str) -> str:
    """``bench.log_size.CONFIG`` as a ``--config`` file (its fields that differ from the defaults)."""
    path = os.path.join(tmp, "engine.toml")
    default = EngineConfig().to_dict()
    with open(path, "w") as f:
        f.write("[engine_config]\n")
        for key, value in CONFIG.to_dict().items():
            if value != default[key]:
                f.write(f"{key} = {json.dumps(value)}\n")
    return path


def _wait_committed(
    group: GroupOffsets, ends: dict[int, int], partitions: int, engine: subprocess.Popen[bytes], timeout: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if engine.poll() is not None:
            raise RuntimeError(f"the engine worker exited with status {engine.returncode}")
        committed = group.committed(partitions)
        if all(committed[p] >= end for p, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine did not commit {ends} (at {committed})")
        time.sleep(0.005)


def run_deployment(
    broker: LocalBroker,
    name: str,
    vms: int,
    ticks: int,
    codec: str,
    partitions: int,
    tmp: str,
    *,
    lockstep: bool = True,
) -> KafkaSize:
    """One workload through the gateway's publisher and a real engine worker; the topics' bytes."""
    settings = settings_for(broker, codec, partitions)
    ensure_topics(settings)
    log = open(os.path.join(tmp, f"engine-{settings.prefix}.log"), "wb")  # noqa: SIM115 - the child's
    engine = subprocess.Popen(
        [sys.executable, "-m", "services", "engine", "--broker", settings.url, "--config", _engine_config_file(tmp)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    backend = KafkaBackend(settings)
    ticker = new_producer(settings)
    group = GroupOffsets(settings)
    ends: dict[int, int] = {}
    inputs = 0
    try:
        for batch in workload(name, vms, ticks):
            futures = []
            for vm, tick, _record in batch:
                if vm == ALL_VMS:
                    value = envelope.tick_value(tick)
                    futures += [
                        ticker.send(settings.inbox, key=b"*", value=value, partition=p) for p in range(partitions)
                    ]
            ticker.flush()
            for f in futures:
                meta = f.get(30)
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
            for vm, _tick, record in batch:
                if vm != ALL_VMS:
                    backend.submit(vm, record)
            backend.flush()
            for p, end in backend.published_ends.items():
                ends[p] = max(ends.get(p, 0), end)
            inputs += len(batch)
            if lockstep:
                _wait_committed(group, ends, partitions, engine)
        _wait_committed(group, ends, partitions, engine, timeout=600)
    except RuntimeError:
        log.flush()
        print(Path(log.name).read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        group.close()
        ticker.close()
        backend._producer.close()
        engine.terminate()
        try:
            engine.wait(15)
        except subprocess.TimeoutExpired:
            engine.kill()
            engine.wait(5)
        log.close()
    size = KafkaSize(inputs, settings)
    for kind in TOPICS:
        size.topics[kind] = topic_bytes(broker.bootstrap, settings.topic(kind), 1 if kind == "meta" else partitions)
    return size


def inbox_sweep(broker: LocalBroker, codec: str, per_batch: int, vms: int, ticks: int, partitions: int) -> float:
    """Inbox bytes per status report when the gateway's batches hold ``per_batch`` records each."""
    settings = settings_for(broker, codec, partitions)
    ensure_topics(settings)
    backend = KafkaBackend(settings)
    pending: dict[int, int] = {}
    sent = 0
    names = [f"vm{v:05d}" for v in range(vms)]
    part = {vm: _partition(vm, partitions) for vm in names}
    try:
        for tick in range(1, ticks + 1):
            for v, vm in enumerate(names):
                backend.submit(vm, status(vm, v, tick)[2])
                sent += 1
                p = part[vm]
                pending[p] = pending.get(p, 0) + 1
                if pending[p] >= per_batch:
                    backend.flush()
                    pending.clear()
            backend.flush()
            pending.clear()
    finally:
        backend._producer.close()
    return topic_bytes(broker.bootstrap, settings.inbox, partitions).bytes / sent


@dataclass
class AuditTiming:
    jobs: int
    #: Wall seconds, reading and auditing, in one process and in ``jobs`` (the real process pool).
    alone: float
    pooled: float
    same: bool
    #: The one-process audit's work timed the way ``idle_cores`` is (one share holding everything).
    baseline: float
    #: The pool's work run one share at a time in this process: the slowest share's reading, the
    #: parent's joining of the shares, the slowest share's audit -- what idle cores would take.
    idle_cores: float
    #: Its parts: each share's reading, the joining, each share's audit.
    parts: tuple[list[float], float, list[float]]


def audit_speedup(settings: KafkaSettings, jobs: int, tmp: str) -> AuditTiming:
    """``hvdm audit --broker`` of the deployment in one process and split by partition over
    ``jobs``; on a shared machine the pool's wall time says little, so each share's work is also
    timed alone (``idle_cores``)."""
    started = time.perf_counter()
    single = KafkaLogReader(settings)
    try:
        one = audit(single).to_dict()
    finally:
        single.close()
    alone = time.perf_counter() - started
    started = time.perf_counter()
    split = KafkaLogReader(settings, jobs=jobs, min_records=0)
    try:
        many = audit_partitions(split, jobs, min_records=0).to_dict()
    finally:
        split.close()
    pooled = time.perf_counter() - started
    # The same work share by share, and (the baseline measured the same way) as one share.
    baseline, _ = shares_alone(settings, 1, tmp)
    idle, parts = shares_alone(settings, jobs, tmp)
    return AuditTiming(jobs, alone, pooled, one == many, baseline, idle, parts)


def shares_alone(settings: KafkaSettings, jobs: int, tmp: str) -> tuple[float, tuple[list[float], float, list[float]]]:
    """The work of a ``jobs``-process audit run one share at a time in this process: (slowest
    share's reading + joining the shares + slowest share's audit, (readings, joining, audits))."""
    partitions = settings.partitions
    shares = [list(range(partitions))[i::jobs] for i in range(min(jobs, partitions))]
    share_dir = tempfile.mkdtemp(dir=tmp)
    paths = [os.path.join(share_dir, f"share{i}.db") for i in range(len(shares))]
    reads = []
    results = []
    for share, path in zip(shares, paths, strict=True):
        started = time.perf_counter()
        results.append(audit_reader._read_share(settings.url, share, path))
        reads.append(time.perf_counter() - started)
    started = time.perf_counter()
    cut_dir = tempfile.mkdtemp(dir=tmp)
    db = sqlite3.connect(os.path.join(cut_dir, "cut.db"))
    cut = audit_reader.LogCut(db)
    cut.set_committed(committed_offsets(settings, partitions))
    cut.add_meta(read_meta(settings))
    cut.merge_shares(paths, results)
    joined = KafkaLogReader.from_cut(cut_dir, cut, settings.url)
    serial = time.perf_counter() - started
    audits = []
    try:
        consumed = joined.consumed_position()
        by_partition = vms_by_partition(joined, consumed)
        for share in shares:
            vms = [vm for p in share for vm in by_partition.get(p, [])]
            view = CutShare(os.path.join(cut_dir, "cut.db"), settings.url, vms, consumed, joined.inbox_high_watermark())
            started = time.perf_counter()
            try:
                audit(view, vms=vms)
            finally:
                view.close()
            audits.append(time.perf_counter() - started)
    finally:
        joined.close()
    return max(reads) + serial + max(audits), (reads, serial, audits)


def _partition(vm: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner picks for key ``vm`` (murmur2)."""
    from kafka.partitioner.default import murmur2

    return int(murmur2(vm.encode()) & 0x7FFFFFFF) % partitions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.kafka_log_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--audit-vms", type=int, default=1000, help="VMs of the status log the audit is timed on")
    parser.add_argument("--quick", action="store_true", help="40 VMs x 20 ticks, status and mix only")
    parser.add_argument("--audit-only", action="store_true", help="only the audit timing (no sizes)")
    parser.add_argument(
        "--workloads", nargs="+", choices=("status", "balloon", "mix"), default=["status", "balloon", "mix"]
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.vms, args.ticks, args.workloads, args.audit_vms = 40, 20, ["status", "mix"], 100
    print(f"machine: {machine()}")
    print(
        f"{args.vms} VMs x {args.ticks} ticks per workload; {args.partitions} partitions; the gateway's producer "
        f"sends one batch per partition per tick (~{args.vms / args.partitions:.0f} reports)"
    )
    embedded: dict[str, Size] = {}
    kafka: dict[tuple[str, str], KafkaSize] = {}
    chosen = variants()
    if args.audit_only:
        args.workloads = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            embedded[name] = measure(name, args.vms, args.ticks, tmp)
        broker = start_broker(log_path=os.path.join(tmp, "tansu.log"))
        try:
            for name in args.workloads:
                for codec in chosen:
                    kafka[(name, codec)] = run_deployment(
                        broker, name, args.vms, args.ticks, codec, args.partitions, tmp
                    )
            # A larger log for the audit (a backlog the worker drains: batching does not matter here).
            audited = run_deployment(
                broker, "status", args.audit_vms, args.ticks, "zstd/compact", args.partitions, tmp, lockstep=False
            )
            timed = [audit_speedup(audited.settings, jobs, tmp) for jobs in (2, 4)]
            # Enough VMs that a tick fills a 64-record batch in every partition.
            sweep_vms = max(args.vms, 80 * args.partitions)
            sweep = {
                (codec, k): inbox_sweep(broker, codec, k, sweep_vms, 3, args.partitions)
                for codec in (chosen if args.workloads else [])
                for k in SWEEP
            }
        finally:
            broker.stop()
    if not args.workloads:
        chosen = []
    print(
        f"\n{'workload':9} {'JSON lines':>10} {'embedded':>9} {'archived':>9}  "
        + " ".join(f"{c:>13}" for c in chosen)
        + "   (bytes per input; ratio to JSON lines)"
    )
    for name in args.workloads:
        e = embedded[name]
        base = e.json_bytes / e.inputs
        cells = [f"{kafka[(name, c)].per_input():6.1f} {kafka[(name, c)].per_input() / base:3.2f}x" for c in chosen]
        print(
            f"{name:9} {base:10.1f} {e.file_bytes / e.inputs:9.1f} {e.archived_bytes / e.inputs:9.1f}  "
            + " ".join(f"{c:>13}" for c in cells)
        )
    print("\nper topic, bytes per input (inbox / events / outbox / snapshots / meta), batches per topic:")
    for (name, codec), k in kafka.items():
        parts = " / ".join(f"{k.per_input(t):.1f}" for t in TOPICS)
        counts = " ".join(f"{t}={k.topics[t].batches}" for t in TOPICS[:4])
        print(f"  {name:8} {codec:13} {parts:34} {counts}")
    print("\ninbox bytes per status report by records per gateway batch (the linger/size trade-off):")
    print(f"  {'codec/records':13} " + " ".join(f"{f'{k}/batch':>9}" for k in SWEEP))
    for codec in chosen:
        print(f"  {codec:13} " + " ".join(f"{sweep[(codec, k)]:9.1f}" for k in SWEEP))
    print(
        f"\naudit --broker of a status log of {audited.inputs:,} inputs ({args.audit_vms} VMs x {args.ticks} ticks, "
        "zstd/compact), read + re-decided + compared, split by partition:"
    )
    for t in timed:
        idle = t.baseline / t.idle_cores
        print(
            f"  --jobs {t.jobs}: {t.pooled:.2f} s against {t.alone:.2f} s in one process ({t.alone / t.pooled:.2f}x on "
            f"this shared {os.cpu_count()}-core machine); each share's work timed alone: {t.idle_cores:.2f} s on idle "
            f"cores against {t.baseline:.2f} s as one share, {idle:.2f}x ({idle / t.jobs:.0%} efficiency; "
            f"joining the shares {t.parts[1]:.2f} s); reports equal: {t.same}"
        )
    if "status" in args.workloads:
        best = min(chosen, key=lambda c: kafka[("status", c)].per_input())
        s = kafka[("status", best)]
        verdict = "MET" if s.per_input() <= TARGET_BYTES else "NOT MET"
        none = kafka[("status", "none/json")].per_input()
        print(
            f"\ntarget <= {TARGET_BYTES} B per status-report input on Kafka, all topics included: "
            f"{s.per_input():.1f} B "
            f"with {best} ({none / s.per_input():.1f}x smaller than uncompressed JSON envelopes, {none:.1f} B): "
            f"{verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
