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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from services.dm_engine.config import EngineConfig
from services.dm_engine.decider import initial_state, process
from services.dm_engine.events import Event
from services.dm_engine.records import input_from_dict
from services.dm_engine.state import VmState
from services.event_log.sqlite_log import ALL_VMS, InboxRow, SqliteLog


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

    ``only_vm`` restricts the work to one VM: VMs are independent, so skipping the others changes
    nothing for it.
    """

    def __init__(self, config: EngineConfig, only_vm: str | None = None) -> None:
        self.config = config
        self.only_vm = only_vm
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
            if self.only_vm is not None and row.vm != self.only_vm:
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
    log: SqliteLog, config: EngineConfig, until_pos: int, only_vm: str | None = None
) -> tuple[InboxReplay, Iterator[Decision]]:
    """A replay and the stream of its decisions over inbox positions ``1..until_pos``."""
    replay = InboxReplay(config, only_vm)

    def decisions() -> Iterator[Decision]:
        for row in log.iter_inbox(0, until_pos):
            yield from replay.feed(row)

    return replay, decisions()
