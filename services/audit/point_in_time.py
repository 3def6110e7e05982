"""The state of one VM at a chosen point of its log, for incident analysis (``hvdm replay``).

A point is a prefix of the inbox: "position P" is every record up to P, and "tick N" is every
record before the first one stamped later than N. A prefix, not a filter on ticks, because only a
prefix is a state the engine was actually in.

By default the state is the fold of the *recorded* events, the source of truth for what the
service believed. ``from_inbox`` re-decides the inbox instead, which is what to compare against
when an audit reports that the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..dm_engine.decider import initial_state
from ..dm_engine.records import event_from_dict, loads
from ..dm_engine.state import VmState
from ..dm_engine.step import fold_recorded
from . import compacted
from .logfile import LogError, engine_config
from .reader import LogReader
from .replay import ReplayError, replay_inbox
from .report import accounting, version_text

EVENTS_SOURCE = "events"
INBOX_SOURCE = "inbox"


@dataclass(frozen=True, slots=True)
class PointInTime:
    vm: str
    #: Last inbox position included (0: before the first record).
    until_pos: int
    #: Tick of that inbox record (None at position 0).
    tick: int | None
    requested_tick: int | None
    source: str
    #: Events folded (source ``events``) or decided (source ``inbox``) for this VM.
    events: int
    last_seq: int
    state: VmState

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ranges as ``[start, count]`` lists, vDIMMs and counters from the snapshot."""
        state = self.state
        return {
            "vm": self.vm,
            "until_pos": self.until_pos,
            "tick": self.tick,
            "requested_tick": self.requested_tick,
            "source": self.source,
            "events": self.events,
            "last_seq": self.last_seq,
            "protocol_state": state.protocol.value,
            "protocol_version": version_text(state.version),
            "accounting": {
                **accounting(state),
                "boot_pages": state.boot_pages,
                "hot_added_pages": state.hot_added_pages,
                "ballooned_pages": state.ballooned_pages,
                "current_pages": state.current_pages,
                "target_pages": state.target_pages,
            },
            "state": state.to_snapshot(),
        }


def _cut(log: LogReader, consumed: int, until_pos: int | None, until_tick: int | None) -> tuple[int, int | None]:
    """(last inbox position included, its tick), never past what the engine consumed."""
    if until_tick is not None:
        pos, tick = 0, None
        for row in log.iter_inbox(0, consumed):
            if row.tick > until_tick:
                break
            pos, tick = row.pos, row.tick
        return pos, tick
    pos = consumed if until_pos is None else max(0, min(until_pos, consumed))
    if pos == 0:
        return 0, None
    rows = log.read_inbox(pos - 1, 1)
    return pos, rows[0].tick if rows else None


def state_at(
    log: LogReader,
    vm: str,
    *,
    until_pos: int | None = None,
    until_tick: int | None = None,
    from_inbox: bool = False,
) -> PointInTime:
    """Rebuild ``vm`` after inbox position ``until_pos`` or tick ``until_tick`` (default: the end)."""
    if until_pos is not None and until_tick is not None:
        raise ValueError("give until_pos or until_tick, not both")
    if vm not in log.vms() and next(log.iter_events(vm), None) is None:
        raise LogError(f"vm {vm!r} does not appear in the log")
    consumed = log.consumed_position()
    pos, tick = _cut(log, consumed, until_pos, until_tick)
    base = compacted.base_of(log)
    if base is not None and until_tick is not None and pos < base.cut.pos <= consumed and until_tick >= base.cut.tick:
        pos, tick = base.cut.pos, base.cut.tick  # no record after the cut is that early: the state at the cut
    compacted.check_position(
        base, pos, "inbox position" if until_tick is None else f"tick {until_tick}: inbox position"
    )
    if from_inbox:
        config, _ = engine_config(log)
        replay, decisions = replay_inbox(log, config, pos, only_vm=vm, start=base)
        decided = sum(len(d.events) for d in decisions)
        state = replay.states.get(vm) or initial_state(vm)
        return PointInTime(vm, pos, tick, until_tick, INBOX_SOURCE, decided, decided, state)
    state = compacted.start_state(base, vm)
    count = 0
    last_seq = 0 if base is None else base.seqs.get(vm, 0)
    for row in log.iter_events(vm):
        if row.inbox_pos > pos:
            break
        try:
            state = fold_recorded(state, event_from_dict(loads(row.record)))
        except Exception as exc:  # a corrupt row: say which, instead of a traceback
            raise ReplayError(f"recorded event {vm} seq {row.seq} cannot be folded: {exc!r}") from None
        count += 1
        last_seq = row.seq
    return PointInTime(vm, pos, tick, until_tick, EVENTS_SOURCE, count, last_seq, state)
