"""Which inbox partitions this worker owns, from assignment (and recovery) to revocation.

Why parked, not dropped: an eager rebalance revokes every partition of every member, and a
partition that comes straight back to the same worker keeps its state (nobody else can have owned
it in between: a partition is assigned only after its previous owner revoked it), so only moved
partitions pay a recovery (``recovery``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..dm_engine.config import EngineConfig
from .crash import crash
from .partition import PartitionEngine
from .recovery import recover_partition
from .settings import KafkaSettings

log = logging.getLogger("hvdm.kafka_worker")


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


class Ownership:
    """The owned and parked partitions of one worker, driven by Faust's rebalance signals."""

    def __init__(
        self, settings: KafkaSettings, config: EngineConfig, on_ready: Callable[[OwnedPartition], None]
    ) -> None:
        self.settings = settings
        self.config = config
        #: Called once a partition is recovered (the worker starts its ticker there).
        self.on_ready = on_ready
        self.owned: dict[int, OwnedPartition] = {}
        #: Revoked by a rebalance that has not assigned yet (see ``on_revoked``).
        self.parked: dict[int, OwnedPartition] = {}
        #: Partitions were assigned at least once (the worker has joined the group): /-/ready.
        self.assigned_once = False

    async def on_assigned(self, sender: Any, assigned: Iterable[Any], **_: Any) -> None:
        self.assigned_once = True
        mine = {tp.partition for tp in assigned if tp.topic == self.settings.inbox}
        for number in sorted(mine - set(self.owned)):
            parked = self.parked.pop(number, None)
            if parked is not None:
                # Still exact (see the module docstring). Faust re-reads from the committed
                # offset; the engine skips what it has already decided (``next_offset``).
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

    async def on_revoked(self, sender: Any, revoked: Iterable[Any], **_: Any) -> None:
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
            crash()
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
        self.on_ready(part)

    async def wait_ready(self, part: OwnedPartition) -> bool:
        """Wait until ``part`` is recovered; False if it was dropped or replaced meanwhile."""
        if part.ready.is_set():
            return True
        ready = asyncio.ensure_future(part.ready.wait())
        gone = asyncio.ensure_future(part.gone.wait())
        await asyncio.wait((ready, gone), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        gone.cancel()
        return not part.gone.is_set() and part is self.owned.get(part.number)
