"""One inbox partition's engine, with no I/O: recovery from records, dedupe, ticks, decisions.

Why a pure class: everything that makes the Kafka deployment effectively-once lives in the rules
below, and they are easier to trust when a test can feed them records without a broker. The
Faust worker (``worker.py``) only moves bytes between the topics and this object.

The rules:

* **Atomic per input.** All the events one input causes for one VM go into ONE events record,
  stamped with the input's inbox position. A record exists whole or not at all.
* **Dedupe by inbox position.** A VM's cursor remembers ``applied``, the inbox offset of its last
  recorded input. An input at or before it is skipped: its effects are in the state already (or
  it had none). An input after it is decided, from the same state and the same stamped tick, so a
  re-decided input whose record was lost produces the same record again (the core is
  deterministic).
* **Sequence numbers pick the records to fold.** Recovery applies an events record only if its
  first ``seq`` is the VM's next one. A duplicate (``seq`` too low: a record written twice, by a
  re-decision or by a worker that lost its partition without noticing) and an orphan (``seq`` too
  high: written after an earlier record of the same VM was lost -- possible only if a send failed,
  after which the worker exits before anything is committed) are both ignored; the orphan's input
  is re-decided and its record written again, in order.
* **The partition clock.** Ticks are inbox records of the partition (key ``*``). The clock at an
  offset is the number of the last Tick record before it (``PartitionClock``); every other input is
  stamped with it, whatever tick its publisher wrote. A Tick is delivered to the partition's VMs
  only if it moves the clock forward, so a repeated or stale tick (two tickers overlapping
  briefly during a fail-over) decides nothing. All of this depends on record order alone, so a
  replay -- by a worker taking over, or by an audit -- stamps every input exactly as before.
* **Ticks reach the partition's VMs**: every VM this engine holds a state for (it had an input in
  the partition, or recovery found events for it), in sorted order. A VM recovery knows although
  its first input comes later skips the earlier ticks by the dedupe rule, and a tick to a VM in its
  initial state decides nothing, so this is the embedded runner's rule restricted to a partition.
* **One step.** Each VM's reaction to an input is ``dm_engine.step.step_vm``, as in the embedded
  runner and the audit: an input that makes the engine raise is recorded as ``InputRejected`` and
  the VM carries on from its state before that input, rebuilt from the last snapshot this engine
  took or restored (``VmCursor.base``) and the events folded since.
* **The outbox is a projection.** Each events record's host messages (``outbox_messages``) get
  per-VM outbox sequence numbers counted from the VM's events, so a re-decided input re-creates
  the same outbox record and the gateway drops what it already delivered.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ..dm_engine.config import EngineConfig
from ..dm_engine.decider import evolve, initial_state
from ..dm_engine.events import Event
from ..dm_engine.inputs import ALL_VMS, Input, Tick
from ..dm_engine.records import event_from_dict, event_json, input_from_dict, to_dict
from ..dm_engine.state import VmState
from ..dm_engine.step import step_vm, targets
from .envelope import (
    EnvelopeError,
    EventsRecord,
    OutboxMessage,
    events_value,
    inbox_entry,
    outbox_value,
    snapshot_value,
    tick_number,
)


class PartitionClock:
    """The clock of one inbox partition: the number of the last Tick record read.

    >>> clock = PartitionClock(None)
    >>> clock.on_tick(5), clock.on_tick(5), clock.on_tick(6), clock.now
    (True, False, True, 6)
    """

    __slots__ = ("last",)

    def __init__(self, last: int | None) -> None:
        self.last = last

    @property
    def now(self) -> int:
        return 0 if self.last is None else self.last

    def on_tick(self, number: int) -> bool:
        """Read a Tick record; True if it moves the clock forward (and so is delivered)."""
        forward = self.last is None or number > self.last
        self.last = number
        return forward


@dataclass(slots=True)
class VmCursor:
    """One VM's state and where its recorded history ends."""

    state: VmState
    seq: int = 0  # last recorded event seq
    outbox_seq: int = 0  # last outbox seq
    applied: int = -1  # inbox offset of the last input with recorded events
    #: The last snapshot taken or restored (None: the initial state) and the events folded since:
    #: what rebuilding the state before a rejected input needs.
    base: dict[str, Any] | None = None
    since: list[Event] = field(default_factory=list)

    def rebuild(self) -> VmState:
        state = initial_state(self.state.vm_id) if self.base is None else VmState.from_snapshot(self.base)
        for event in self.since:
            evolve(state, event)
        return state


@dataclass(frozen=True, slots=True)
class Decision:
    """What one inbox record did to one VM: the records to write and the events behind them."""

    vm: str
    partition: int
    offset: int
    tick: int
    events: list[Event]
    #: Sequence number of the first event, and the VM's last outbox seq after these events.
    seq: int
    outbox_seq: int
    outbox: dict[str, Any] | None
    #: ``event_json`` of each event, as the step encoded them.
    records: Sequence[str] = ()

    @property
    def events_record(self) -> EventsRecord:
        return EventsRecord(
            vm=self.vm,
            partition=self.partition,
            offset=self.offset,
            seq=self.seq,
            tick=self.tick,
            outbox_seq=self.outbox_seq,
            events=tuple(to_dict(e) for e in self.events),
        )

    def events_value(self) -> bytes:
        """The events record as written to the topic (``envelope.events_value``)."""
        return events_value(
            self.vm,
            self.partition,
            self.offset,
            self.seq,
            self.tick,
            self.outbox_seq,
            list(self.records) if self.records else [event_json(e) for e in self.events],
        )


@dataclass(slots=True)
class PartitionEngine:
    partition: int
    config: EngineConfig
    vms: dict[str, VmCursor] = field(default_factory=dict)
    #: None until the worker has looked up the last Tick before its first record (``set_clock``).
    clock: PartitionClock | None = None
    #: VMs whose state changed since the last checkpoint.
    dirty: set[str] = field(default_factory=set)
    #: Inbox offset of the last record processed (-1: none yet).
    position: int = -1
    ignored_records: int = 0

    # ------------------------------------------------------------------ recovery
    def _cursor(self, vm: str) -> VmCursor:
        cursor = self.vms.get(vm)
        if cursor is None:
            cursor = self.vms[vm] = VmCursor(initial_state(vm))
        return cursor

    def restore_snapshot(self, value: dict[str, Any]) -> None:
        """A snapshot record; the one with the highest seq per VM wins."""
        vm = value["vm"]
        current = self.vms.get(vm)
        if current is not None and current.seq >= int(value["seq"]):
            return
        self.vms[vm] = VmCursor(
            VmState.from_snapshot(value["state"]),
            seq=int(value["seq"]),
            outbox_seq=int(value["outbox_seq"]),
            applied=int(value["applied"]),
            base=value["state"],
        )

    def replay(self, record: EventsRecord) -> bool:
        """Fold one events record read back from the topic; False if it is a duplicate or orphan."""
        cursor = self._cursor(record.vm)
        if record.seq != cursor.seq + 1:
            self.ignored_records += 1
            return False
        state = cursor.state
        for data in record.events:
            event = event_from_dict(data)
            evolve(state, event)
            cursor.since.append(event)
        cursor.seq = record.last_seq
        cursor.outbox_seq = record.outbox_seq
        cursor.applied = record.offset
        return True

    def set_clock(self, last_tick: int | None) -> None:
        self.clock = PartitionClock(last_tick)

    # ------------------------------------------------------------------ processing
    def decide(self, offset: int, value: dict[str, Any]) -> list[Decision]:
        """Process the inbox record at ``offset``; returns one decision per VM that recorded events."""
        clock = self.clock
        if clock is None:
            raise RuntimeError("set_clock must be called before the first record")
        if offset <= self.position:
            return []  # the stream went back (re-delivery within one process): already seen
        self.position = offset
        try:
            vm, record = inbox_entry(value)
        except EnvelopeError:
            self.ignored_records += 1  # an envelope of another kind (a meta record?): not an input
            return []
        if vm == ALL_VMS:
            try:
                number = tick_number(record)
            except EnvelopeError:
                self.ignored_records += 1  # the audit reader (``audit_reader.LogCut``) skips it too
                return []
            if not clock.on_tick(number):
                return []
            tick = Tick(tick=number)
            out: list[Decision] = []
            for name in targets(self.vms, ALL_VMS):
                decision = self._decide_one(name, offset, tick, number)
                if decision is not None:
                    out.append(decision)
            return out
        now = clock.now
        try:
            stamped = input_from_dict({**record, "tick": now})
        except (KeyError, TypeError, ValueError):
            # Not an input this engine knows (a newer publisher?): skipping is the only safe choice,
            # and the audit's replay applies the same rule.
            self.ignored_records += 1
            return []
        decision = self._decide_one(vm, offset, stamped, now)
        return [] if decision is None else [decision]

    def _decide_one(self, vm: str, offset: int, record: Input, tick: int) -> Decision | None:
        cursor = self._cursor(vm)
        if offset <= cursor.applied:
            return None
        result = step_vm(vm, cursor.state, record, self.config, inbox_pos=offset, rebuild=lambda _: cursor.rebuild())
        cursor.state = result.state
        events = list(result.events)
        if not events:
            return None
        cursor.since.extend(events)
        first = cursor.seq + 1
        messages: list[OutboxMessage] = []
        for i, message in result.outbox:
            cursor.outbox_seq += 1
            messages.append(OutboxMessage(cursor.outbox_seq, first + i, message))
        cursor.seq = first + len(events) - 1
        cursor.applied = offset
        self.dirty.add(vm)
        outbox = outbox_value(vm, self.partition, offset, messages) if messages else None
        # step_vm encoded with its default, ``event_json``: the records are canonical JSON text.
        records = cast("Sequence[str]", result.records)
        return Decision(vm, self.partition, offset, tick, events, first, cursor.outbox_seq, outbox, records)

    # ------------------------------------------------------------------ checkpoints
    def take_snapshots(self, vms: list[str] | None = None) -> list[dict[str, Any]]:
        """Snapshot records for ``vms`` (default: every VM changed since its last snapshot); each
        VM snapshotted is clean again until its next decision."""
        out = []
        for vm in sorted(self.dirty) if vms is None else vms:
            c = self.vms[vm]
            image = c.state.to_snapshot()
            out.append(snapshot_value(vm, c.seq, c.outbox_seq, c.applied, image))
            c.base, c.since = image, []
            self.dirty.discard(vm)
        return out

    def fingerprint(self) -> dict[str, Any]:
        """Every VM's state as JSON, for tests comparing two engines."""
        return {vm: json.loads(json.dumps(c.state.to_snapshot())) for vm, c in sorted(self.vms.items())}
