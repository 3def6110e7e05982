"""``audit``: replay a log's inbox, compare with its events, and fold the events into a report.

The two halves answer different questions. The replay answers "is this event log what this inbox
means?" (determinism, and tampering); the fold of the *recorded* events answers "what does the log
say happened?" -- the accounting operators act on, the protocol state, the guest's violations and
its balloon throughput. Both stop at the engine's consumed position, read once at the start, so
auditing a live log judges a consistent prefix of it.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..dm_engine import events as ev
from ..dm_engine.config import EngineConfig
from ..dm_engine.decider import evolve
from ..dm_engine.records import event_from_stored
from ..dm_engine.state import VmState
from ..event_log.summaries import HistorySummary
from ..units import PAGE_SIZE
from . import compacted
from .behaviour import DEFAULT_GAP_TICKS, BehaviourFold
from .divergence import Divergence, RecordedStream, VmComparison, first_divergence
from .logfile import LogError, engine_config
from .qemu_findings import QemuFold
from .reader import LogReader, StoredEventRow, stored_events
from .replay import Decision, Progress, replay_inbox
from .transactions import TransactionLog


def version_text(version: int | None) -> str | None:
    """DM protocol versions are ``major << 16 | minor``.

    >>> version_text(0x20000)
    '2.0'
    """
    return None if version is None else f"{version >> 16}.{version & 0xFFFF}"


def accounting(state: VmState) -> dict[str, int | None]:
    """The accounting of one VM in bytes (``target_bytes`` is None until a target is set)."""
    return {
        "boot_bytes": state.boot_pages * PAGE_SIZE,
        "hot_added_bytes": state.hot_added_pages * PAGE_SIZE,
        "ballooned_bytes": state.ballooned_pages * PAGE_SIZE,
        "current_bytes": state.current_pages * PAGE_SIZE,
        "target_bytes": None if state.target_pages is None else state.target_pages * PAGE_SIZE,
        "maxmem_bytes": state.maxmem_pages * PAGE_SIZE,
    }


@dataclass(slots=True)
class ViolationSpan:
    count: int
    first_tick: int
    last_tick: int


@dataclass(slots=True)
class VmFold:
    """The recorded events of one VM folded: state, violations with their ticks, transactions.

    A record that cannot be parsed or folded stops the fold of that VM and is reported as
    ``fold_error``: an audit reads files that may have been edited, and one bad row must not hide
    the report on every other VM.
    """

    vm: str
    state: VmState
    events: int = 0
    last_seq: int = 0
    violations: dict[str, ViolationSpan] = field(default_factory=dict)
    transactions: TransactionLog = field(default_factory=TransactionLog)
    fold_error: str | None = None
    behaviour: BehaviourFold = field(default_factory=lambda: BehaviourFold(1.0))
    #: (tick, current pages, target pages or -1, guest committed pages or -1) whenever one moved.
    series: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: Events from inbox records at or before this position build state but are not reported.
    report_after: int = 0
    #: Inputs the engine rejected for this VM (``InputRejected``), as the audit reports them.
    rejections: list[dict[str, Any]] = field(default_factory=list)
    #: Targets, stalls and the shadow account of a QEMU-managed VM.
    qemu: QemuFold = field(default_factory=QemuFold)
    #: On a compacted log: the summary of what is folded after the cut (``compacted.histories``).
    history: HistorySummary | None = None

    def apply(self, row: StoredEventRow, tick: int = -1) -> None:
        """Fold one recorded row (as stored: ``reader.stored_events``)."""
        self.events += 1
        if self.fold_error is not None:
            return
        try:
            event = event_from_stored(row[3])
        except Exception as exc:  # a corrupt row is a finding, not a crash (see the class docstring)
            self.fold_error = f"seq {row[1]}: {exc!r}"
            return
        self._fold(event, row[1], row[2], tick)

    def apply_event(self, event: ev.Event, seq: int, inbox_pos: int, tick: int) -> None:
        """Fold a recorded row given as the event it holds: the replay decided exactly that
        record at that seq and position, so the row need not be read and parsed again."""
        self.events += 1
        if self.fold_error is None:
            self._fold(event, seq, inbox_pos, tick)

    def _fold(self, event: ev.Event, seq: int, inbox_pos: int, tick: int) -> None:
        try:
            evolve(self.state, event)
        except Exception as exc:  # a corrupt row is a finding, not a crash (see the class docstring)
            self.fold_error = f"seq {seq}: {exc!r}"
            return
        self.last_seq = seq
        if self.history is not None:
            self.history.apply(event, inbox_pos, tick)
        if inbox_pos <= self.report_after:
            return
        if type(event) is ev.StatusReported:
            # Most of a log: nothing below but the behaviour fold and the sample concern it.
            self.behaviour.apply(event, seq, inbox_pos, tick)
            if self.state.qemu is not None:
                self.qemu.apply(event)
            self._sample(tick)
            return
        self.behaviour.apply(event, seq, inbox_pos, tick)
        if self.state.qemu is not None:
            self.qemu.apply(event)
        self._sample(tick)
        if isinstance(event, ev.GuestViolation):
            span = self.violations.get(event.reason)
            if span is None:
                self.violations[event.reason] = ViolationSpan(1, event.tick, event.tick)
            else:
                span.count += 1
                span.first_tick = min(span.first_tick, event.tick)
                span.last_tick = max(span.last_tick, event.tick)
        self.transactions.apply(event)
        if isinstance(event, ev.InputRejected):
            self.rejections.append(
                {
                    "seq": seq,
                    "inbox_pos": event.inbox_pos,
                    "tick": event.tick,
                    "input_type": event.input_type,
                    "error_class": event.error_class,
                    "error": event.error,
                }
            )

    def _sample(self, tick: int) -> None:
        # (once per event: the point is compared field by field before a tuple is built)
        state = self.state
        status = state.status
        current = state.current_pages
        target = state.target_pages
        if target is None:
            target = -1
        committed = -1 if status is None else status.committed_pages - state.ballooned_pages
        series = self.series
        if series:
            last = series[-1]
            if last[3] == committed and last[1] == current and last[2] == target:
                return
            if len(series) >= MAX_SERIES_POINTS:
                del series[1::2]  # halve the resolution, keep the shape (and the first point)
        series.append((tick, current, target, committed))


#: Whether a whole-log audit folds the decided events while they match (tests compare it with the
#: two-pass audit by turning it off).
ONE_PASS = True

#: Points kept per VM for the HTML plots.
MAX_SERIES_POINTS = 4000


@dataclass(frozen=True, slots=True)
class VmReport:
    vm: str
    fold: VmFold
    comparison: VmComparison
    tick_seconds: float
    #: On a compacted log: the summaries of the history before the cut, after it, and in total.
    history: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        state = self.fold.state
        spans = sorted(self.fold.violations.items())
        extra = {} if state.qemu is None else {"qemu": self.fold.qemu.to_dict(state)}
        return {
            **accounting(state),
            "violations": {reason: span.count for reason, span in spans},
            "violation_ticks": {
                reason: {"first_tick": span.first_tick, "last_tick": span.last_tick} for reason, span in spans
            },
            "replay_matches": self.comparison.matches,
            "first_divergence": None if self.comparison.divergence is None else self.comparison.divergence.to_dict(),
            "needs_attention": state.needs_attention,
            "inputs_rejected": self.fold.rejections,
            "protocol_state": state.protocol.value,
            "protocol_version": version_text(state.version),
            "events": self.fold.events,
            "decided_events": self.comparison.decided,
            "fold_error": self.fold.fold_error,
            "balloon_transactions": [t.to_dict(self.tick_seconds) for t in self.fold.transactions.balloon],
            "unballoon_transactions": [t.to_dict(self.tick_seconds) for t in self.fold.transactions.unballoon],
            "upcast_events": self.comparison.upcast,
            "behaviour": self.fold.behaviour.to_dict(),
            "history": self.history,
            **extra,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    db: str
    config: EngineConfig
    config_source: str
    consumed_position: int
    inbox_high_watermark: int
    inbox_records: int
    vms: dict[str, VmReport]
    first_divergence: Divergence | None
    report_after: int = 0
    selected_vms: tuple[str, ...] = ()
    #: Where a compacted log begins (``compacted.section``); None if it was never compacted.
    compaction: dict[str, Any] | None = None

    @property
    def replay_matches(self) -> bool:
        return self.first_divergence is None

    @property
    def unconsumed_inputs(self) -> int:
        """Inbox records after the engine's consumed position. The replay stops at that position,
        so it can match while the engine is stuck on a record it cannot process: a stopped service
        has drained its inbox (``EmbeddedService.stop``), so anything left means the engine stopped
        early or is still running."""
        return max(0, self.inbox_high_watermark - self.consumed_position)

    @property
    def consumed_behind_inbox(self) -> bool:
        return self.unconsumed_inputs > 0

    @property
    def events(self) -> int:
        return sum(r.fold.events for r in self.vms.values())

    @property
    def decided_events(self) -> int:
        return sum(r.comparison.decided for r in self.vms.values())

    def to_dict(self) -> dict[str, Any]:
        """The ``hvdm audit --json`` document; its top-level and per-VM key names are a contract."""
        return {
            "replay_matches": self.replay_matches,
            "inbox_records": self.inbox_records,
            "events": self.events,
            "decided_events": self.decided_events,
            "consumed_position": self.consumed_position,
            "inbox_high_watermark": self.inbox_high_watermark,
            "consumed_behind_inbox": self.consumed_behind_inbox,
            "unconsumed_inputs": self.unconsumed_inputs,
            "db": self.db,
            "engine_config": self.config.to_dict(),
            "engine_config_source": self.config_source,
            "vms": {vm: report.to_dict() for vm, report in sorted(self.vms.items())},
            "first_divergence": None if self.first_divergence is None else self.first_divergence.to_dict(),
            "from_position": self.report_after,
            "selected_vms": list(self.selected_vms),
            "upcast_events": sum(r.comparison.upcast for r in self.vms.values()),
            "vms_needing_attention": sorted(vm for vm, r in self.vms.items() if r.fold.state.needs_attention),
            "compaction": self.compaction,
        }


def _fold_rows(log: LogReader, vms: frozenset[str] | None, until_pos: int) -> Iterator[StoredEventRow]:
    """Recorded rows up to the consumed position, in commit order (per VM: seq order)."""
    one = next(iter(vms)) if vms is not None and len(vms) == 1 else None
    rows = stored_events(log, one)  # one VM: its own rows by index, not a scan of everyone's
    for row in rows:
        if row[2] <= until_pos and (vms is None or row[0] in vms):
            yield row


def _compare(
    decision: Decision,
    cmp: VmComparison,
    folds: dict[str, VmFold],
    new_fold: Callable[[str], VmFold] | None,
) -> None:
    """Compare one decision's events with the recorded rows; fold them while they match."""
    fold = folds.get(decision.vm)
    if fold is None and new_fold is not None:
        fold = folds[decision.vm] = new_fold(decision.vm)
    pos, tick = decision.inbox_pos, decision.tick
    for event, text in zip(decision.events, decision.records, strict=True):
        cmp.expect(pos, text, event)
        if fold is not None and cmp.divergence is None and not cmp.upcast:
            fold.apply_event(event, cmp.seq, pos, tick)


def _unmatched(comparisons: dict[str, VmComparison], recorded: RecordedStream, until_pos: int) -> list[str]:
    """After a one-pass replay, the VMs whose fold must be done again from their rows: those that
    diverged (the report describes their rows), and those with rows the replay decided nothing
    for (forged, or left by a forgotten VM)."""
    for cmp in comparisons.values():
        cmp.finish()
    refold = {n for n, c in comparisons.items() if c.divergence is not None or c.upcast}
    refold |= recorded.drain(until=until_pos) - set(comparisons)
    return sorted(refold)


def _fold_recorded_rows(
    folds: dict[str, VmFold],
    rows: Iterator[StoredEventRow],
    new_fold: Callable[[str], VmFold],
    ticks: array[int],
    until_pos: int,
) -> None:
    for row in rows:
        if row[2] <= until_pos:
            fold = folds.get(row[0])
            if fold is None:
                fold = folds[row[0]] = new_fold(row[0])
            fold.apply(row, ticks[row[2]] if 0 < row[2] <= until_pos else -1)
    for name in [n for n, f in folds.items() if not f.events]:
        del folds[name]  # (a VM that decided events none of which was recorded)


def position_of_tick(log: LogReader, tick: int, until_pos: int) -> int:
    """The last inbox position stamped before ``tick`` (so ``--from-tick N`` reports from tick N on)."""
    pos = 0
    for row in log.iter_inbox(0, until_pos):
        if row.tick >= tick:
            break
        pos = row.pos
    return pos


def audit(
    log: LogReader,
    vm: str | None = None,
    *,
    vms: Collection[str] | None = None,
    from_pos: int = 0,
    from_tick: int | None = None,
    progress: Progress | None = None,
    gap_ticks: int = DEFAULT_GAP_TICKS,
) -> AuditReport:
    """Replay, compare and fold the whole log, or only some VMs' part of it.

    ``from_pos`` / ``from_tick`` narrow what is judged and reported to the inbox records after that
    position (or from that tick on). The inbox before it is still re-decided, to rebuild the state
    the later records act on: the engine's snapshots are not used, because a snapshot is itself a
    claim of the log that the audit would have to take on trust -- except on a compacted log, whose
    history before the cut is gone: there the replay starts from the states stored at the cut and
    the report adds the summaries of that history (``services.audit.compacted``).
    """
    config, source = engine_config(log)
    consumed = log.consumed_position()
    base = compacted.base_of(log)
    selected = set(vms or ())
    if vm is not None:
        selected.add(vm)
    only: frozenset[str] | None = frozenset(selected) if selected else None
    if from_tick is not None:
        from_pos = position_of_tick(log, from_tick, consumed)
    from_pos = max(0, min(from_pos, consumed))

    comparisons: dict[str, VmComparison] = {}
    recorded = RecordedStream(stored_events(log, None), only)

    def comparison(name: str) -> VmComparison:
        cmp = comparisons.get(name)
        if cmp is None:
            seq_base = 0 if base is None else base.seqs.get(name, 0)
            cmp = comparisons[name] = VmComparison(
                name, recorded.for_vm(name), consumed, judge_after=from_pos, seq_base=seq_base
            )
        return cmp

    def new_fold(name: str) -> VmFold:
        behaviour = BehaviourFold(config.tick_seconds, gap_ticks)
        history = None if base is None else HistorySummary(name)
        state = compacted.start_state(base, name)
        return VmFold(name, state, behaviour=behaviour, report_after=from_pos, history=history)

    # One pass when the whole log is judged: while a VM's recorded rows are exactly what the replay
    # decides, its fold takes the decided events (the same records) instead of reading and parsing
    # every row a second time. A VM whose rows stop matching (or were only upcast to match) is
    # folded again from its rows after the replay, as every VM is when ``from_pos`` narrows the
    # judged window; so the report is the two-pass report either way.
    one_pass = ONE_PASS and from_pos == 0
    folds: dict[str, VmFold] = {}
    ticks = array("q", bytes(8 * (consumed + 1)))
    replay, decisions = replay_inbox(log, config, consumed, only_vms=only, ticks=ticks, progress=progress, start=base)
    for decision in decisions:
        if decision.events:
            _compare(decision, comparison(decision.vm), folds, new_fold if one_pass else None)
    if one_pass:
        refold = _unmatched(comparisons, recorded, consumed)
        for name in refold:
            folds[name] = new_fold(name)
        rows: Iterator[StoredEventRow] = (row for name in refold for row in stored_events(log, name))
    else:
        rows = _fold_rows(log, only, consumed)
    _fold_recorded_rows(folds, rows, new_fold, ticks, consumed)

    names = set(replay.states) | set(folds)
    names |= {vm for vm in compacted.vms_at_cut(base) if only is None or vm in only}
    history = {} if base is None else compacted.histories(log, base, names, folds, config.tick_seconds)
    missing = sorted(selected - names)
    if missing:
        raise LogError(f"vm {missing[0]!r} does not appear in the log")
    reports: dict[str, VmReport] = {}
    for name in sorted(names):
        cmp = comparison(name)
        cmp.finish()
        fold = folds.get(name) or new_fold(name)
        reports[name] = VmReport(name, fold, cmp, config.tick_seconds, history.get(name))
    return AuditReport(
        db=log.path,
        config=config,
        config_source=source,
        consumed_position=consumed,
        inbox_high_watermark=log.inbox_high_watermark(),
        inbox_records=replay.records,
        vms=reports,
        first_divergence=first_divergence(iter(comparisons[n] for n in reports)),
        report_after=from_pos,
        selected_vms=tuple(sorted(selected)),
        compaction=compacted.section(base),
    )
