"""Re-decide an inbox from the beginning, exactly as ``EngineRunner`` did.

The audit's whole claim rests on this module running the runner's step (``dm_engine.step``): each
record goes to its VM; a broadcast record (vm ``*``, the clock ticks) goes to every VM that has
appeared in the inbox so far, in sorted order; a VM appears at its first inbox record that decides
something, from ``initial_state``, and leaves at ``VmForgotten`` -- the runner's rules (``step``),
which matter once ``retention_ticks`` makes ticks decide for disconnected VMs.

An input the engine rejected (``InputRejected``) is rejected here too. The step then needs the
VM's state from before that input; the replay takes it from the *recorded* events before it (the
``rebuild`` given by ``replay_inbox``): if those differ from what the replay decided, the audit
has already found the divergence that matters.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

from ..dm_engine import inputs as inp
from ..dm_engine.config import EngineConfig
from ..dm_engine.decider import initial_state, tick_is_quiet
from ..dm_engine.events import Event
from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.limits import MAX_RECORD_INT, MIN_RECORD_INT
from ..dm_engine.records import event_from_stored, event_json, stored_event
from ..dm_engine.state import VmState
from ..dm_engine.step import (
    EncodeEvent,
    Rebuild,
    Record,
    Unreadable,
    fold_recorded,
    read_input,
    read_stored,
    step,
)
from ..event_log.cut import CutBase
from ..event_log.sqlite_log import InboxRow
from .compacted import start_state
from .reader import LogReader, stored_events, stored_inbox

#: Called with the fraction of the inbox read so far (a progress bar).
Progress = Callable[[float], None]


class ReplayError(Exception):
    """An inbox record could not be re-decided (unreadable record, or the engine raised)."""


class Decision(NamedTuple):
    """The events one VM decided for one inbox record (possibly none).

    A named tuple, not a frozen dataclass: one is made per VM per inbox record, and a named tuple is
    several times cheaper to build."""

    vm: str
    inbox_pos: int
    tick: int
    events: Sequence[Event]
    #: Each event as the step encoded it for the log (``InboxReplay.encode_event``): its stored
    #: form on a log that keeps compact forms, else its canonical JSON.
    records: Sequence[str | bytes] = ()


def read_stored_input(record: str | bytes | dict[str, Any], tick: int) -> Record:
    """The input an inbox row holds, from its stored form (``reader.stored_inbox``): text or raw
    guest bytes as the runner reads them (``step.read_stored``), a reader's parsed dict as
    ``read_input`` reads it."""
    if type(record) is bytes and type(tick) is int and MIN_RECORD_INT <= tick <= MAX_RECORD_INT:
        return inp.GuestMessage(tick=tick, raw=record)  # ``read_stored``'s first case, inline (hot)
    if isinstance(record, dict):
        return read_input(record)
    return read_stored(record, tick)


class InboxReplay:
    """Per-VM states, fed inbox rows in order.

    ``only_vm`` / ``only_vms`` restrict the work to some VMs: VMs are independent, so skipping the
    others changes nothing for them.
    """

    def __init__(
        self,
        config: EngineConfig,
        only_vm: str | None = None,
        only_vms: Collection[str] | None = None,
        *,
        rebuild: Callable[[str, int], VmState] | None = None,
        encode_event: EncodeEvent = event_json,
    ) -> None:
        self.config = config
        #: How the step encodes each event (``Decision.records``): ``records.stored_event`` where the
        #: log keeps compact forms, so a decided record compares with a stored row as it is.
        self.encode_event = encode_event
        selected = set(only_vms or ())
        if only_vm is not None:
            selected.add(only_vm)
        self.only_vms: frozenset[str] | None = frozenset(selected) if selected else None
        self.states: dict[str, VmState] = {}
        #: VMs in sorted order, maintained on insert so a tick costs O(VMs), not O(VMs log VMs).
        self._order: list[str] = []
        self.records = 0
        self._rebuild = rebuild
        self._pos = 0

    def start_from(self, states: dict[str, VmState]) -> None:
        """Begin from these states (a compacted log's cut, ``services.audit.compacted``), as the
        runner does after recovering from snapshots."""
        for vm, state in states.items():
            if self.only_vms is None or vm in self.only_vms:
                self.states[vm] = state
                self._appear(vm)

    def _appear(self, vm: str) -> None:
        i = bisect.bisect_left(self._order, vm)
        if i == len(self._order) or self._order[i] != vm:
            self._order.insert(i, vm)

    def _rebuilder(self, pos: int) -> Rebuild:
        def rebuild(vm: str) -> VmState:
            if self._rebuild is None:
                raise ReplayError(f"engine rejected inbox pos {pos} for {vm} and this replay cannot rebuild it")
            return self._rebuild(vm, pos)

        return rebuild

    def _rebuild_current(self, vm: str) -> VmState:
        """``_rebuilder(pos)`` for the record being fed (only called when a step fails: one bound
        method for the whole replay instead of a closure per record)."""
        return self._rebuilder(self._pos)(vm)

    def feed(self, row: InboxRow) -> list[Decision]:
        """Deliver one inbox row; returns one decision per VM it reached."""
        return self.feed_record(row.pos, row.vm, row.tick, read_input(row.record))

    def feed_record(self, pos: int, vm: str, tick: int, record: Record) -> list[Decision]:
        """``feed`` for an inbox row already read into its input (``read_stored_input``).

        A tick goes only to the VMs it is not quiet for (``tick_is_quiet``): for the others the
        step would decide nothing and change nothing, so the result is the same, without one empty
        decision per VM per tick.
        """
        self.records += 1
        self._pos = pos
        order: Sequence[str] = self._order
        if vm == ALL_VMS:
            if isinstance(record, Unreadable):
                raise ReplayError(f"inbox record at pos {pos} is not a valid input: {record.error!r}")
            if type(record) is inp.Tick:
                states, config = self.states, self.config
                order = [v for v in order if not tick_is_quiet(states[v], config)]
                if not order:
                    return []
        elif self.only_vms is not None and vm not in self.only_vms:
            return []
        results = step(
            self.states,
            vm,
            record,
            self.config,
            inbox_pos=pos,
            rebuild=self._rebuild_current,
            order=order,
            encode_event=self.encode_event,
        )
        if len(self._order) != len(self.states):
            # A VM appeared, or was forgotten (``step.forgets``), exactly as in the runner: ticks
            # reach the same VMs (with ``retention_ticks`` that decides events).
            if vm in self.states and vm != ALL_VMS:
                self._appear(vm)
            self._order = [v for v in self._order if v in self.states]
        return [Decision(r.vm, pos, tick, r.events, r.records) for r in results]


def recorded_state(log: LogReader, start: Callable[[str], VmState] = initial_state) -> Callable[[str, int], VmState]:
    """A VM's state before inbox position ``pos``, folded from the events the log recorded on top
    of ``start`` (its state at a compacted log's cut)."""

    def rebuild(vm: str, pos: int) -> VmState:
        state = start(vm)
        for _vm, _seq, inbox_pos, record in stored_events(log, vm):
            if inbox_pos >= pos:
                break
            state = fold_recorded(state, event_from_stored(record))
        return state

    return rebuild


def replay_inbox(
    log: LogReader,
    config: EngineConfig,
    until_pos: int,
    only_vm: str | None = None,
    *,
    only_vms: Collection[str] | None = None,
    ticks: array[int] | None = None,
    progress: Progress | None = None,
    start: CutBase | None = None,
) -> tuple[InboxReplay, Iterator[Decision]]:
    """A replay and the stream of its decisions over inbox positions ``1..until_pos``.

    ``ticks``, if given, is filled with the tick of every inbox position read (index = position),
    which is how an audit places events, which carry no time of their own, on the clock.
    """
    # A log whose reader hands out stored forms (the embedded log) is compared in those forms.
    encode = stored_event if hasattr(log, "iter_stored_events") else event_json
    if start is None:
        replay = InboxReplay(config, only_vm, only_vms, rebuild=recorded_state(log), encode_event=encode)
    else:  # a compacted log: from the states at the cut (``services.audit.compacted``)
        rebuild = recorded_state(log, partial(start_state, start))
        replay = InboxReplay(config, only_vm, only_vms, rebuild=rebuild, encode_event=encode)
        replay.start_from({vm: s for vm in start.snapshots if (s := start.state(vm)) is not None})

    def decisions() -> Iterator[Decision]:
        every = max(1, until_pos // 200)
        feed, read = replay.feed_record, read_stored_input
        for pos, vm, tick, record in stored_inbox(log, 0, until_pos):
            if ticks is not None:
                ticks[pos] = tick
            if progress is not None and pos % every == 0:
                progress(pos / until_pos)
            yield from feed(pos, vm, tick, read(record, tick))
        if progress is not None:
            progress(1.0)

    return replay, decisions()
