"""Follow the events topic and fold it into per-VM states: the fleet view of the Kafka deployment.

Why a projection and not a query to the workers: the events topic is the source of truth, and a
reader that folds it with the same sequence rule as recovery (``PartitionEngine.replay``: apply a
record only if its first seq is the VM's next one) sees exactly the state the owning worker has,
no matter how many times records were written. ``hvdm run --broker`` uses it for its progress
table and demo script, the tests to compare runs, and the audit reader for its fold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..dm_engine.config import EngineConfig
from ..dm_engine.records import dumps
from ..dm_engine.state import VmState
from . import envelope
from .envelope import EnvelopeError, EventsRecord
from .kafka_log import PartitionReader
from .partition import PartitionEngine
from .settings import KafkaSettings


@dataclass(slots=True)
class EventsProjection:
    settings: KafkaSettings
    partitions: int
    #: Keep every applied event (canonical JSON) per VM, with its inbox position, for comparisons.
    keep_events: bool = False
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)
    events: dict[str, list[tuple[int, int, int, str]]] = field(default_factory=dict)
    records_read: int = 0

    def __post_init__(self) -> None:
        for p in range(self.partitions):
            self.engines[p] = PartitionEngine(p, EngineConfig())
            self.positions[p] = 0

    def catch_up(self, reader: PartitionReader) -> set[str]:
        """Read every partition to its fetch high-watermark; returns the VMs that changed.

        Blocking (kafka-python): async callers run it in a thread.
        """
        changed: set[str] = set()
        for record in reader.read_many(self.settings.events, dict(self.positions)):
            p = record.partition
            engine = self.engines[p]
            self.positions[p] = record.offset + 1
            self.records_read += 1
            try:
                rec = EventsRecord.from_value(envelope.decode(record.value))
            except EnvelopeError:
                continue
            if engine.replay(rec):
                changed.add(rec.vm)
                if self.keep_events:
                    rows = self.events.setdefault(rec.vm, [])
                    for i, data in enumerate(rec.events):
                        rows.append((rec.seq + i, rec.partition, rec.offset, dumps(data)))
        return changed

    @property
    def states(self) -> dict[str, VmState]:
        return {vm: c.state for engine in self.engines.values() for vm, c in engine.vms.items()}

    def event_log(self) -> dict[str, list[str]]:
        """Per VM, its events as canonical JSON in seq order (needs ``keep_events``)."""
        return {vm: [r[3] for r in rows] for vm, rows in sorted(self.events.items())}
