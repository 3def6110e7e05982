"""The live rebalance loop: projection -> policy -> ``SetTarget`` inputs in the inbox.

The loop only appends to the inbox, like an operator's QMP ``balloon`` command, so the engine
stays the one place that decides what is sent to guests, and every rebalancing decision is in the
log for audits. Records are stamped with the engine's current tick (the service's ``last_tick``
meta, or the newest inbox record's tick), as ``EmbeddedService.submit`` stamps them: a record
stamped in the past would start transactions with old ticks and time them out at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..dm_engine.inputs import SetTarget
from ..dm_engine.records import to_dict
from ..event_log.sqlite_log import SqliteLog
from ..units import PAGE_SIZE
from .fleet_view import NO_TARGET, FleetView, Pages
from .policy import Policy
from .projection import FleetProjection, LiveLimits


@dataclass(frozen=True, slots=True)
class TargetWritten:
    vm: str
    target_bytes: int
    previous_target_bytes: int | None
    current_bytes: int
    demand_bytes: int | None
    inbox_pos: int
    tick: int

    def to_dict(self) -> dict[str, object]:
        return {
            "vm": self.vm,
            "target_bytes": self.target_bytes,
            "previous_target_bytes": self.previous_target_bytes,
            "current_bytes": self.current_bytes,
            "demand_bytes": self.demand_bytes,
            "inbox_pos": self.inbox_pos,
            "tick": self.tick,
        }


class LiveRebalancer:
    """One policy driving one log; ``step`` is one decision round."""

    def __init__(self, log: SqliteLog, policy: Policy, limits: LiveLimits | None = None) -> None:
        self.log = log
        self.policy = policy
        self.limits = limits or LiveLimits()
        self.projection = FleetProjection(log)
        self.rounds = 0

    def step(self) -> list[TargetWritten]:
        """Catch up with the log, decide, and append one ``SetTarget`` per re-targeted VM."""
        self.projection.catch_up()
        view = self.projection.view(self.limits)
        decided = self.policy.decide(view) if view.size else np.zeros(0, dtype=np.int64)
        self.rounds += 1
        return self._write(view, decided)

    def _write(self, view: FleetView, decided: Pages) -> list[TargetWritten]:
        tick = self.projection.last_tick()
        rows = []
        written = []
        for i in np.flatnonzero(decided != NO_TARGET).tolist():
            vm = view.vm_ids[i]
            target = int(decided[i]) * PAGE_SIZE
            rows.append((vm, tick, to_dict(SetTarget(tick=tick, target_bytes=target)), None))
            previous = int(view.target[i])
            demand = int(view.demand[i])
            written.append(
                (
                    vm,
                    target,
                    None if previous == NO_TARGET else previous * PAGE_SIZE,
                    int(view.current[i]) * PAGE_SIZE,
                    None if demand < 0 else demand * PAGE_SIZE,
                )
            )
        if not rows:
            return []
        last = self.log.append_inputs(rows)
        first = last - len(rows) + 1
        return [TargetWritten(*w, inbox_pos=first + k, tick=tick) for k, w in enumerate(written)]

    def run(
        self,
        interval_s: float,
        *,
        rounds: int | None = None,
        on_round: Callable[[list[TargetWritten]], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> int:
        """Decide every ``interval_s`` wall seconds, ``rounds`` times (None: until interrupted)."""
        done = 0
        while rounds is None or done < rounds:
            started = time.monotonic()
            written = self.step()
            if on_round is not None:
                on_round(written)
            done += 1
            if rounds is not None and done >= rounds:
                break
            sleep(max(0.0, interval_s - (time.monotonic() - started)))
        return done
