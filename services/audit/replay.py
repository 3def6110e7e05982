"""Re-decide an inbox from the beginning, exactly as ``EngineRunner`` did.

The audit's whole claim rests on this module reproducing the runner's delivery rules: each record
goes to its VM; a broadcast record (vm ``*``, the clock ticks) goes to every VM that has appeared
in the inbox so far, in sorted order; a VM appears at its first inbox record, with
``initial_state``. (A recovering runner also knows VMs whose first record it has not consumed yet,
but a tick to a VM in its initial state decides nothing and changes nothing, so the two rules
produce the same events.)
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

from services.audit.reader import LogReader
from services.dm_engine.config import EngineConfig
from services.dm_engine.decider import initial_state, process
from services.dm_engine.events import Event
from services.dm_engine.records import input_from_dict
from services.dm_engine.state import VmState
from services.event_log.sqlite_log import ALL_VMS, InboxRow

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
        self, config: EngineConfig, only_vm: str | None = None, only_vms: Collection[str] | None = None
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

    def _appear(self, vm: str) -> None:
        if vm not in self.states:
            self.states[vm] = initial_state(vm)
            bisect.insort(self._order, vm)

    def feed(self, row: InboxRow) -> list[Decision]:
        """Deliver one inbox row; returns one decision per VM it reached."""
        self.records += 1
        try:
            record = input_from_dict(row.record)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplayError(f"inbox record at pos {row.pos} is not a valid input: {exc!r}") from None
        if row.vm == ALL_VMS:
            targets: Sequence[str] = list(self._order)
        else:
            if self.only_vms is not None and row.vm not in self.only_vms:
                return []
            self._appear(row.vm)
            targets = (row.vm,)
        out: list[Decision] = []
        for vm in targets:
            try:
                events = process(self.states[vm], record, self.config)
            except Exception as exc:  # the engine failing on a record is a finding, reported as one
                raise ReplayError(f"engine raised on inbox pos {row.pos} for {vm}: {exc!r}") from exc
            out.append(Decision(vm, row.pos, row.tick, events))
        return out


def replay_inbox(
    log: LogReader,
    config: EngineConfig,
    until_pos: int,
    only_vm: str | None = None,
    *,
    only_vms: Collection[str] | None = None,
    ticks: array[int] | None = None,
    progress: Progress | None = None,
) -> tuple[InboxReplay, Iterator[Decision]]:
    """A replay and the stream of its decisions over inbox positions ``1..until_pos``.

    ``ticks``, if given, is filled with the tick of every inbox position read (index = position),
    which is how an audit places events, which carry no time of their own, on the clock.
    """
    replay = InboxReplay(config, only_vm, only_vms)

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
