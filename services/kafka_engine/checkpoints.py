"""Rolling checkpoints of an owned partition: snapshots a few VMs per fetch, then a marker.

Why rolling: recovery reads the latest snapshot per VM and the events topic from the last
checkpoint marker on, so its cost is bounded by the checkpoint interval, not the log's age. A
round starts once a partition has processed ``snapshot_every`` inbox records and at least
``CHECKPOINT_VM_FACTOR`` times as many records as it has changed VMs (with many VMs a checkpoint
then costs at most 1/8 more records). The round notes the events offset ``E`` it starts at and the
VMs changed so far, snapshots them a few per fetch (at most a quarter of the fetch's records, so
10,000 VMs never stall a partition for one big checkpoint), and writes the marker naming ``E``
after the last of them. That marker is valid: a VM that was clean when the round started has a
snapshot covering every event before ``E``; one that was changed has a snapshot taken during the
round, and everything it decided after that is at or after ``E``. Snapshots from an unfinished
round are newer than the last marker, which only makes recovery read a few events records it then
skips by their seq.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..dm_engine.inputs import ALL_VMS
from . import envelope
from .envelope import checkpoint_value
from .ownership import OwnedPartition
from .partition import PartitionEngine

log = logging.getLogger("hvdm.kafka_worker")

#: A checkpoint waits for at least this many inbox records per VM it would snapshot.
CHECKPOINT_VM_FACTOR = 8

#: Writes ``(partition, key, value)`` records to a topic and waits until they are durable.
SendRecords = Callable[[str, list[tuple[int, bytes, bytes]]], Awaitable[dict[int, int]]]


@dataclass(slots=True)
class CheckpointStep:
    """What one fetch adds to a partition's running round: snapshots, and the marker if it ends."""

    part: OwnedPartition
    snapshots: list[dict[str, Any]]
    marker: dict[str, Any] | None


def checkpoint_step(part: OwnedPartition, engine: PartitionEngine, count: int, every: int) -> CheckpointStep | None:
    """Start a round when one is due, and snapshot the next few VMs of a running one (``count``:
    the records this fetch processed)."""
    if part.round_pending is None:
        if part.since_checkpoint < max(every, CHECKPOINT_VM_FACTOR * len(engine.dirty)):
            return None
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
    return CheckpointStep(part, snaps, marker)


async def write_checkpoint(send: SendRecords, snapshots_topic: str, step: CheckpointStep) -> None:
    """A step's snapshots, then (once durable) its marker if the round ends here; the events the
    snapshots reflect are already durable (written earlier in the same write job)."""
    number = step.part.number
    if step.snapshots:
        await send(snapshots_topic, [(number, s["vm"].encode(), envelope.encode(s)) for s in step.snapshots])
    marker = step.marker
    if marker is not None:
        await send(snapshots_topic, [(number, ALL_VMS.encode(), envelope.encode(marker))])
        log.info(
            "event=checkpoint partition=%d events_offset=%d inbox_offset=%d",
            number,
            marker["events_offset"],
            marker["inbox_offset"],
        )
