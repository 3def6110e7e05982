"""``hvdm engine --broker``: the DM engine as a Faust app, one agent over the inbox topic.

Why it is shaped this way (details of each rule in ``partition.py``):

* **Partitions are the unit of ownership.** Faust's consumer group assigns inbox partitions to
  workers. On assignment a worker rebuilds the partition's VMs from the snapshots topic (latest
  snapshot per VM, last checkpoint marker) plus the events topic read from that marker to its
  fetch high-watermark, before the agent touches the partition's records. On revocation it drops
  them. No Faust table is used: our own logs are the state (QUIRK(tansu), see ``kafka_log``).
* **Effectively-once without transactions.** The agent takes records in batches. For each batch it
  writes the outbox records and waits until the broker has them all, then the events records and
  waits again, and only then lets Faust acknowledge the inputs (``take_events`` acknowledges after
  the loop body; Faust commits acknowledged offsets only). A crash therefore leaves, for each
  input after the committed offset, either its events record (the input is skipped when replayed)
  or not (it is re-decided, identically, and its records written again). Outbox before events
  means no recorded event can lack its host messages; a duplicate message has the same outbox
  seq, and the gateway delivers each seq once.
* **Crash, don't limp.** Any failure in the agent (a send the broker refused, a record that breaks
  an invariant) ends the process at once with ``os._exit``, so Faust cannot acknowledge or commit
  anything after it; the group moves the partitions and the next owner replays from the
  committed offset.
* **Ticks.** With ``ticks=worker`` the worker that owns a partition appends its Tick records: after
  recovery it finds the last Tick in the partition and continues from there, one tick per
  ``tick_seconds / speed`` wall seconds, never skipping a number. Time a partition spent without
  an owner is not counted: a guest is not timed out for the host's own outage, which also makes a
  fail-over invisible in the event log. With ``ticks=external`` something else appends them.
* **Checkpoints.** Every ``--snapshot-every`` inbox records a partition writes a snapshot of each
  VM that changed, then a checkpoint marker naming the events offset from which recovery must
  read; recovery cost is bounded by the checkpoint interval, not the log's age.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.dm_engine.config import EngineConfig
from services.kafka_engine import envelope
from services.kafka_engine.envelope import ALL_VMS, EnvelopeError, EventsRecord, checkpoint_value
from services.kafka_engine.kafka_log import (
    AIOKAFKA_PRODUCER,
    PartitionReader,
    ensure_topics,
    faust_broker_url,
    put_meta_if_absent,
)
from services.kafka_engine.partition import Decision, PartitionEngine
from services.kafka_engine.settings import KafkaSettings

log = logging.getLogger("hvdm.kafka_worker")

#: Exit status when the worker stops itself after a failure (EX_SOFTWARE).
EXIT_CRASH = 70


def engine_config_of(settings: KafkaSettings, default: EngineConfig | None = None) -> EngineConfig:
    """The deployment's engine config: the first one recorded in the meta topic wins, so every
    worker and every audit decides with the same one."""
    proposed = json.dumps((default or EngineConfig()).to_dict(), sort_keys=True)
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
        inbox_end = reader.highwater(settings.inbox, partition)
        last_tick = reader.last_tick_before(partition, inbox_end)
    finally:
        reader.close()
    return Recovered(engine, len(snapshots), count, last_tick, inbox_end, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------- the worker
@dataclass(slots=True)
class OwnedPartition:
    """A partition this worker owns, from assignment to revocation."""

    number: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    engine: PartitionEngine | None = None
    last_tick: int | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    since_checkpoint: int = 0
    events_end: int = -1  # offset of the last events record this worker wrote (acked)
    revoked: bool = False


class EngineWorker:
    """The Faust app, its agent and the per-partition bookkeeping of one ``hvdm engine`` process."""

    def __init__(
        self,
        settings: KafkaSettings,
        config: EngineConfig,
        *,
        batch: int = 500,
        checkpoint_every: int = 2000,
        loglevel: str = "WARNING",
    ) -> None:
        import faust

        self.settings = settings
        self.config = config
        self.batch = batch
        self.checkpoint_every = checkpoint_every
        self.owned: dict[int, OwnedPartition] = {}
        self.records_processed = 0
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
            producer_acks=-1,
            producer_linger=AIOKAFKA_PRODUCER["linger_ms"] / 1000.0,
            stream_buffer_maxsize=max(4 * batch, 4096),
        )
        self.inbox_topic = self.app.topic(settings.inbox, key_type=bytes, value_type=bytes)
        self.app.agent(self.inbox_topic, name="hvdm-engine")(self._agent)
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ ownership
    async def _on_assigned(self, sender: Any, assigned: Iterable[Any], **_: Any) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.settings.inbox}
        for number in sorted(mine - set(self.owned)):
            part = self.owned[number] = OwnedPartition(number)
            part.tasks.append(asyncio.create_task(self._activate(part), name=f"hvdm-recover-{number}"))
        for number in sorted(set(self.owned) - mine):
            self._drop(number)

    async def _on_revoked(self, sender: Any, revoked: Iterable[Any], **_: Any) -> None:
        for tp in revoked:
            if tp.topic == self.settings.inbox and tp.partition in self.owned:
                self._drop(tp.partition)

    def _drop(self, number: int) -> None:
        part = self.owned.pop(number)
        part.revoked = True
        for task in part.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        log.info("event=partition_revoked partition=%d", number)

    async def _activate(self, part: OwnedPartition) -> None:
        try:
            rec = await asyncio.to_thread(recover_partition, self.settings, self.config, part.number)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=recovery_failed partition=%d", part.number)
            _crash()
        if part.revoked:
            return
        part.engine = rec.engine
        part.last_tick = rec.last_tick
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
            while not part.revoked:
                due = base_tick + int((time.monotonic() - base_time) / interval)
                seen = part.engine.clock.last if part.engine and part.engine.clock else None
                if seen is not None and seen > appended:
                    appended = seen  # another ticker got ahead (fail-over overlap): follow it
                while appended < due and not part.revoked:
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

    # ------------------------------------------------------------------ the agent
    async def _agent(self, stream: Any) -> None:
        async for batch in stream.take_events(self.batch, within=0.005):
            try:
                await self._process_batch(batch)
            except asyncio.CancelledError:
                raise
            except BaseException:
                log.exception("event=batch_failed records=%d", len(batch))
                _crash()

    async def _process_batch(self, batch: list[Any]) -> None:
        decisions: list[tuple[OwnedPartition, Decision]] = []
        touched: dict[int, OwnedPartition] = {}
        for event in batch:
            message = event.message
            part = self.owned.get(message.partition)
            if part is None or message.topic != self.settings.inbox:
                continue  # revoked since it was fetched: the new owner processes it
            if not part.ready.is_set():
                await part.ready.wait()
            engine = part.engine
            assert engine is not None
            if engine.clock is None:
                last = await asyncio.to_thread(_last_tick_before, self.settings, part.number, message.offset)
                engine.set_clock(last)
            try:
                value = envelope.decode(message.value)
            except EnvelopeError:
                engine.ignored_records += 1
                continue
            for decision in engine.decide(message.offset, value):
                decisions.append((part, decision))
            part.since_checkpoint += 1
            touched[part.number] = part
        self.records_processed += len(batch)
        if decisions:
            await self._write(decisions)
        for part in touched.values():
            if part.since_checkpoint >= self.checkpoint_every and not part.revoked:
                await self._checkpoint(part)

    async def _write(self, decisions: list[tuple[OwnedPartition, Decision]]) -> None:
        producer = self.app.producer
        settings = self.settings
        pending: list[Awaitable[Any]] = []
        for part, d in decisions:
            if d.outbox is not None:
                pending.append(
                    await producer.send(
                        settings.outbox, d.vm.encode(), envelope.encode(d.outbox), part.number, None, None
                    )
                )
        if pending:
            await asyncio.gather(*pending)  # outbox durable before the events that imply it
        sends: list[tuple[OwnedPartition, Awaitable[Any]]] = []
        for part, d in decisions:
            fut = await producer.send(
                settings.events,
                d.vm.encode(),
                envelope.encode(d.events_record.to_value()),
                part.number,
                None,
                None,
            )
            sends.append((part, fut))
        results = await asyncio.gather(*(fut for _, fut in sends))
        for (part, _), metadata in zip(sends, results, strict=True):
            part.events_end = max(part.events_end, int(metadata.offset))

    async def _checkpoint(self, part: OwnedPartition) -> None:
        engine = part.engine
        assert engine is not None
        producer = self.app.producer
        snaps = engine.take_snapshots()
        futs = [
            await producer.send(self.settings.snapshots, s["vm"].encode(), envelope.encode(s), part.number, None, None)
            for s in snaps
        ]
        await asyncio.gather(*futs)
        if part.events_end >= 0:
            marker = checkpoint_value(part.number, part.events_end + 1, engine.position)
            fut = await producer.send(
                self.settings.snapshots, ALL_VMS.encode(), envelope.encode(marker), part.number, None, None
            )
            await fut
        part.since_checkpoint = 0
        log.info(
            "event=checkpoint partition=%d snapshots=%d events_offset=%d", part.number, len(snaps), part.events_end + 1
        )

    # ------------------------------------------------------------------ running
    def run(self) -> int:
        import faust

        worker = faust.Worker(self.app, loglevel=self.loglevel, quiet=True, redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0


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


def run_worker(args: argparse.Namespace) -> int:
    """Entry point of ``hvdm engine --broker URL`` (see ``services.cli.engine_cmd``)."""
    settings = KafkaSettings.from_url(args.broker)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    ensure_topics(settings)
    config = engine_config_of(settings)
    worker = EngineWorker(
        settings,
        config,
        batch=int(getattr(args, "batch", 500)),
        checkpoint_every=int(getattr(args, "snapshot_every", 2000)),
        loglevel="INFO" if getattr(args, "verbose", False) else "WARNING",
    )
    print(
        f"hvdm engine: group {settings.group_id} on {settings.bootstrap}, inbox {settings.inbox}, "
        f"ticks={settings.ticks} speed x{settings.speed:g}",
        file=sys.stderr,
        flush=True,
    )
    return worker.run()
