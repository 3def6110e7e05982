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

from ..dm_engine.records import event_from_dict, event_json, loads
from ..event_log.sqlite_log import EventRow

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
        self, vm: str, recorded: Iterator[EventRow], until_pos: int, judge_after: int = 0, seq_base: int = 0
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
    def matches(self) -> bool:
        return self.divergence is None

    def expect(self, inbox_pos: int, record: str) -> None:
        """The replay decided ``record`` (canonical JSON) for inbox record ``inbox_pos``."""
        self.decided += 1
        if self.divergence is not None:
            return
        seq = self._seq_base + self.decided
        row = next(self._rows, None)
        if inbox_pos <= self._judge_after and row is not None:
            return  # before the audited window: rebuilt, not judged
        if row is None:
            self._diverge(seq, inbox_pos, MISSING_EVENT, record, None, inbox_pos, None)
        elif row.seq != seq:
            self._diverge(seq, row.inbox_pos, SEQ_GAP, record, row.record, inbox_pos, row.inbox_pos)
        elif row.record != record:
            if _upcast(row.record) == record:
                self.upcast += 1
                if row.inbox_pos != inbox_pos:
                    self._diverge(seq, row.inbox_pos, INBOX_POS_DIFFERS, record, row.record, inbox_pos, row.inbox_pos)
                return
            self._diverge(seq, row.inbox_pos, RECORD_DIFFERS, record, row.record, inbox_pos, row.inbox_pos)
        elif row.inbox_pos != inbox_pos:
            self._diverge(seq, row.inbox_pos, INBOX_POS_DIFFERS, record, row.record, inbox_pos, row.inbox_pos)

    def finish(self) -> None:
        """The replay is over: a recorded row left within the replayed range is unexplained.

        Rows past ``until_pos`` belong to inbox records committed after the audit read the
        consumed position (a live log), so they are not judged.
        """
        if self.divergence is not None:
            return
        row = next(self._rows, None)
        if row is not None and row.inbox_pos <= self._until:
            seq = self._seq_base + self.decided + 1
            self._diverge(seq, row.inbox_pos, UNEXPECTED_EVENT, None, row.record, None, row.inbox_pos)

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

    def __init__(self, rows: Iterator[EventRow], vms: Collection[str] | None = None) -> None:
        self._rows = rows
        self._vms = None if vms is None else frozenset(vms)
        self._queues: dict[str, deque[EventRow]] = {}

    def for_vm(self, vm: str) -> Iterator[EventRow]:
        queues, vms = self._queues, self._vms
        queue = queues.setdefault(vm, deque())
        while True:
            if queue:
                yield queue.popleft()
                continue
            row = next(self._rows, None)
            if row is None:
                return
            if row.vm == vm:
                yield row
            elif vms is None or row.vm in vms:
                queues.setdefault(row.vm, deque()).append(row)


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
