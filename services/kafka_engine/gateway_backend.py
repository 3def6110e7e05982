"""The gateway's backend on Kafka: guest inputs to the inbox topic, the outbox topic back to guests.

Why it looks like this:

* **Publishing** uses kafka-python (key = VM id, so a VM's inputs share a partition and keep their
  order; producer options in ``kafka_log``). ``submit`` does not wait for the broker: the gateway
  must keep reading guests while the log catches up, and kafka-python's bounded buffer is the
  back-pressure (a full buffer blocks ``send`` and so the gateway's reads). ``close`` flushes, so
  a clean restart loses nothing.
* **Delivering** reads the whole outbox topic without a consumer group (every gateway needs its own
  VMs' records from every partition) and indexes it per VM by outbox seq. A re-decided input writes
  its outbox record again with the same seqs; the index keeps the first copy, and
  ``read_outbox`` returns only an unbroken run of seqs after the one asked for, so a message
  can be neither repeated nor overtaken by a later one.
* **Resuming** is carried by the guest: its hello says the last outbox seq it received (counted
  from the position the gateway's answer named), and the server asks for what follows. ``start`` reads the outbox
  to its fetch high-watermark before the server accepts connections, so a restarted gateway knows
  every VM's messages (and a new channel's starting point) before the first hello.
* **Memory** is bounded per VM: delivered messages are kept only up to ``retain`` behind the
  newest. A resume that asks for older ones (a guest that moved here from another gateway long
  after) triggers a re-read of that VM's partition in a thread; the server is woken when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..dm_engine.inputs import Input
from ..dm_engine.records import to_dict
from ..event_log.sqlite_log import OutboxRow
from . import envelope
from .envelope import EnvelopeError, outbox_messages_of
from .kafka_log import PartitionReader, ensure_topics, new_producer
from .settings import KafkaSettings

log = logging.getLogger("hvdm.kafka_gateway")


@dataclass(slots=True)
class VmOutbox:
    """What this gateway knows of one VM's outbox."""

    partition: int
    messages: dict[int, OutboxRow] = field(default_factory=dict)
    high: int = 0  # highest seq seen
    floor: int = 0  # every seq <= floor has been dropped from ``messages``
    delivered: int = 0
    refilling: bool = False


class KafkaBackend:
    """``GatewayBackend`` over the inbox and outbox topics (see ``vmbus_gateway.backend``)."""

    def __init__(self, settings: KafkaSettings, *, retain: int = 1024) -> None:
        self.settings = settings
        self.retain = retain
        self.vms: dict[str, VmOutbox] = {}
        self._callbacks: list[Callable[[set[str]], None]] = []
        # The inbox's batches: a longer linger packs more reports per batch (settings.linger).
        self._producer = new_producer(settings, linger=settings.linger)
        self._submitted = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self.outbox_records = 0
        self.duplicates = 0
        self.delivery_paused = False
        #: Per inbox partition, the offset after the last input this gateway published (acked).
        self.published_ends: dict[int, int] = {}
        self._owners: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Create missing topics, read the outbox to its end, then follow it in the background."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        counts = await asyncio.to_thread(ensure_topics, self.settings)
        tps = [TopicPartition(self.settings.outbox, p) for p in range(counts[self.settings.outbox])]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=max(1, int(self.settings.fetch_wait * 1000)),  # QUIRK(tansu) long-poll
            max_partition_fetch_bytes=8 << 20,
        )
        await consumer.start()
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        self._consumer = consumer
        # QUIRK(tansu) ListOffsets (see kafka_log): the end is the fetch high-watermark.
        while True:
            caught_up = True
            for tp in tps:
                end = consumer.highwater(tp)
                if end is None or await consumer.position(tp) < end:
                    caught_up = False
            if caught_up:
                break
            self._ingest(await consumer.getmany(timeout_ms=100, max_records=10_000))
        log.info("event=outbox_loaded vms=%d records=%d", len(self.vms), self.outbox_records)
        self._task = asyncio.create_task(self._follow(consumer), name="hvdm-gateway-outbox")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        consumer = self._consumer
        if consumer is not None:
            await consumer.stop()
            self._consumer = None
        await asyncio.to_thread(self.flush)
        self._producer.close()

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until every submitted input is on the broker."""
        self._producer.flush(timeout)

    async def _follow(self, consumer: Any) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            changed = self._ingest(batches)
            if changed:
                for cb in self._callbacks:
                    cb(changed)

    def _ingest(self, batches: dict[Any, list[Any]]) -> set[str]:
        changed: set[str] = set()
        for tp, records in batches.items():
            for record in records:
                try:
                    value = envelope.decode(record.value)
                    messages = outbox_messages_of(value)
                except EnvelopeError:
                    continue
                self.outbox_records += 1
                vm = str(value["vm"])
                self._add(vm, tp.partition, messages)
                changed.add(vm)
        return changed

    def _add(self, vm: str, partition: int, messages: list[envelope.OutboxMessage]) -> None:
        box = self.vms.get(vm)
        if box is None:
            box = self.vms[vm] = VmOutbox(partition)
        for m in messages:
            if m.seq <= box.floor or m.seq in box.messages:
                self.duplicates += 1
                continue
            box.messages[m.seq] = OutboxRow(vm, m.seq, m.event_seq, m.message)
            box.high = max(box.high, m.seq)
        self._trim(box)

    def _trim(self, box: VmOutbox) -> None:
        keep_from = min(box.delivered, box.high - self.retain) if box.delivered else box.high - self.retain
        if keep_from > box.floor and len(box.messages) > self.retain:
            for seq in [s for s in box.messages if s <= keep_from]:
                del box.messages[seq]
            box.floor = keep_from

    # ------------------------------------------------------------------ GatewayBackend
    def submit(self, vm: str, record: Input) -> int:
        future = self._producer.send(
            self.settings.inbox, key=vm.encode(), value=envelope.inbox_value(vm, to_dict(record))
        )
        future.add_callback(self._published)
        return next(self._submitted)

    def _published(self, metadata: Any) -> None:
        # Runs on the producer's I/O thread; one dict store per record.
        ends = self.published_ends
        end = int(metadata.offset) + 1
        if end > ends.get(metadata.partition, 0):
            ends[metadata.partition] = end

    def read_outbox(self, vm: str, after_seq: int, limit: int = 1000) -> list[OutboxRow]:
        box = self.vms.get(vm)
        if box is None or self.delivery_paused:
            return []
        if after_seq < box.floor:
            self._refill(vm, box)
            return []
        out: list[OutboxRow] = []
        messages = box.messages
        seq = after_seq + 1
        while len(out) < limit and seq in messages:
            out.append(messages[seq])
            seq += 1
        return out

    def outbox_high_watermark(self, vm: str) -> int:
        box = self.vms.get(vm)
        return 0 if box is None else box.high

    def delivered(self, vm: str) -> int:
        box = self.vms.get(vm)
        return 0 if box is None else box.delivered

    def set_delivered(self, vm: str, seq: int) -> None:
        box = self.vms.get(vm)
        if box is None:
            return
        box.delivered = seq
        self._trim(box)

    def on_outbox(self, cb: Callable[[set[str]], None]) -> None:
        self._callbacks.append(cb)

    def known_vm(self, vm: str) -> bool:
        """A VM with outbox records (every channel gets a version response) is known."""
        return vm in self.vms

    def owner(self, vm: str) -> int:
        """Channel owners live in this gateway's memory only (see README, Security)."""
        return self._owners.get(vm, 0)

    def set_owner(self, vm: str, digest: int) -> None:
        self._owners[vm] = digest

    # ------------------------------------------------------------------ pausing and progress
    def pause_delivery(self) -> None:
        """Hold host-to-guest delivery (guest-to-host keeps flowing). The lockstep test driver uses it
        so guests see a new tick before any host message it causes, as in the embedded fleet."""
        self.delivery_paused = True

    def resume_delivery(self) -> None:
        self.delivery_paused = False
        for cb in self._callbacks:
            cb(set(self.vms))

    async def outbox_read_since(self, wall_time: float) -> bool:
        """True once, for every outbox partition, a fetch answered after ``wall_time`` (a
        ``time.time()`` value) and this gateway has read up to the end that fetch reported: then
        every outbox record written before ``wall_time`` is in the index."""
        consumer = self._consumer
        if consumer is None:
            return False
        for tp in consumer.assignment():
            polled = consumer.last_poll_timestamp(tp)
            end = consumer.highwater(tp)
            if polled is None or end is None or polled < wall_time * 1000:
                return False
            if await consumer.position(tp) < end:
                return False
        return True

    # ------------------------------------------------------------------ slow path
    def _refill(self, vm: str, box: VmOutbox) -> None:
        if box.refilling:
            return
        box.refilling = True
        log.info("event=outbox_refill vm=%s floor=%d", vm, box.floor)

        def read() -> list[envelope.OutboxMessage]:
            reader = PartitionReader(self.settings)
            try:
                out: list[envelope.OutboxMessage] = []
                for record in reader.read(self.settings.outbox, box.partition):
                    if record.key == vm.encode():
                        out.extend(outbox_messages_of(envelope.decode(record.value)))
                return out
            finally:
                reader.close()

        async def run() -> None:
            try:
                messages = await asyncio.to_thread(read)
                box.floor = 0
                for m in messages:
                    if m.seq not in box.messages:
                        box.messages[m.seq] = OutboxRow(vm, m.seq, m.event_seq, m.message)
                        box.high = max(box.high, m.seq)
            finally:
                box.refilling = False
            for cb in self._callbacks:
                cb({vm})

        asyncio.get_running_loop().create_task(run(), name=f"hvdm-outbox-refill-{vm}")
