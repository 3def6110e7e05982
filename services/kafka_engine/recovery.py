"""Rebuilding a partition's VMs when a worker is assigned it.

Why from our own topics: the latest snapshot per VM (compaction keeps it; the sequence number
decides between duplicates), then the events topic from the last checkpoint marker to its
high-watermark, so the cost is bounded by the checkpoint interval, not the log's age. No Faust
table is used (QUIRK(tansu), see ``kafka_log``). Blocking (kafka-python); the worker runs it in a
thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ..dm_engine.config import EngineConfig
from ..dm_engine.inputs import ALL_VMS
from . import envelope
from .envelope import EnvelopeError, EventsRecord
from .kafka_log import PartitionReader
from .partition import PartitionEngine
from .settings import KafkaSettings


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
    """Rebuild a partition's VMs: snapshots, then events from the last checkpoint to the end."""
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


def last_tick_before(settings: KafkaSettings, partition: int, offset: int) -> int | None:
    """The last Tick in the partition's inbox before ``offset`` (the engine's clock starts there)."""
    reader = PartitionReader(settings)
    try:
        return reader.last_tick_before(partition, offset)
    finally:
        reader.close()
