"""Compare the events a replay decides with the events the log recorded, byte for byte.

Why byte for byte: records are canonical JSON (``records.dumps``), so an honest re-run produces
identical strings; comparing parsed values would forgive exactly the edits an audit must catch.
Only the first divergence of each VM is kept: everything after it is downstream of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from ..dm_engine.events import Event
from ..dm_engine.records import event_from_dict, event_json, loads, stored_event_json
from .reader import StoredEventRow

#: Divergence kinds, most specific first.
RECORD_DIFFERS = "record_differs"  # same slot, different JSON
INBOX_POS_DIFFERS = "inbox_pos_differs"  # same JSON, attributed to another inbox record
SEQ_GAP = "seq_gap"  # the recorded seq is not the next one (a row was deleted or renumbered)
MISSING_EVENT = "missing_event"  # the replay decided an event the log does not have
UNEXPECTED_EVENT = "unexpected_event"  # the log has an event the replay did not decide


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where one VM's recorded events stop being what its inbox decides.

    ``seq`` is the per-VM event number where the two part ways; ``inbox_pos`` is the inbox record
    it belongs to (the recorded row's when there is one). ``expected`` / ``recorded`` are the
    canonical JSON strings, ``None`` on the side that has no event.
    """

    vm: str
    seq: int
    inbox_pos: int
    kind: str
    expected: str | None
    recorded: str | None
    expected_inbox_pos: int | None
    recorded_inbox_pos: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "seq": self.seq,
            "inbox_pos": self.inbox_pos,
            "kind": self.kind,
            "expected": self.expected,
            "recorded": self.recorded,
            "expected_inbox_pos": self.expected_inbox_pos,
            "recorded_inbox_pos": self.recorded_inbox_pos,
        }


class VmComparison:
    """Walks one VM's recorded rows in ``seq`` order alongside the replay's decisions.

    Streaming, so an audit holds one row per VM in memory, not the whole event log.
    """

    def __init__(
        self, vm: str, recorded: Iterator[StoredEventRow], until_pos: int, judge_after: int = 0, seq_base: int = 0
    ) -> None:
        """``seq_base``: the VM's last seq before the replay starts (a compacted log's cut)."""
        self.vm = vm
        self._seq_base = seq_base
        self._rows = recorded
        self._until = until_pos
        self._judge_after = judge_after
        self.decided = 0
        #: Recorded events that differ in bytes only because an older engine wrote them without a
        #: field added since (read with its default, they re-encode to exactly the decided record).
        self.upcast = 0
        self.divergence: Divergence | None = None

    @property
    def seq(self) -> int:
        """The seq of the last event the replay decided for this VM."""
        return self._seq_base + self.decided

    @property
    def matches(self) -> bool:
        return self.divergence is None

    def expect(self, inbox_pos: int, record: str | bytes, event: Event | None = None) -> None:
        """The replay decided ``record`` for inbox record ``inbox_pos``: the event's canonical JSON,
        or its stored form (``records.stored_event``) with ``event`` itself.

        A stored row equal to the decided stored form is the same record; anything else is judged
        on canonical JSON (a log of format 1 stores every event as text), so a divergence always
        shows both sides as canonical JSON."""
        self.decided += 1
        if self.divergence is not None:
            return
        seq = self._seq_base + self.decided
        row = next(self._rows, None)
        if inbox_pos <= self._judge_after and row is not None:
            return  # before the audited window: rebuilt, not judged
        if row is not None and row[3] == record and row[1] == seq and row[2] == inbox_pos:
            return  # the honest log's case: nothing to expand or parse
        text = _text(record, event)
        if row is None:
            self._diverge(seq, inbox_pos, MISSING_EVENT, text, None, inbox_pos, None)
            return
        _vm, row_seq, row_pos, stored = row
        recorded = stored_event_json(stored)
        if row_seq != seq:
            self._diverge(seq, row_pos, SEQ_GAP, text, recorded, inbox_pos, row_pos)
        elif recorded != text:
            if _upcast(recorded) == text:
                self.upcast += 1
                if row_pos != inbox_pos:
                    self._diverge(seq, row_pos, INBOX_POS_DIFFERS, text, recorded, inbox_pos, row_pos)
                return
            self._diverge(seq, row_pos, RECORD_DIFFERS, text, recorded, inbox_pos, row_pos)
        elif row_pos != inbox_pos:
            self._diverge(seq, row_pos, INBOX_POS_DIFFERS, text, recorded, inbox_pos, row_pos)

    def finish(self) -> None:
        """The replay is over: a recorded row left within the replayed range is unexplained.

        Rows past ``until_pos`` belong to inbox records committed after the audit read the
        consumed position (a live log), so they are not judged.
        """
        if self.divergence is not None:
            return
        row = next(self._rows, None)
        if row is not None and row[2] <= self._until:
            seq = self._seq_base + self.decided + 1
            self._diverge(seq, row[2], UNEXPECTED_EVENT, None, stored_event_json(row[3]), None, row[2])

    def _diverge(
        self,
        seq: int,
        inbox_pos: int,
        kind: str,
        expected: str | None,
        recorded: str | None,
        expected_pos: int | None,
        recorded_pos: int | None,
    ) -> None:
        self.divergence = Divergence(self.vm, seq, inbox_pos, kind, expected, recorded, expected_pos, recorded_pos)


class RecordedStream:
    """Every VM's recorded rows, read once in commit order and handed out per VM.

    Why: one cursor reading the events table sequentially is several times faster than a cursor
    per VM stepping through an index row by row. The replay decides in commit order, so on an
    honest log the row a VM asks for is the next one read; rows read ahead for other VMs wait in
    their queue (only for the VMs being audited).
    """

    def __init__(self, rows: Iterator[StoredEventRow], vms: Collection[str] | None = None) -> None:
        self._rows = rows
        self._vms = None if vms is None else frozenset(vms)
        self._queues: dict[str, deque[StoredEventRow]] = {}

    def for_vm(self, vm: str) -> Iterator[StoredEventRow]:
        queues, vms = self._queues, self._vms
        queue = queues.setdefault(vm, deque())
        rows = self._rows
        while True:
            if queue:
                yield queue.popleft()
                continue
            row = next(rows, None)
            if row is None:
                return
            if row[0] == vm:
                yield row
            elif vms is None or row[0] in vms:
                queue_of = queues.get(row[0])
                if queue_of is None:
                    queue_of = queues[row[0]] = deque()
                queue_of.append(row)

    def drain(self, until: int) -> set[str]:
        """Read the rows nobody asked for yet into their queues; the VMs that have rows left
        with ``inbox_pos <= until`` (after every comparison finished: rows no replay explained)."""
        for row in self._rows:
            if self._vms is None or row[0] in self._vms:
                self._queues.setdefault(row[0], deque()).append(row)
        return {vm for vm, queue in self._queues.items() if any(row[2] <= until for row in queue)}


def _text(record: str | bytes, event: Event | None) -> str:
    """The canonical JSON of a decided record given in either form."""
    if type(record) is str:
        return record
    return event_json(event) if event is not None else stored_event_json(record)


def _upcast(recorded: str) -> str | None:
    """The recorded event read as today's engine reads it and written back canonically; None if
    it cannot be read. Only consulted when the bytes differ, so an honest log pays nothing."""
    try:
        return event_json(event_from_dict(loads(recorded)))
    except Exception:  # unreadable: a real divergence, reported as such by the caller
        return None


def first_divergence(comparisons: Iterator[VmComparison]) -> Divergence | None:
    """The divergence earliest in the log's history: lowest inbox position, then VM id."""
    found = [c.divergence for c in comparisons if c.divergence is not None]
    return min(found, key=lambda d: (d.inbox_pos, d.vm, d.seq), default=None)
