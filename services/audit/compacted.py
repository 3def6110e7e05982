"""Audits of a compacted log: start from the cut, and report the summaries of what came before.

Why: ``hvdm compact`` (``services.event_log.compaction``) deletes history before a cut and keeps a
snapshot of every VM at the cut and a summary of its history. The audit's claims must survive it:

* **replay**: re-deciding starts from the cut snapshots instead of ``initial_state``, so every
  stored event after the cut is still compared byte for byte (``replay_matches``). The snapshots
  are a claim of the log taken on trust -- the price of dropping history, stated in the report;
  the compaction itself was made from events that replayed when it ran.
* **report**: per VM, the stored summary (``compacted``), the same summary of the events the audit
  folds after the cut (``after_cut``) and their merge (``total``): violations, throughput and
  status-report cadence over the VM's whole life, as if nothing had been dropped.

A log that was never compacted (and the Kafka reader) has no base: everything here is then a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..dm_engine.decider import initial_state
from ..dm_engine.state import VmState
from ..event_log.cut import CutBase
from ..event_log.summaries import HistorySummary
from .logfile import LogError
from .reader import LogReader
from .wall_clock import iso, wall_of


def base_of(log: LogReader) -> CutBase | None:
    """The cut and its states and summaries, if ``log`` was compacted (readers that know compaction
    have ``compaction_base``; others, like the Kafka reader, never compact)."""
    lookup = getattr(log, "compaction_base", None)
    return None if lookup is None else lookup()


def start_state(base: CutBase | None, vm: str) -> VmState:
    """A fresh copy of ``vm``'s state at the cut, or ``initial_state`` (never compacted, or not held
    by the engine at the cut)."""
    state = None if base is None else base.state(vm)
    return initial_state(vm) if state is None else state


def vms_at_cut(base: CutBase | None) -> list[str]:
    """The VMs with a summary (every VM the dropped history named)."""
    return [] if base is None else sorted(base.summaries)


def check_position(base: CutBase | None, pos: int, what: str) -> None:
    """Refuse a point before the cut: that history is summarised, its states are gone."""
    if base is None or pos >= base.cut.pos:
        return
    cut = base.cut
    raise LogError(
        f"{what} {pos} is before the compaction cut: history up to inbox position {cut.pos} (tick {cut.tick}, "
        f"appended {iso(cut.wall) or '-'}) was compacted at {iso(cut.compacted_at)}; states exist from position "
        f"{cut.pos} on, and hvdm audit reports that history's summaries"
    )


def histories(
    log: LogReader,
    base: CutBase,
    names: Iterable[str],
    folds: Mapping[str, HasHistory],
    tick_seconds: float,
) -> dict[str, dict[str, Any]]:
    """Per VM in ``names``: the stored summary, the summary of its recorded events after the cut
    (folded with the rest of the report: ``VmFold.history``), and their merge (the ``history`` of
    ``hvdm audit --json``)."""
    out: dict[str, dict[str, Any]] = {}
    for vm in sorted(names):
        compacted = base.summaries.get(vm)
        fold = folds.get(vm)
        later = (fold.history if fold is not None else None) or HistorySummary(vm)
        later.resolve_walls(lambda pos: wall_of(log, pos))
        total = later if compacted is None else compacted.merged(later)
        out[vm] = {
            "compacted": None if compacted is None else compacted.to_dict(tick_seconds),
            "after_cut": later.to_dict(tick_seconds),
            "total": total.to_dict(tick_seconds),
        }
    return out


class HasHistory(Protocol):
    """A VM's fold (``report.VmFold``), as far as its history is concerned."""

    @property
    def history(self) -> HistorySummary | None: ...


def section(base: CutBase | None) -> dict[str, Any] | None:
    """The top-level ``compaction`` of ``hvdm audit --json``: the latest cut and every cut before."""
    if base is None:
        return None
    return {
        "cut": base.cut.to_dict(),
        "cuts": [c.to_dict() for c in base.cuts],
        "vms_summarised": len(base.summaries),
        "replay_starts_from": "snapshots stored at the cut",
    }


# ---------------------------------------------------------------------- what the reports show
#: Columns of the history summaries table (text and HTML reports).
SUMMARY_HEADERS = (
    "VM",
    "EVENTS",
    "VIOLATIONS",
    "BALLOONED",
    "UNBALLOONED",
    "HOT-ADDED",
    "REPORTS",
    "MEAN INTERVAL",
    "MAX INTERVAL",
    "FIRST REPORT",
    "LAST REPORT",
    "REJECTED",
)


def cut_sentence(section: dict[str, Any]) -> str:
    """One line saying where the log begins and how it got there."""
    cut = section["cut"]
    times = len(section["cuts"])
    again = f" (compacted {times} times)" if times > 1 else ""
    return (
        f"history up to inbox position {cut['position']:,} (tick {cut['tick']:,}, appended "
        f"{iso(cut['wall']) or '-'}) was compacted at {iso(cut['compacted_at'])} by hvdm {cut['version']}{again}: "
        f"{cut['inbox_rows_removed']:,} inbox records and {cut['event_rows_removed']:,} events removed; the replay "
        "starts from the snapshots stored at the cut"
    )


def summary_rows(vms: dict[str, dict[str, Any]], size: Any) -> list[list[Any]]:
    """Per VM, its whole history (compacted + after the cut) as table cells; ``size`` formats bytes."""
    rows: list[list[Any]] = []
    for vm, v in vms.items():
        history = v.get("history")
        if history is None:
            continue
        t = history["total"]
        reports = t["status_reports"]
        mean = reports["mean_interval_ticks"]
        first, last = reports["first_tick"], reports["last_tick"]
        rows.append(
            [
                vm,
                t["events"],
                sum(c["count"] for c in t["violations"].values()),
                size(t["throughput"]["balloon"]["bytes"]),
                size(t["throughput"]["unballoon"]["bytes"]),
                size(t["throughput"]["hot_add"]["bytes"]),
                reports["count"],
                "-" if mean is None else f"{mean:.2f} ticks",
                "-" if reports["max_interval_ticks"] is None else f"{reports['max_interval_ticks']} ticks",
                "-" if first is None else f"tick {first} {iso(reports['first_wall']) or ''}".strip(),
                "-" if last is None else f"tick {last} {iso(reports['last_wall']) or ''}".strip(),
                t["inputs_rejected"],
            ]
        )
    return rows


def violation_rows(vms: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """(VM, reason, count before the cut, after it, in total) for every violation reason seen."""
    rows: list[list[Any]] = []
    for vm, v in vms.items():
        history = v.get("history")
        if history is None:
            continue
        before = (history["compacted"] or {}).get("violations", {})
        after = history["after_cut"]["violations"]
        for reason, total in history["total"]["violations"].items():
            rows.append(
                [
                    vm,
                    reason,
                    before.get(reason, {}).get("count", 0),
                    after.get(reason, {}).get("count", 0),
                    total["count"],
                ]
            )
    return rows
