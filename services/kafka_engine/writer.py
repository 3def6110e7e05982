"""The worker's writer: each fetch's records written in order, its inputs acknowledged once durable.

Why this order (effectively-once without transactions): for each fetch the writer sends the
outbox records and waits until the broker has them all, then the events records and waits again,
then any checkpoint's snapshots and marker, and only then acknowledges the fetch's offsets (Faust
commits acknowledged offsets only). A crash therefore leaves, for each input after the committed
offset, either its events record (the input is skipped when replayed) or not (it is re-decided,
identically, and its records written again). Outbox before events means no recorded event can
lack its host messages; a duplicate message has the same outbox seq, and the gateway delivers each
seq once. The writes of fetch N overlap the decisions of fetch N+1 (``pipeline`` fetches queue at
most); writes happen in fetch order, so acknowledging N never covers an unwritten input.

Ordering without idempotence (QUIRK(tansu)): aiokafka keeps one produce request in flight per
broker, so a partition's batches arrive in send order; a failed send ends the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from .checkpoints import CheckpointStep, write_checkpoint
from .crash import crash
from .faust_batch import aiokafka_producer
from .ownership import OwnedPartition
from .settings import KafkaSettings

log = logging.getLogger("hvdm.kafka_worker")


@dataclass(slots=True)
class WriteJob:
    """The records one fetch produced, written in order by ``Writer``."""

    #: (partition, key, value) per topic, in decision order.
    outbox: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    events: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    #: Steps of running checkpoint rounds.
    checkpoints: list[CheckpointStep] = field(default_factory=list)
    #: (topic-partition, first offset, last offset, owner) to acknowledge once all is durable.
    acks: list[tuple[Any, int, int, OwnedPartition]] = field(default_factory=list)
    #: Per partition number, the owner(s) whose decisions the events records are.
    events_parts: dict[int, list[OwnedPartition]] = field(default_factory=dict)


def merge_jobs(jobs: list[WriteJob]) -> WriteJob:
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


class Writer:
    """Writes queued jobs through the Faust app's producer and acknowledges through its consumer."""

    def __init__(self, app: Any, settings: KafkaSettings, owned: dict[int, OwnedPartition], pipeline: int) -> None:
        self.app = app
        self.settings = settings
        #: The worker's owned partitions (an input revoked since its fetch is not acknowledged).
        self.owned = owned
        self.pipeline = pipeline
        self._jobs: asyncio.Queue[WriteJob] | None = None
        self._task: asyncio.Task[None] | None = None

    async def put(self, job: WriteJob) -> None:
        """Queue ``job``; waits while ``pipeline`` jobs are queued (back-pressure on the fetcher)."""
        if self._jobs is None:
            self._jobs = asyncio.Queue(self.pipeline)
            self._task = asyncio.create_task(self._run(self._jobs), name="hvdm-writer")
        await self._jobs.put(job)

    async def wait_idle(self) -> None:
        if self._jobs is not None:
            await self._jobs.join()

    async def _run(self, jobs: asyncio.Queue[WriteJob]) -> None:
        """Write the jobs' records in order and acknowledge their inputs once they are durable.

        Each write sends one producer batch per partition and waits for the batches, never for
        single records. Jobs that queued up while the previous step was in flight are written
        together (a group commit): their order is kept, and a backlog costs round trips per step,
        not per fetch.
        """
        settings = self.settings
        while True:
            batch = [await jobs.get()]
            while not jobs.empty():
                batch.append(jobs.get_nowait())
            job = batch[0] if len(batch) == 1 else merge_jobs(batch)
            try:
                if job.outbox:
                    await self.send_records(settings.outbox, job.outbox)
                if job.events:
                    ends = await self.send_records(settings.events, job.events)
                    for number, end in ends.items():
                        for part in job.events_parts[number]:
                            part.events_end = max(part.events_end, end)
                for step in job.checkpoints:
                    await write_checkpoint(self.send_records, settings.snapshots, step)
                owned = self.owned
                consumer: Any = self.app.consumer
                for tp, first, last, part in job.acks:
                    if owned.get(part.number) is part:  # revoked since: the new owner decides again
                        consumer.ack_range(tp, first, last)
            except asyncio.CancelledError:
                raise
            except BaseException:
                log.exception("event=write_failed outbox=%d events=%d", len(job.outbox), len(job.events))
                crash()
            finally:
                for _ in batch:
                    jobs.task_done()

    async def send_records(self, topic: str, records: list[tuple[int, bytes, bytes]]) -> dict[int, int]:
        """Send ``(partition, key, value)`` records as producer batches (one per partition, more if
        a batch fills up) and wait until the broker has them all; returns the last offset written
        per partition. Records of one partition keep their order."""
        producer = aiokafka_producer(self.app)
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
