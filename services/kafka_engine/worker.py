"""``hvdm engine --broker``: the DM engine as a Faust app over the inbox topic.

Why it is shaped this way (details of each rule in ``partition.py``):

* **Partitions are the unit of ownership.** Faust's consumer group assigns inbox partitions to
  workers. On assignment a worker rebuilds the partition's VMs from the snapshots topic (latest
  snapshot per VM, last checkpoint marker) plus the events topic read from that marker to its
  fetch high-watermark, before it touches the partition's records. A rebalance revokes every
  partition (eager protocol); a partition that comes straight back to the same worker keeps its
  state (nobody else can have owned it in between), so only moved partitions are recovered. No
  Faust table is used: our own logs are the state (QUIRK(tansu), see ``kafka_log``).
* **Whole fetches, not records.** The inbox is delivered through ``faust_batch``: each fetch (up to
  ``--batch`` records) is decided in one plain loop, with no per-record coroutine, and its records
  are written as one producer batch per partition and topic. An engine sees its partition's
  offsets without a hole: it starts at the committed offset and skips what it has decided already
  (a re-read after a rebalance), and a fetch that would skip an offset makes it seek back.
* **Effectively-once without transactions.** For each fetch the worker writes the outbox records
  and waits until the broker has them all, then the events records and waits again, and only
  then acknowledges the fetch's offsets (Faust commits acknowledged offsets only). A crash
  therefore leaves, for each input after the committed offset, either its events record (the
  input is skipped when replayed) or not (it is re-decided, identically, and its records written
  again). Outbox before events means no recorded event can lack its host messages; a duplicate
  message has the same outbox seq, and the gateway delivers each seq once. The writes of fetch N
  overlap the decisions of fetch N+1 (``pipeline`` fetches queue at most); writes happen in fetch
  order, so acknowledging N never covers an unwritten input.
* **Ordering without idempotence** (QUIRK(tansu)): aiokafka keeps one produce request in flight per
  broker, so a partition's batches arrive in send order; a failed send ends the process.
* **Crash, don't limp.** Any failure in deciding or writing ends the process at once with
  ``os._exit``, so nothing after it can be acknowledged or committed; the group moves the
  partitions and the next owner replays from the committed offset.
* **Ticks.** With ``ticks=worker`` the worker that owns a partition appends its Tick records: after
  recovery it finds the last Tick in the partition and continues from there, one tick per
  ``tick_seconds / speed`` wall seconds, never skipping a number. Time a partition spent without
  an owner is not counted: a guest is not timed out for the host's own outage, which also makes a
  fail-over invisible in the event log. With ``ticks=external`` something else appends them.
* **Checkpoints, rolling.** Recovery reads the latest snapshot per VM and the events topic from
  the last checkpoint marker on, so its cost is bounded by the checkpoint interval, not the log's
  age. A checkpoint round starts once a partition has processed ``--snapshot-every`` inbox
  records and at least ``CHECKPOINT_VM_FACTOR`` times as many records as it has changed VMs
  (with many VMs a checkpoint then costs at most 1/8 more records). The round notes the events
  offset ``E`` it starts at and the VMs changed so far, snapshots them a few per fetch (at most a
  quarter of the fetch's records, so 10,000 VMs never stall a partition for one big checkpoint),
  and writes the marker naming ``E`` after the last of them. That marker is valid: a VM that was
  clean when the round started has a snapshot covering every event before ``E``; one that was
  changed has a snapshot taken during the round, and everything it decided after that is at or
  after ``E``. Snapshots from an unfinished round are newer than the last marker, which only
  makes recovery read a few events records it then skips by their seq.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import ALL_VMS
from services.kafka_engine import envelope
from services.kafka_engine.envelope import EnvelopeError, EventsRecord, checkpoint_value
from services.kafka_engine.faust_batch import AckRange, register_batch_sink
from services.kafka_engine.kafka_log import (
    AIOKAFKA_PRODUCER,
    PRODUCER_BATCH_BYTES,
    PRODUCER_REQUEST_BYTES,
    PartitionReader,
    ensure_topics,
    faust_broker_url,
    put_meta_if_absent,
)
from services.kafka_engine.partition import PartitionEngine
from services.kafka_engine.settings import KafkaSettings

if TYPE_CHECKING:
    from services.metrics import MetricsLabels, MetricsServer

log = logging.getLogger("hvdm.kafka_worker")

#: Exit status when the worker stops itself after a failure (EX_SOFTWARE).
EXIT_CRASH = 70
#: A checkpoint waits for at least this many inbox records per VM it would snapshot.
CHECKPOINT_VM_FACTOR = 8


def engine_config_of(settings: KafkaSettings, default: EngineConfig | None = None) -> EngineConfig:
    """The deployment's engine config: the first one recorded in the meta topic wins, so every
    worker and every audit decides with the same one."""
    # Retention (forgetting VMs) is the embedded service's: a partition keeps every VM's cursor, so
    # a forgotten VM would be counted down and forgotten again forever. Kafka logs keep every VM.
    proposed = json.dumps(replace(default or EngineConfig(), retention_ticks=0).to_dict(), sort_keys=True)
    return EngineConfig.from_dict(json.loads(put_meta_if_absent(settings, "engine_config", proposed)))


# ---------------------------------------------------------------------------------------- recovery
@dataclass(slots=True)
class Recovered:
    engine: PartitionEngine
    snapshots: int
    events_records: int
    last_tick: int | None
    inbox_end: int
    seconds: float
    #: Offset of the last record in the events partition when recovery read it (-1: empty).
    events_end: int = -1


def recover_partition(settings: KafkaSettings, config: EngineConfig, partition: int) -> Recovered:
    """Rebuild a partition's VMs: snapshots, then events from the last checkpoint to the end.

    Blocking (kafka-python); the worker runs it in a thread.
    """
    started = time.perf_counter()
    engine = PartitionEngine(partition, config)
    reader = PartitionReader(settings)
    try:
        events_start = 0
        snapshots: dict[str, dict[str, Any]] = {}
        for record in reader.read(settings.snapshots, partition):
            try:
                value = envelope.decode(record.value)
            except EnvelopeError:
                continue
            if value["vm"] == ALL_VMS:
                events_start = int(value["events_offset"])
            elif value["vm"] not in snapshots or snapshots[value["vm"]]["seq"] < value["seq"]:
                snapshots[value["vm"]] = value
        for value in snapshots.values():
            engine.restore_snapshot(value)
        count = 0
        for record in reader.read(settings.events, partition, events_start):
            try:
                events_record = EventsRecord.from_value(envelope.decode(record.value))
            except EnvelopeError:
                continue
            if engine.replay(events_record):
                # Its state moved past any snapshot: the next checkpoint must cover it.
                engine.dirty.add(events_record.vm)
            count += 1
        events_end = reader.highwater(settings.events, partition) - 1
        inbox_end = reader.highwater(settings.inbox, partition)
        last_tick = reader.last_tick_before(partition, inbox_end)
    finally:
        reader.close()
    return Recovered(
        engine, len(snapshots), count, last_tick, inbox_end, time.perf_counter() - started, events_end=events_end
    )


# ---------------------------------------------------------------------------------------- the worker
@dataclass(slots=True)
class OwnedPartition:
    """A partition this worker owns, from assignment to revocation."""

    number: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the partition is dropped (a waiter for ``ready`` must give up).
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    engine: PartitionEngine | None = None
    last_tick: int | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    since_checkpoint: int = 0
    events_end: int = -1  # offset of the last events record this worker wrote (acked)
    revoked: bool = False
    #: The inbox offset the engine must see next (None: not known before the first fetch).
    next_offset: int | None = None
    #: The running checkpoint round: VMs still to snapshot, and the events offset it started at.
    round_pending: list[str] | None = None
    round_events_start: int = 0


@dataclass(slots=True)
class WriteJob:
    """The records one fetch produced, written in order by ``EngineWorker._writer``."""

    #: (partition, key, value) per topic, in decision order.
    outbox: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    events: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    #: (partition, snapshot records, marker or None) of running checkpoint rounds.
    checkpoints: list[tuple[OwnedPartition, list[dict[str, Any]], dict[str, Any] | None]] = field(default_factory=list)
    #: (topic-partition, first offset, last offset, owner) to acknowledge once all is durable.
    acks: list[tuple[Any, int, int, OwnedPartition]] = field(default_factory=list)
    #: Per partition number, the owner(s) whose decisions the events records are.
    events_parts: dict[int, list[OwnedPartition]] = field(default_factory=dict)


def _merge(jobs: list[WriteJob]) -> WriteJob:
    """One job doing what ``jobs`` do, in their order."""
    out = WriteJob()
    for job in jobs:
        out.outbox.extend(job.outbox)
        out.events.extend(job.events)
        out.checkpoints.extend(job.checkpoints)
        out.acks.extend(job.acks)
        for number, parts in job.events_parts.items():
            known = out.events_parts.setdefault(number, [])
            known.extend(p for p in parts if p not in known)
    return out


class EngineWorker:
    """The Faust app, its inbox sink and the per-partition bookkeeping of one ``hvdm engine`` process."""

    def __init__(
        self,
        settings: KafkaSettings,
        config: EngineConfig,
        *,
        batch: int = 5000,
        checkpoint_every: int = 2000,
        loglevel: str = "WARNING",
        pipeline: int = 2,
        metrics: tuple[str, int] | None = None,
        metrics_labels: MetricsLabels | None = None,
    ) -> None:
        import faust

        self.settings = settings
        self.config = config
        self.batch = batch
        self.checkpoint_every = checkpoint_every
        self.owned: dict[int, OwnedPartition] = {}
        #: Revoked by a rebalance that has not assigned yet (see ``_on_revoked``).
        self.parked: dict[int, OwnedPartition] = {}
        self.records_processed = 0
        #: Partitions were assigned at least once (the worker has joined the group): /-/ready.
        self.assigned_once = False
        #: (records, seconds) per fetch decided: the metrics' batch-latency histogram.
        self.on_batch: list[Callable[[int, float], None]] = []
        #: Serve /metrics at (host, port) while running (``worker_metrics.WorkerView``).
        self.metrics = metrics
        self.metrics_labels = metrics_labels
        self.loglevel = loglevel
        self.app = faust.App(
            settings.group_id,
            broker=faust_broker_url(settings),
            value_serializer="raw",
            key_serializer="raw",
            web_enabled=False,
            autodiscover=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            store="memory://",
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout,
            broker_heartbeat_interval=settings.heartbeat,
            broker_rebalance_timeout=settings.rebalance_timeout,
            broker_commit_interval=settings.commit_interval,
            broker_max_poll_records=batch,
            producer_acks=-1,
            producer_linger=AIOKAFKA_PRODUCER["linger_ms"] / 1000.0,
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            producer_max_request_size=PRODUCER_REQUEST_BYTES,
        )
        self.inbox_topic = self.app.topic(settings.inbox, key_type=bytes, value_type=bytes)
        # Subscribed like an agent's topic, but delivered in whole fetches (``faust_batch``).
        self.app.topics.add(self.inbox_topic)
        register_batch_sink(self.app, settings.inbox, self)
        self._jobs: asyncio.Queue[WriteJob] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self.pipeline = pipeline
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ ownership
    async def _on_assigned(self, sender: Any, assigned: Iterable[Any], **_: Any) -> None:
        self.assigned_once = True
        mine = {tp.partition for tp in assigned if tp.topic == self.settings.inbox}
        for number in sorted(mine - set(self.owned)):
            parked = self.parked.pop(number, None)
            if parked is not None:
                # Ours before the rebalance and ours after it: nobody else owned it in between
                # (a partition is assigned only after its previous owner revoked it), so its
                # state is still exact. Faust re-reads from the committed offset; the engine
                # skips what it has already decided (``next_offset``).
                parked.revoked = False
                self.owned[number] = parked
                continue
            part = self.owned[number] = OwnedPartition(number)
            part.tasks.append(asyncio.create_task(self._activate(part), name=f"hvdm-recover-{number}"))
        for number in sorted(set(self.owned) - mine):
            self._drop(self.owned.pop(number))
        for part in self.parked.values():
            self._drop(part)
        self.parked.clear()

    async def _on_revoked(self, sender: Any, revoked: Iterable[Any], **_: Any) -> None:
        # Parked, not dropped: an eager rebalance revokes every partition of every member, and a
        # worker that gets a partition back must not pay a recovery for it.
        for tp in revoked:
            if tp.topic == self.settings.inbox and tp.partition in self.owned:
                part = self.parked[tp.partition] = self.owned.pop(tp.partition)
                part.revoked = True

    def _drop(self, part: OwnedPartition) -> None:
        part.revoked = True
        part.gone.set()
        for task in part.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        log.info("event=partition_revoked partition=%d", part.number)

    async def _activate(self, part: OwnedPartition) -> None:
        try:
            rec = await asyncio.to_thread(recover_partition, self.settings, self.config, part.number)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=recovery_failed partition=%d", part.number)
            _crash()
        if part.gone.is_set():
            return
        part.engine = rec.engine
        part.last_tick = rec.last_tick
        part.events_end = rec.events_end
        part.ready.set()
        log.info(
            "event=partition_ready partition=%d vms=%d snapshots=%d events_records=%d inbox_end=%d "
            "last_tick=%s seconds=%.3f",
            part.number,
            len(rec.engine.vms),
            rec.snapshots,
            rec.events_records,
            rec.inbox_end,
            rec.last_tick,
            rec.seconds,
        )
        if self.settings.ticks == "worker":
            part.tasks.append(asyncio.create_task(self._ticker(part), name=f"hvdm-ticker-{part.number}"))

    # ------------------------------------------------------------------ ticks
    async def _ticker(self, part: OwnedPartition) -> None:
        """Append Tick records to the partition, continuing from the last one in it."""
        from faust.exceptions import NotReady

        interval = self.config.tick_seconds / self.settings.speed
        producer = self.app.producer
        base_tick = part.last_tick or 0
        base_time = time.monotonic()
        appended = base_tick
        try:
            while not part.gone.is_set():
                due = base_tick + int((time.monotonic() - base_time) / interval)
                seen = part.engine.clock.last if part.engine and part.engine.clock else None
                if seen is not None and seen > appended:
                    appended = seen  # another ticker got ahead (fail-over overlap): follow it
                while appended < due and not part.gone.is_set():
                    while True:  # a partition can be assigned before the app's producer has started
                        try:
                            fut = await producer.send(
                                self.settings.inbox,
                                ALL_VMS.encode(),
                                envelope.tick_value(appended + 1),
                                part.number,
                                None,
                                None,
                            )
                            break
                        except NotReady:
                            await asyncio.sleep(0.05)
                    await fut
                    appended += 1
                next_at = base_time + (appended + 1 - base_tick) * interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=ticker_failed partition=%d", part.number)
            _crash()

    # ------------------------------------------------------------------ the inbox sink (faust_batch)
    async def deliver(self, records: Mapping[Any, Sequence[Any]], ack: AckRange) -> None:
        """One fetch of inbox records: decide them all, queue their writes, return.

        The writes of fetch N run while fetch N+1 is decided; at most ``pipeline`` fetches wait
        for the writer, which is the back-pressure on the fetcher.
        """
        try:
            started = time.perf_counter()
            job = WriteJob()
            for tp, batch in records.items():
                await self._decide_fetch(tp, batch, job)
            if self.on_batch:
                elapsed = time.perf_counter() - started
                count = sum(len(batch) for batch in records.values())
                for observe in self.on_batch:
                    observe(count, elapsed)
            if job.acks:
                if self._jobs is None:
                    self._jobs = asyncio.Queue(self.pipeline)
                    self._writer_task = asyncio.create_task(self._writer(self._jobs), name="hvdm-writer")
                await self._jobs.put(job)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("event=batch_failed")
            _crash()

    async def wait_idle(self) -> None:
        if self._jobs is not None:
            await self._jobs.join()

    async def _decide_fetch(self, tp: Any, batch: Sequence[Any], job: WriteJob) -> None:
        if tp.topic != self.settings.inbox:
            return
        part = self.owned.get(tp.partition)
        if part is None:
            return  # revoked since it was fetched: the new owner processes it
        if not part.ready.is_set():
            ready = asyncio.ensure_future(part.ready.wait())
            gone = asyncio.ensure_future(part.gone.wait())
            await asyncio.wait((ready, gone), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            gone.cancel()
            if part.gone.is_set() or part is not self.owned.get(tp.partition):
                return
        engine = part.engine
        assert engine is not None
        first = batch[0].offset
        if part.next_offset is None:
            # Faust has just sought to the committed offset (None: nothing committed, the earliest
            # record is the start): the engine's inputs start there, without a hole.
            consumer: Any = self.app.consumer
            committed = consumer._committed_offset.get(tp)
            part.next_offset = first if committed is None else int(committed)
        if first > part.next_offset:
            # Records missing before this fetch (it belongs to an older position of the consumer):
            # never skip an input -- read again from where the engine is.
            log.warning("event=inbox_gap partition=%d expected=%d got=%d", part.number, part.next_offset, first)
            await self.app.consumer.seek(tp, part.next_offset)
            return
        last = batch[-1].offset
        if last < part.next_offset:
            # All decided already (re-read after a rebalance that kept the partition here). Their
            # writes are in an earlier job, so acknowledging them with this one is safe -- and
            # needed: Faust forgets a revoked partition's acknowledgements.
            job.acks.append((tp, first, last, part))
            return
        if engine.clock is None:
            last_tick = await asyncio.to_thread(_last_tick_before, self.settings, part.number, part.next_offset)
            engine.set_clock(last_tick)
        number = part.number
        decode = envelope.decode
        decide = engine.decide
        outbox = job.outbox
        events = job.events
        wrote_events = False
        start = part.next_offset
        for message in batch:
            offset = message.offset
            if offset < start:
                continue
            try:
                value = decode(message.value)
            except EnvelopeError:
                engine.ignored_records += 1
                continue
            for d in decide(offset, value):
                key = d.vm.encode()
                if d.outbox is not None:
                    outbox.append((number, key, envelope.encode(d.outbox)))
                events.append((number, key, d.events_value()))
                wrote_events = True
        count = last + 1 - start
        part.next_offset = last + 1
        part.since_checkpoint += count
        self.records_processed += count
        if wrote_events:
            job.events_parts[number] = [part]
        job.acks.append((tp, first, last, part))
        self._checkpoint_step(part, engine, count, job)

    def _checkpoint_step(self, part: OwnedPartition, engine: PartitionEngine, count: int, job: WriteJob) -> None:
        """Start a checkpoint round when one is due, and snapshot the next few VMs of a running one
        (see the module docstring)."""
        if part.round_pending is None:
            if part.since_checkpoint < max(self.checkpoint_every, CHECKPOINT_VM_FACTOR * len(engine.dirty)):
                return
            part.round_pending = sorted(engine.dirty, reverse=True)
            part.round_events_start = part.events_end + 1
            part.since_checkpoint = 0
        pending = part.round_pending
        take = [pending.pop() for _ in range(min(len(pending), max(16, count // 4)))]
        snaps = engine.take_snapshots(take)
        marker = None
        if not pending:
            part.round_pending = None
            if part.round_events_start > 0:
                marker = checkpoint_value(part.number, part.round_events_start, engine.position)
        job.checkpoints.append((part, snaps, marker))

    async def _writer(self, jobs: asyncio.Queue[WriteJob]) -> None:
        """Write the jobs' records in order and acknowledge their inputs once they are durable.

        Per step: the outbox records, then (once the broker has them) the events records, then
        any checkpoint's snapshots and (once they are durable) its marker; only then are the
        inputs acknowledged, so Faust can commit them. Each write sends one producer batch per
        partition and waits for the batches, never for single records. Jobs that queued up while
        the previous step was in flight are written together (a group commit): their order is
        kept, and a backlog costs round trips per step, not per fetch.
        """
        settings = self.settings
        while True:
            batch = [await jobs.get()]
            while not jobs.empty():
                batch.append(jobs.get_nowait())
            job = batch[0] if len(batch) == 1 else _merge(batch)
            try:
                if job.outbox:
                    await self._send_records(settings.outbox, job.outbox)
                if job.events:
                    ends = await self._send_records(settings.events, job.events)
                    for number, end in ends.items():
                        for part in job.events_parts[number]:
                            part.events_end = max(part.events_end, end)
                for part, snaps, marker in job.checkpoints:
                    await self._checkpoint(part, snaps, marker)
                owned = self.owned
                consumer: Any = self.app.consumer
                for tp, first, last, part in job.acks:
                    if owned.get(part.number) is part:  # revoked since: the new owner decides again
                        consumer.ack_range(tp, first, last)
            except asyncio.CancelledError:
                raise
            except BaseException:
                log.exception("event=write_failed outbox=%d events=%d", len(job.outbox), len(job.events))
                _crash()
            finally:
                for _ in batch:
                    jobs.task_done()

    async def _send_records(self, topic: str, records: list[tuple[int, bytes, bytes]]) -> dict[int, int]:
        """Send ``(partition, key, value)`` records as producer batches (one per partition, more if
        a batch fills up) and wait until the broker has them all; returns the last offset written
        per partition. Records of one partition keep their order."""
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]  # aiokafka's
        per_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for number, key, value in records:
            per_partition.setdefault(number, []).append((key, value))
        pending: list[tuple[int, int, Awaitable[Any]]] = []
        for number, items in per_partition.items():
            batch = producer.create_batch()
            count = 0
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    pending.append((number, count, await producer.send_batch(batch, topic, partition=number)))
                    batch = producer.create_batch()
                    count = 0
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a {topic} record of {len(value)} bytes does not fit a producer batch")
                count += 1
            batch.close()
            pending.append((number, count, await producer.send_batch(batch, topic, partition=number)))
        ends: dict[int, int] = {}
        for number, count, fut in pending:
            metadata = await fut
            end = int(metadata.offset) + count - 1
            if end > ends.get(number, -1):
                ends[number] = end
        return ends

    async def _checkpoint(
        self, part: OwnedPartition, snaps: list[dict[str, Any]], marker: dict[str, Any] | None
    ) -> None:
        """A checkpoint round's snapshots, then (once durable) its marker if the round ends here;
        the events the snapshots reflect are already durable (written earlier in the job)."""
        settings = self.settings
        if snaps:
            await self._send_records(
                settings.snapshots, [(part.number, s["vm"].encode(), envelope.encode(s)) for s in snaps]
            )
        if marker is not None:
            await self._send_records(settings.snapshots, [(part.number, ALL_VMS.encode(), envelope.encode(marker))])
            log.info(
                "event=checkpoint partition=%d events_offset=%d inbox_offset=%d",
                part.number,
                marker["events_offset"],
                marker["inbox_offset"],
            )

    # ------------------------------------------------------------------ running
    def run(self) -> int:
        import faust

        # Faust (mode) replaces the root logger's handlers with its own on stdout; keep hvdm's
        # (--log-format text|json, on stderr) and only let it set the level.
        self.app.conf.loghandlers = list(logging.getLogger().handlers)
        worker = faust.Worker(
            self.app,
            loglevel=self.loglevel,
            quiet=True,
            redirect_stdouts=False,
            logging_config={"version": 1, "disable_existing_loggers": False, "root": {"level": self.loglevel}},
        )
        server = self._serve_metrics(worker.loop) if self.metrics is not None else None
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            if server is not None:
                server.stop()
        return 0

    def _serve_metrics(self, loop: asyncio.AbstractEventLoop) -> MetricsServer:
        """/metrics with the VMs of the partitions this worker owns (``worker_metrics``)."""
        from services.kafka_engine.worker_metrics import WorkerView
        from services.metrics import EngineMetrics, start_metrics_server

        assert self.metrics is not None
        view = WorkerView(self)
        metrics = EngineMetrics(view, loop=loop, labels=self.metrics_labels, wall_of_tick=view.wall_of_tick)
        self.on_batch.append(metrics.observe_batch)
        server = start_metrics_server(metrics, self.metrics[0], self.metrics[1], ready=view.ready)
        print(f"hvdm engine: metrics {server.url}", file=sys.stderr, flush=True)
        return server


def _last_tick_before(settings: KafkaSettings, partition: int, offset: int) -> int | None:
    reader = PartitionReader(settings)
    try:
        return reader.last_tick_before(partition, offset)
    finally:
        reader.close()


def _crash() -> None:
    """Leave at once: nothing after a failure may be acknowledged or committed."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_CRASH)


#: Young-generation threshold of the cyclic GC in a worker (CPython's default is 700).
GC_THRESHOLD = (20_000, 20, 20)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a worker's allocation pattern.

    Deciding one record allocates a few dozen short-lived containers, so with CPython's default
    thresholds a young collection runs every ~20 records and, with 10,000 VMs' states alive, the
    older generations are scanned often too: measured 5-40 % of the decide loop. The engine makes
    almost no reference cycles, so collecting young objects every 20,000 allocations costs no
    memory worth mentioning; everything alive at start-up (modules, Faust) is frozen out of the
    scans altogether.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run_worker(args: argparse.Namespace) -> int:
    """Entry point of ``hvdm engine --broker URL`` (see ``services.cli.engine_cmd``)."""
    settings = KafkaSettings.from_url(args.broker)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    ensure_topics(settings)
    config = engine_config_of(settings, getattr(args, "engine_config", None))
    tune_gc()
    worker = EngineWorker(
        settings,
        config,
        batch=max(int(getattr(args, "batch", 500)), 1),
        checkpoint_every=int(getattr(args, "snapshot_every", 2000)),
        loglevel=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        metrics=(args.metrics_host, args.metrics_port) if getattr(args, "metrics_port", None) is not None else None,
        metrics_labels=getattr(args, "metrics_labels", None),
    )
    print(
        f"hvdm engine: group {settings.group_id} on {settings.bootstrap}, inbox {settings.inbox}, "
        f"ticks={settings.ticks} speed x{settings.speed:g}",
        file=sys.stderr,
        flush=True,
    )
    return worker.run()
