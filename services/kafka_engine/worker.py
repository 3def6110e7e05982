"""``hvdm engine --broker``: the DM engine as a Faust app over the inbox topic.

Read like a Faust example: the app and its topic are declared first (``make_app``), then the agent,
which here is a batch sink around ``PartitionEngine``: each fetch of the inbox (up to ``batch``
records) is decided in one plain loop, with no per-record coroutine (``faust_batch``, which holds
every Faust internal the worker uses), and its records are queued for the writer. The other jobs
live in their own modules:

* ``ownership``: partitions are the unit of ownership; Faust's consumer group assigns them, a
  moved partition is rebuilt by ``recovery`` before its records are touched, and one that comes
  straight back after a rebalance keeps its state.
* ``ticker``: with ``ticks=worker`` the owner appends its partition's Tick records.
* ``checkpoints``: rolling snapshots and markers, bounding recovery by the checkpoint interval.
* ``writer``: outbox, then events, then checkpoints, then the acknowledgement (effectively-once
  without transactions).
* ``crash``: any failure in deciding or writing ends the process at once.
* ``worker_main``: the process around it (options, logging, GC, Faust's worker, /metrics).

An engine sees its partition's offsets without a hole: it starts at the committed offset and skips
what it has decided already (a re-read after a rebalance), and a fetch that would skip an offset
makes it seek back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..dm_engine.config import EngineConfig
from . import envelope
from .checkpoints import checkpoint_step
from .crash import crash
from .envelope import EnvelopeError
from .faust_batch import (
    AckRange,
    check_faust_version,
    committed_offset,
    faust_broker_url,
    register_batch_sink,
)
from .kafka_log import AIOKAFKA_PRODUCER, PRODUCER_BATCH_BYTES, PRODUCER_REQUEST_BYTES
from .ownership import OwnedPartition, Ownership
from .recovery import last_tick_before
from .settings import KafkaSettings
from .ticker import run_ticker
from .writer import WriteJob, Writer

log = logging.getLogger("hvdm.kafka_worker")


def make_app(settings: KafkaSettings, batch: int) -> Any:
    """The Faust app of one worker, subscribed to the inbox topic (no tables: our logs are the state)."""
    import faust

    check_faust_version()
    app = faust.App(
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
        producer_compression_type=settings.compression_type,
    )
    inbox = app.topic(settings.inbox, key_type=bytes, value_type=bytes)
    # Subscribed like an agent's topic, but delivered in whole fetches (``faust_batch``).
    app.topics.add(inbox)
    return app


class EngineWorker:
    """The agent: the inbox's fetches decided by the owned partitions' ``PartitionEngine``s."""

    def __init__(
        self,
        settings: KafkaSettings,
        config: EngineConfig,
        *,
        batch: int = 5000,
        checkpoint_every: int = 2000,
        pipeline: int = 2,
    ) -> None:
        self.settings = settings
        self.config = config
        self.checkpoint_every = checkpoint_every
        self.records_processed = 0
        #: (records, seconds) per fetch decided: the metrics' batch-latency histogram.
        self.on_batch: list[Callable[[int, float], None]] = []
        self.app = make_app(settings, batch)
        self.ownership = Ownership(settings, config, self._start_ticker)
        self.writer = Writer(self.app, settings, self.ownership.owned, pipeline)
        register_batch_sink(self.app, settings.inbox, self)
        self.app.on_partitions_assigned.connect(self.ownership.on_assigned)
        self.app.on_partitions_revoked.connect(self.ownership.on_revoked)

    @property
    def owned(self) -> dict[int, OwnedPartition]:
        return self.ownership.owned

    @property
    def assigned_once(self) -> bool:
        return self.ownership.assigned_once

    def _start_ticker(self, part: OwnedPartition) -> None:
        if self.settings.ticks == "worker":
            ticker = run_ticker(part, self.app.producer, self.settings, self.config.tick_seconds)
            part.tasks.append(asyncio.create_task(ticker, name=f"hvdm-ticker-{part.number}"))

    # ------------------------------------------------------------------ the batch sink (faust_batch)
    async def deliver(self, records: Mapping[Any, Sequence[Any]], ack: AckRange) -> None:
        """One fetch of inbox records: decide them all, queue their writes, return (the writes of
        fetch N run while fetch N+1 is decided)."""
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
                await self.writer.put(job)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("event=batch_failed")
            crash()

    async def wait_idle(self) -> None:
        await self.writer.wait_idle()

    async def _decide_fetch(self, tp: Any, batch: Sequence[Any], job: WriteJob) -> None:
        if tp.topic != self.settings.inbox:
            return
        part = self.owned.get(tp.partition)
        if part is None or not await self.ownership.wait_ready(part):
            return  # revoked since it was fetched: the new owner processes it
        engine = part.engine
        assert engine is not None
        first = batch[0].offset
        if part.next_offset is None:
            # Faust has just sought to the committed offset (None: nothing committed, the earliest
            # record is the start): the engine's inputs start there, without a hole.
            committed = committed_offset(self.app, tp)
            part.next_offset = first if committed is None else committed
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
            engine.set_clock(await asyncio.to_thread(last_tick_before, self.settings, part.number, part.next_offset))
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
        step = checkpoint_step(part, engine, count, self.checkpoint_every)
        if step is not None:
            job.checkpoints.append(step)
