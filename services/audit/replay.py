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
from dataclasses import dataclass
from functools import partial

from ..dm_engine.config import EngineConfig
from ..dm_engine.decider import initial_state
from ..dm_engine.events import Event
from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.records import event_from_dict, loads
from ..dm_engine.state import VmState
from ..dm_engine.step import Rebuild, Unreadable, fold_recorded, read_input, step
from ..event_log.cut import CutBase
from ..event_log.sqlite_log import InboxRow
from .compacted import start_state
from .reader import LogReader

#: Called with the fraction of the inbox read so far (a progress bar).
Progress = Callable[[float], None]


class ReplayError(Exception):
    """An inbox record could not be re-decided (unreadable record, or the engine raised)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The events one VM decided for one inbox record (possibly none)."""

    vm: str
    inbox_pos: int
    tick: int
    events: Sequence[Event]


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
    ) -> None:
        self.config = config
        selected = set(only_vms or ())
        if only_vm is not None:
            selected.add(only_vm)
        self.only_vms: frozenset[str] | None = frozenset(selected) if selected else None
        self.states: dict[str, VmState] = {}
        #: VMs in sorted order, maintained on insert so a tick costs O(VMs), not O(VMs log VMs).
        self._order: list[str] = []
        self.records = 0
        self._rebuild = rebuild

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

    def feed(self, row: InboxRow) -> list[Decision]:
        """Deliver one inbox row; returns one decision per VM it reached."""
        self.records += 1
        record = read_input(row.record)
        if row.vm == ALL_VMS:
            if isinstance(record, Unreadable):
                raise ReplayError(f"inbox record at pos {row.pos} is not a valid input: {record.error!r}")
        else:
            if self.only_vms is not None and row.vm not in self.only_vms:
                return []
        results = step(
            self.states,
            row.vm,
            record,
            self.config,
            inbox_pos=row.pos,
            rebuild=self._rebuilder(row.pos),
            order=self._order,
        )
        if len(self._order) != len(self.states):
            # A VM appeared, or was forgotten (``step.forgets``), exactly as in the runner: ticks
            # reach the same VMs (with ``retention_ticks`` that decides events).
            if row.vm in self.states and row.vm != ALL_VMS:
                self._appear(row.vm)
            self._order = [v for v in self._order if v in self.states]
        return [Decision(r.vm, row.pos, row.tick, r.events) for r in results]


def recorded_state(log: LogReader, start: Callable[[str], VmState] = initial_state) -> Callable[[str, int], VmState]:
    """A VM's state before inbox position ``pos``, folded from the events the log recorded on top
    of ``start`` (its state at a compacted log's cut)."""

    def rebuild(vm: str, pos: int) -> VmState:
        state = start(vm)
        for row in log.iter_events(vm):
            if row.inbox_pos >= pos:
                break
            state = fold_recorded(state, event_from_dict(loads(row.record)))
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
    if start is None:
        replay = InboxReplay(config, only_vm, only_vms, rebuild=recorded_state(log))
    else:  # a compacted log: from the states at the cut (``services.audit.compacted``)
        replay = InboxReplay(config, only_vm, only_vms, rebuild=recorded_state(log, partial(start_state, start)))
        replay.start_from({vm: s for vm in start.snapshots if (s := start.state(vm)) is not None})

    def decisions() -> Iterator[Decision]:
        every = max(1, until_pos // 200)
        for row in log.iter_inbox(0, until_pos):
            if ticks is not None:
                ticks[row.pos] = row.tick
            if progress is not None and row.pos % every == 0:
                progress(row.pos / until_pos)
            yield from replay.feed(row)
        if progress is not None:
            progress(1.0)

    return replay, decisions()
