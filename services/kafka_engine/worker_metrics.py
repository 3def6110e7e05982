"""What a Kafka engine worker exports: the VMs of the partitions it owns now, and its own progress.

Why per owned partition: each VM's state lives on exactly one worker (the owner of its inbox
partition), so when every worker exports only its ready partitions' VMs, a fleet-wide ``sum``
counts each VM once. A partition that is revoked, parked by a rebalance or still recovering is
not exported, so while partitions move a VM may be missing for a scrape or two, but it is never
exported by two workers at once (the next owner starts exporting it only after recovery, which
begins after the previous owner gave it up).

The view is read on the worker's loop (``HvdmCollector`` calls it there), like the embedded
runner's states.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..dm_engine.state import VmState

if TYPE_CHECKING:
    from .ownership import OwnedPartition
    from .worker import EngineWorker


class WorkerView:
    """``metrics.collector.EngineView`` over one worker's ready partitions."""

    def __init__(self, worker: EngineWorker) -> None:
        self._worker = worker
        #: VM -> its partition's clock tick and when it was read (filled by ``states``, used by
        #: ``wall_of_tick`` in the same scrape).
        self._vm_clock: dict[str, tuple[int, float]] = {}

    def _ready(self) -> list[OwnedPartition]:
        return [p for p in self._worker.owned.values() if p.ready.is_set() and p.engine is not None]

    @property
    def states(self) -> Mapping[str, VmState]:
        out: dict[str, VmState] = {}
        clocks: dict[str, tuple[int, float]] = {}
        now = time.time()
        for part in self._ready():
            engine = part.engine
            assert engine is not None
            tick = engine.clock.now if engine.clock is not None else None
            for vm, cursor in engine.vms.items():
                out[vm] = cursor.state
                if tick is not None:
                    clocks[vm] = (tick, now)
        self._vm_clock = clocks
        return out

    @property
    def consumed(self) -> int:
        """Inbox records this worker has processed since it started (a counter: partitions that
        move away do not take their share back)."""
        return self._worker.records_processed

    def lag(self) -> int:
        """Records in the owned partitions after the last one processed (the fetch high-watermark
        minus the engine's next offset)."""
        worker = self._worker
        consumer: Any = worker.app.consumer
        total = 0
        try:
            assignment = consumer.assignment()
        except Exception:  # not started yet, or between two generations
            return 0
        for tp in assignment:
            part = worker.owned.get(tp.partition) if tp.topic == worker.settings.inbox else None
            if part is None or part.next_offset is None:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:
                continue
            if high is not None:
                total += max(0, int(high) - part.next_offset)
        return total

    def events_since_snapshot(self) -> int:
        """Inbox records processed since each owned partition's last checkpoint round began (what a
        fail-over would re-read on top of the snapshots; records, the unit a partition counts)."""
        return sum(p.since_checkpoint for p in self._ready())

    def wall_of_tick(self, vm: str, tick: int) -> float | None:
        """Unix time of ``tick`` on ``vm``'s partition clock: ticks are ``tick_seconds / speed`` wall
        seconds apart and the clock's last tick is now."""
        seen = self._vm_clock.get(vm)
        if seen is None:
            return None
        now_tick, now = seen
        worker = self._worker
        return now - max(0, now_tick - tick) * worker.config.tick_seconds / worker.settings.speed

    def ready(self) -> bool:
        """Joined the group (partitions assigned at least once) and every owned partition recovered."""
        worker = self._worker
        return worker.assigned_once and all(p.ready.is_set() for p in worker.owned.values())
