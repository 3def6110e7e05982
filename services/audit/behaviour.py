"""How a guest behaved, from its recorded events: violations, latencies, throughput, cadence.

Why from the recorded events (not the replay): the report says what the log says happened; the
replay's job is to prove the log is what the inbox means (``replay_matches``). Events carry no
wall time; each is placed at the tick of the inbox record that caused it (the audit reads the
inbox anyway), so every duration is exact to one tick and converted with ``tick_seconds``.

Per VM:

* ``violations``: by reason, the count, the first and the last occurrence (tick, event seq,
  inbox position, message type, guest trans_id, detail, ranges) and the exact pages involved,
  coalesced over every occurrence;
* ``latencies``: per transaction type, from the host's request to the guest's answer (first
  answer and completion), plus the handshake steps; min / median / p95 / max in ticks and seconds;
* ``throughput``: pages moved per transaction type and GB/min over the time they took;
* ``status_reports``: how many, when the first came after the channel opened (Linux waits ~45 s),
  the interval between reports, and every gap longer than ``gap_ticks`` while the channel was open;
* ``protocol``: the protocol version and capabilities over time (each negotiation, close, reset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from ..dm_engine import events as ev
from ..dm_engine.machine import TxnKind
from ..range_store import PageRangeSet
from ..units import PAGE_SIZE
from .transactions import GB

#: A status-report interval longer than this many ticks (and seconds, below) is a gap.
DEFAULT_GAP_TICKS: Final = 3
_RESET_NAMES: Final = {ev.ChannelClosed: "channel_closed", ev.VmbusReset: "vmbus_reset", ev.SystemReset: "system_reset"}
#: Gaps listed in full; beyond this only counted.
MAX_GAPS_LISTED: Final = 100


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted list.

    >>> _percentile([1, 2, 3, 4, 100], 0.95)
    100
    """
    index = max(0, min(len(sorted_values) - 1, -(-int(q * 100 * len(sorted_values)) // 100) - 1))
    return sorted_values[index]


def latency_summary(ticks: list[int], tick_seconds: float) -> dict[str, Any]:
    """Count, min, median, p95, max and mean of durations in ticks, and the same in seconds."""
    if not ticks:
        return {"count": 0}
    values = sorted(ticks)
    stats = {
        "min": values[0],
        "median": _percentile(values, 0.5),
        "p95": _percentile(values, 0.95),
        "max": values[-1],
        "mean": sum(values) / len(values),
    }
    return {
        "count": len(values),
        "ticks": stats,
        "seconds": {k: v * tick_seconds for k, v in stats.items()},
    }


@dataclass(slots=True)
class Occurrence:
    tick: int
    seq: int
    inbox_pos: int
    message_type: str
    guest_trans_id: int
    detail: str
    ranges: tuple[tuple[int, int], ...]
    pages: int
    #: Pages the same guest message had accounted (PAGES_BEYOND_REQUEST names no ranges itself:
    #: the excess is accounted, so the ranges involved are those of that message).
    accounted_ranges: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "accounted_ranges": [list(r) for r in self.accounted_ranges],
            "tick": self.tick,
            "seq": self.seq,
            "inbox_pos": self.inbox_pos,
            "message_type": self.message_type,
            "guest_trans_id": self.guest_trans_id,
            "detail": self.detail,
            "ranges": [list(r) for r in self.ranges],
            "pages": self.pages,
        }


@dataclass(slots=True)
class ViolationRecord:
    count: int
    first: Occurrence
    last: Occurrence
    ranges: PageRangeSet = field(default_factory=PageRangeSet)

    def to_dict(self, tick_seconds: float) -> dict[str, Any]:
        return {
            "count": self.count,
            "first": {**self.first.to_dict(), "seconds": self.first.tick * tick_seconds},
            "last": {**self.last.to_dict(), "seconds": self.last.tick * tick_seconds},
            "ranges": [list(r) for r in self.ranges],
            "pages": self.ranges.page_count,
        }


@dataclass(slots=True)
class _Open:
    kind: str
    start_tick: int
    first_answer_tick: int | None = None


@dataclass(slots=True)
class Gap:
    from_tick: int
    to_tick: int


class BehaviourFold:
    """Folds one VM's events (with the tick and position each came from) into the report above."""

    def __init__(self, tick_seconds: float, gap_ticks: int = DEFAULT_GAP_TICKS) -> None:
        self.tick_seconds = tick_seconds
        self.gap_ticks = gap_ticks
        self.violations: dict[str, ViolationRecord] = {}
        self.first_answer: dict[str, list[int]] = {}
        self.completion: dict[str, list[int]] = {}
        self.outcomes: dict[str, dict[str, int]] = {}
        self.pages_moved: dict[str, int] = {}
        self.ticks_busy: dict[str, int] = {}
        self._open: _Open | None = None
        self._channel_open_tick: int | None = None
        self._version_tick: int | None = None
        self.handshake: dict[str, list[int]] = {"version": [], "capabilities": [], "first_status_report": []}
        self._awaiting_first_status = False
        self.status_count = 0
        self._last_status: int | None = None
        self.intervals: list[int] = []
        self.gaps: list[Gap] = []
        self.gap_count = 0
        self.max_in_one_tick = 0
        self._in_tick = 0
        self.protocol: list[dict[str, Any]] = []
        self._accounted_pos = -1
        self._accounted: tuple[tuple[int, int], ...] = ()

    # ------------------------------------------------------------------ transactions
    def _start(self, kind: str, tick: int) -> None:
        self._close("abandoned", tick, count=False)
        self._open = _Open(kind, tick)

    def _answer(self, kind: str, tick: int) -> None:
        txn = self._open
        if txn is not None and txn.kind == kind and txn.first_answer_tick is None:
            txn.first_answer_tick = tick
            self.first_answer.setdefault(kind, []).append(tick - txn.start_tick)

    def _close(self, outcome: str, tick: int, *, count: bool = True, pages: int = 0) -> None:
        txn = self._open
        if txn is None:
            return
        self._open = None
        outcomes = self.outcomes.setdefault(txn.kind, {})
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if count:
            self.completion.setdefault(txn.kind, []).append(tick - txn.start_tick)
            self.pages_moved[txn.kind] = self.pages_moved.get(txn.kind, 0) + pages
            # A transaction within one tick took at most one tick: count one (a lower bound).
            self.ticks_busy[txn.kind] = self.ticks_busy.get(txn.kind, 0) + max(1, tick - txn.start_tick)

    # ------------------------------------------------------------------ the fold
    def apply(self, event: ev.Event, seq: int, inbox_pos: int, tick: int) -> None:  # noqa: C901 -- one case per event
        if type(event) is ev.StatusReported:
            self._status(tick)  # most of a log: answered before the match tries every case
            return
        match event:
            case ev.GuestViolation():
                occurrence = Occurrence(
                    tick,
                    seq,
                    inbox_pos,
                    event.message_type,
                    event.guest_trans_id,
                    event.detail,
                    event.ranges,
                    event.pages,
                    self._accounted if inbox_pos == self._accounted_pos else (),
                )
                record = self.violations.get(event.reason)
                if record is None:
                    record = self.violations[event.reason] = ViolationRecord(0, occurrence, occurrence)
                record.count += 1
                record.last = occurrence
                record.ranges.add_many(r for r in (event.ranges or occurrence.accounted_ranges) if r[1] > 0)
            case ev.BalloonRequested():
                self._start(TxnKind.BALLOON, tick)
            case ev.PagesBallooned():
                self._answer(TxnKind.BALLOON, tick)
                self._accounted_pos, self._accounted = inbox_pos, event.ranges
            case ev.BalloonTransactionEnded():
                if event.outcome != "timeout":
                    self._answer(TxnKind.BALLOON, tick)
                self._close(event.outcome, tick, pages=event.received_pages)
            case ev.UnballoonRequested():
                txn = self._open
                if txn is None or txn.kind != TxnKind.UNBALLOON:
                    self._start(TxnKind.UNBALLOON, tick)
                self.pages_moved[TxnKind.UNBALLOON] = self.pages_moved.get(TxnKind.UNBALLOON, 0) + event.pages
            case ev.UnballoonCompleted():
                self._answer(TxnKind.UNBALLOON, tick)
                self._close("complete", tick)
            case ev.HotAddRequested():
                self._start(TxnKind.HOT_ADD, tick)
            case ev.HotAddCompleted():
                self._answer(TxnKind.HOT_ADD, tick)
                outcome = "complete" if event.result and event.accepted_pages >= event.requested_pages else "partial"
                self._close(outcome, tick, pages=event.accepted_pages)
            case ev.HotAddAbandoned():
                self._close("timeout", tick)
            case ev.HotRemoveRequested():
                self._start(TxnKind.HOT_REMOVE, tick)
            case ev.PagesHotRemoved():
                self._answer(TxnKind.HOT_REMOVE, tick)
            case ev.HotRemoveTransactionEnded():
                if event.outcome != "timeout":
                    self._answer(TxnKind.HOT_REMOVE, tick)
                self._close(event.outcome, tick, pages=event.received_pages)
            case ev.TransactionTimedOut():
                if self._open is not None and self._open.kind == event.kind:
                    self._close("timeout", tick)
            case ev.StatusReported():
                self._status(tick)
            case ev.ChannelOpened():
                self._close("abandoned", tick, count=False)
                self._channel_open_tick = tick
                self._version_tick = None
                self._last_status = None
                self._awaiting_first_status = True
                self.protocol.append({"tick": tick, "seq": seq, "event": "channel_opened"})
            case ev.VersionAccepted() | ev.VersionRejected():
                accepted = isinstance(event, ev.VersionAccepted)
                if accepted and self._channel_open_tick is not None:
                    self.handshake["version"].append(tick - self._channel_open_tick)
                    self._version_tick = tick
                self.protocol.append(
                    {
                        "tick": tick,
                        "seq": seq,
                        "event": "version_accepted" if accepted else "version_rejected",
                        "version": f"{event.version >> 16}.{event.version & 0xFFFF}",
                    }
                )
            case ev.CapabilitiesAccepted():
                if self._version_tick is not None:
                    self.handshake["capabilities"].append(tick - self._version_tick)
                self.protocol.append(
                    {
                        "tick": tick,
                        "seq": seq,
                        "event": "capabilities_accepted",
                        "capabilities": {
                            "balloon": event.balloon,
                            "hot_add": event.hot_add,
                            "hot_add_alignment": event.hot_add_alignment,
                            "hot_remove": event.hot_remove,
                            "min_page_cnt": event.min_page_cnt,
                            "max_page_number": event.max_page_number,
                        },
                    }
                )
            case ev.ChannelClosed() | ev.VmbusReset() | ev.SystemReset():
                self._close("abandoned", tick, count=False)
                self._last_status = None
                self._awaiting_first_status = False
                name = {
                    ev.ChannelClosed: "channel_closed",
                    ev.VmbusReset: "vmbus_reset",
                    ev.SystemReset: "system_reset",
                }
                entry: dict[str, Any] = {"tick": tick, "seq": seq, "event": name[type(event)]}
                if isinstance(event, ev.ChannelClosed):
                    entry["reason"] = event.reason
                self.protocol.append(entry)
            case _:
                pass

    def _status(self, tick: int) -> None:
        self.status_count += 1
        if self._awaiting_first_status and self._channel_open_tick is not None:
            self.handshake["first_status_report"].append(tick - self._channel_open_tick)
            self._awaiting_first_status = False
        last = self._last_status
        if last is not None:
            if tick == last:
                self._in_tick += 1
            else:
                self.intervals.append(tick - last)
                self._in_tick = 1
                if tick - last > self.gap_ticks:
                    self.gap_count += 1
                    if len(self.gaps) < MAX_GAPS_LISTED:
                        self.gaps.append(Gap(last, tick))
        else:
            self._in_tick = 1
        self.max_in_one_tick = max(self.max_in_one_tick, self._in_tick)
        self._last_status = tick

    # ------------------------------------------------------------------ the report
    def to_dict(self) -> dict[str, Any]:
        ts = self.tick_seconds
        latencies: dict[str, Any] = {}
        for txn_kind in TxnKind:
            kind = txn_kind.value
            if kind in self.outcomes or kind in self.first_answer:
                latencies[kind] = {
                    "first_answer": latency_summary(self.first_answer.get(kind, []), ts),
                    "completion": latency_summary(self.completion.get(kind, []), ts),
                    "outcomes": dict(sorted(self.outcomes.get(kind, {}).items())),
                }
        for step, values in self.handshake.items():
            if values:
                latencies[step] = latency_summary(values, ts)
        throughput: dict[str, Any] = {}
        for kind, pages in sorted(self.pages_moved.items()):
            busy = self.ticks_busy.get(kind, 0) * ts
            throughput[kind] = {
                "pages": pages,
                "bytes": pages * PAGE_SIZE,
                "seconds": busy,
                "gb_per_min": (pages * PAGE_SIZE / GB) / (busy / 60.0) if busy else None,
            }
        intervals = self.intervals
        return {
            "violations": {r: v.to_dict(ts) for r, v in sorted(self.violations.items())},
            "latencies": latencies,
            "throughput": throughput,
            "status_reports": {
                "count": self.status_count,
                "interval": latency_summary(intervals, ts),
                "gap_ticks": self.gap_ticks,
                "gaps": self.gap_count,
                "gaps_listed": [
                    {
                        "from_tick": g.from_tick,
                        "to_tick": g.to_tick,
                        "ticks": g.to_tick - g.from_tick,
                        "seconds": (g.to_tick - g.from_tick) * ts,
                    }
                    for g in self.gaps
                ],
                "max_in_one_tick": self.max_in_one_tick,
            },
            "protocol": self.protocol,
        }
