"""Per-VM summaries of history: what an audit still reports once the events themselves are gone.

Why: ``hvdm compact`` deletes history older than a cut to keep disks bounded, but operators still
ask of that history "how often did this guest misbehave, how much memory moved, did it report
regularly?". A summary answers exactly those questions -- violation counts by reason, pages and
bytes moved per transaction kind, the status-report cadence -- and nothing else, in a few hundred
bytes per VM.

Why a monoid: a log is compacted again and again, and an audit reports the stored summary next to
what it folds after the cut, so summaries must merge. ``merged(a, b)`` equals the summary of ``a``'s
history followed by ``b``'s, so the summary of summaries is the summary of the whole history
(``tests/event_log/test_summaries.py`` checks it against one fold over every split point). The one
fact that spans a split is a status-report interval: each summary keeps the tick of its first
report with no channel boundary before it (``head``) and of its last with none after it (``tail``),
and merging counts the interval between ``a.tail`` and ``b.head`` -- the rule of the audit's own
cadence (``services.audit.behaviour``): a channel opening, closing or reset starts a new run.

Times: ticks are the engine's clock (exact); wall times are the stamps of the inbox records the
events came from (``SqliteLog.append_inputs``), None where the log has none. The fold does no I/O:
it keeps inbox positions and ``resolve_walls`` turns them into wall times with a lookup it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ..dm_engine import events as ev
from ..units import PAGE_SIZE

#: Version of the stored summary document; a new layout gets a new number and reads the old ones.
SUMMARY_FORMAT: Final = 1

#: Transaction kinds whose throughput is summarised, in report order.
KINDS: Final = ("balloon", "unballoon", "hot_add", "hot_remove")

_BOUNDARIES: Final = (ev.ChannelOpened, ev.ChannelClosed, ev.VmbusReset, ev.SystemReset)


@dataclass(slots=True)
class Span:
    """First and last occurrence of something: tick, inbox position and (once resolved) wall time."""

    first_tick: int | None = None
    last_tick: int | None = None
    first_pos: int | None = None
    last_pos: int | None = None
    first_wall: float | None = None
    last_wall: float | None = None

    def see(self, tick: int, pos: int, wall: float | None = None) -> None:
        if self.first_tick is None:
            self.first_tick, self.first_pos, self.first_wall = tick, pos, wall
        self.last_tick, self.last_pos, self.last_wall = tick, pos, wall

    def merged(self, later: Span) -> Span:
        if self.first_tick is None:
            return Span(*_fields(later))
        if later.first_tick is None:
            return Span(*_fields(self))
        return Span(
            self.first_tick,
            later.last_tick,
            self.first_pos,
            later.last_pos,
            self.first_wall,
            later.last_wall,
        )

    def resolve(self, wall_of: Callable[[int], float | None]) -> None:
        if self.first_pos is not None and self.first_wall is None:
            self.first_wall = wall_of(self.first_pos)
        if self.last_pos is not None and self.last_wall is None:
            self.last_wall = wall_of(self.last_pos)

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_tick": self.first_tick,
            "last_tick": self.last_tick,
            "first_pos": self.first_pos,
            "last_pos": self.last_pos,
            "first_wall": self.first_wall,
            "last_wall": self.last_wall,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Span:
        return cls(
            _opt_int(d.get("first_tick")),
            _opt_int(d.get("last_tick")),
            _opt_int(d.get("first_pos")),
            _opt_int(d.get("last_pos")),
            _opt_float(d.get("first_wall")),
            _opt_float(d.get("last_wall")),
        )


def _fields(span: Span) -> tuple[Any, ...]:
    return (span.first_tick, span.last_tick, span.first_pos, span.last_pos, span.first_wall, span.last_wall)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise ValueError(f"summary field is not an integer: {value!r}")
    return value


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float):
        raise ValueError(f"summary field is not a number: {value!r}")
    return float(value)


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"summary count is not a non-negative integer: {value!r}")
    return int(value)


@dataclass(slots=True)
class Cadence:
    """Status reports: how many, the intervals between them (ticks), and where runs may continue."""

    count: int = 0
    intervals: int = 0
    interval_ticks: int = 0
    max_interval_ticks: int | None = None
    span: Span = field(default_factory=Span)
    #: Tick of the first report if no channel boundary came before it in this history.
    head: int | None = None
    #: Tick of the last report if no channel boundary came after it (the run goes on).
    tail: int | None = None
    #: A channel opened, closed or reset somewhere in this history.
    boundary: bool = False

    def report(self, tick: int, pos: int, wall: float | None = None) -> None:
        if self.tail is not None and tick != self.tail:
            self._interval(tick - self.tail)
        if self.count == 0 and not self.boundary:
            self.head = tick
        self.count += 1
        self.tail = tick
        self.span.see(tick, pos, wall)

    def cut_run(self) -> None:
        self.boundary = True
        self.tail = None

    def _interval(self, ticks: int) -> None:
        self.intervals += 1
        self.interval_ticks += ticks
        self.max_interval_ticks = ticks if self.max_interval_ticks is None else max(self.max_interval_ticks, ticks)

    def merged(self, later: Cadence) -> Cadence:
        out = Cadence(
            self.count + later.count,
            self.intervals + later.intervals,
            self.interval_ticks + later.interval_ticks,
            _max(self.max_interval_ticks, later.max_interval_ticks),
            self.span.merged(later.span),
            later.head if self.count == 0 and not self.boundary else self.head,
            self.tail if later.count == 0 and not later.boundary else later.tail,
            self.boundary or later.boundary,
        )
        if self.tail is not None and later.head is not None and later.head != self.tail:
            out._interval(later.head - self.tail)
        return out

    def to_dict(self, tick_seconds: float | None = None) -> dict[str, Any]:
        mean = self.interval_ticks / self.intervals if self.intervals else None
        out: dict[str, Any] = {
            "count": self.count,
            "intervals": self.intervals,
            "interval_ticks_total": self.interval_ticks,
            "mean_interval_ticks": mean,
            "max_interval_ticks": self.max_interval_ticks,
            **self.span.to_dict(),
            "head_tick": self.head,
            "tail_tick": self.tail,
            "channel_boundary": self.boundary,
        }
        if tick_seconds is not None:
            out["mean_interval_seconds"] = None if mean is None else mean * tick_seconds
            out["max_interval_seconds"] = (
                None if self.max_interval_ticks is None else self.max_interval_ticks * tick_seconds
            )
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cadence:
        return cls(
            _int(d["count"]),
            _int(d["intervals"]),
            _int(d["interval_ticks_total"]),
            _opt_int(d.get("max_interval_ticks")),
            Span.from_dict(d),
            _opt_int(d.get("head_tick")),
            _opt_int(d.get("tail_tick")),
            bool(d.get("channel_boundary", False)),
        )


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


@dataclass(slots=True)
class Violations:
    count: int = 0
    first_tick: int | None = None
    last_tick: int | None = None

    def merged(self, later: Violations) -> Violations:
        return Violations(
            self.count + later.count,
            self.first_tick if self.first_tick is not None else later.first_tick,
            later.last_tick if later.last_tick is not None else self.last_tick,
        )


@dataclass(slots=True)
class Moved:
    """Memory moved by one kind of transaction: transactions the host started (for unballoon: its
    last message) and pages actually moved (accounted by the engine)."""

    transactions: int = 0
    pages: int = 0

    def merged(self, later: Moved) -> Moved:
        return Moved(self.transactions + later.transactions, self.pages + later.pages)


@dataclass(slots=True)
class HistorySummary:
    """The summary of one VM's events over a stretch of its history (see the module docstring)."""

    vm: str
    events: int = 0
    span: Span = field(default_factory=Span)
    violations: dict[str, Violations] = field(default_factory=dict)
    throughput: dict[str, Moved] = field(default_factory=lambda: {k: Moved() for k in KINDS})
    status_reports: Cadence = field(default_factory=Cadence)
    inputs_rejected: int = 0
    #: Whether the VM needed attention at the end of this history (``InputRejected`` sets it).
    needs_attention: bool = False
    #: The VM was retired (``VmForgotten``) and not back by the end of this history.
    forgotten: bool = False

    # ------------------------------------------------------------------ the fold
    def apply(self, event: ev.Event, pos: int, tick: int, wall: float | None = None) -> None:
        """Fold one recorded event, caused by the inbox record at ``pos`` (stamped ``tick``, and
        appended at ``wall`` if the caller has it at hand; else ``resolve_walls`` looks it up)."""
        self.events += 1
        self.span.see(tick, pos, wall)
        self.forgotten = False
        t = self.throughput
        match event:
            case ev.StatusReported():
                self.status_reports.report(tick, pos, wall)
            case ev.GuestViolation():
                v = self.violations.setdefault(event.reason, Violations())
                v.count += 1
                if v.first_tick is None:
                    v.first_tick = event.tick
                v.last_tick = event.tick
            case ev.BalloonRequested():
                t["balloon"].transactions += 1
            case ev.PagesBallooned():
                t["balloon"].pages += event.pages
            case ev.UnballoonRequested():
                t["unballoon"].pages += event.pages
                if not event.more_pages:  # the last message of one transaction
                    t["unballoon"].transactions += 1
            case ev.HotAddRequested():
                t["hot_add"].transactions += 1
            case ev.HotAddCompleted():
                t["hot_add"].pages += event.accepted_pages
            case ev.HotRemoveRequested():
                t["hot_remove"].transactions += 1
            case ev.PagesHotRemoved():
                t["hot_remove"].pages += event.pages
            case ev.InputRejected():
                self.inputs_rejected += 1
                self.needs_attention = True
            case ev.VmForgotten():
                self.forgotten = True
                self.needs_attention = False
                self.status_reports.cut_run()
            case _ if isinstance(event, _BOUNDARIES):
                self.status_reports.cut_run()
            case _:
                pass

    def resolve_walls(self, wall_of: Callable[[int], float | None]) -> HistorySummary:
        """Fill in the wall times of the first and last event and report (from their positions)."""
        self.span.resolve(wall_of)
        self.status_reports.span.resolve(wall_of)
        return self

    # ------------------------------------------------------------------ merging
    def merged(self, later: HistorySummary) -> HistorySummary:
        """The summary of this history followed by ``later``'s (of the same VM)."""
        reasons = sorted(set(self.violations) | set(later.violations))
        empty = Violations()
        return HistorySummary(
            self.vm,
            self.events + later.events,
            self.span.merged(later.span),
            {r: self.violations.get(r, empty).merged(later.violations.get(r, empty)) for r in reasons},
            {k: self.throughput.get(k, Moved()).merged(later.throughput.get(k, Moved())) for k in KINDS},
            self.status_reports.merged(later.status_reports),
            self.inputs_rejected + later.inputs_rejected,
            later.needs_attention if later.events else self.needs_attention,
            later.forgotten if later.events else self.forgotten,
        )

    # ------------------------------------------------------------------ the stored form
    def to_dict(self, tick_seconds: float | None = None) -> dict[str, Any]:
        """The JSON document (stored by ``hvdm compact``, shown by ``hvdm audit``); with
        ``tick_seconds`` the intervals are given in seconds too (not stored)."""
        return {
            "format": SUMMARY_FORMAT,
            "vm": self.vm,
            "events": self.events,
            **self.span.to_dict(),
            "violations": {
                r: {"count": v.count, "first_tick": v.first_tick, "last_tick": v.last_tick}
                for r, v in sorted(self.violations.items())
            },
            "throughput": {
                k: {"transactions": m.transactions, "pages": m.pages, "bytes": m.pages * PAGE_SIZE}
                for k, m in self.throughput.items()
            },
            "status_reports": self.status_reports.to_dict(tick_seconds),
            "inputs_rejected": self.inputs_rejected,
            "needs_attention": self.needs_attention,
            "forgotten": self.forgotten,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistorySummary:
        """Read a stored summary back; ``ValueError`` if it is not one (the file may have been edited)."""
        try:
            if d.get("format") != SUMMARY_FORMAT:
                raise ValueError(f"summary format {d.get('format')!r} is not readable")
            violations = {
                str(r): Violations(_int(v["count"]), _opt_int(v.get("first_tick")), _opt_int(v.get("last_tick")))
                for r, v in dict(d["violations"]).items()
            }
            throughput = {k: Moved() for k in KINDS}
            for k, m in dict(d["throughput"]).items():
                if k in throughput:
                    throughput[k] = Moved(_int(m["transactions"]), _int(m["pages"]))
            return cls(
                str(d["vm"]),
                _int(d["events"]),
                Span.from_dict(d),
                violations,
                throughput,
                Cadence.from_dict(dict(d["status_reports"])),
                _int(d["inputs_rejected"]),
                bool(d["needs_attention"]),
                bool(d.get("forgotten", False)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a history summary: {exc!r}") from None
