"""``hvdm audit --jobs N``: audit an embedded log's VMs in N processes and merge the reports.

Why this is sound: VMs are independent in the engine -- a VM's events depend only on its own inbox
records and the broadcast ticks -- so an audit of a subset of the VMs decides, compares and folds
exactly what the whole audit does for those VMs (``audit(..., vms=...)`` already relies on this).
Each job reads the log through a ``PartReader``: the same read-only file, filtered in SQLite to its
VMs (plus the broadcast rows), with the consumed position and high watermark the parent read once,
so all jobs judge the same prefix of a live log. The parent then merges: VM reports side by side,
the first divergence recomputed over all of them, and the counts that belong to the whole inbox
taken from the whole inbox. The merged report equals the single-process report (tested).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from ..dm_engine.config import EngineConfig
from ..dm_engine.inputs import ALL_VMS
from ..event_log import segments
from . import compacted
from .behaviour import DEFAULT_GAP_TICKS
from .divergence import first_divergence
from .logfile import LogError, engine_config
from .reader import LogReader, SqliteReader, StoredEventRow, StoredInboxRow
from .report import AuditReport, VmReport, audit, position_of_tick

#: Below this many inbox records one process is faster than starting others.
MIN_PARALLEL_RECORDS = 50_000


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class PartReader(SqliteReader):
    """A read-only view of some VMs of an embedded log, pinned to a consumed position."""

    def __init__(self, path: str | Path, vms: Collection[str], consumed: int, high_watermark: int) -> None:
        super().__init__(path)
        self._consumed = consumed
        self._high = high_watermark
        self._vms = frozenset(vms)
        self._db.execute("CREATE TEMP TABLE part (vm TEXT PRIMARY KEY)")
        self._db.executemany("INSERT INTO temp.part (vm) VALUES (?)", [(vm,) for vm in vms])

    def consumed_position(self) -> int:
        return self._consumed

    def inbox_high_watermark(self) -> int:
        return self._high

    def iter_stored_inbox(
        self, after: int = 0, until: int | None = None, batch: int = 5000
    ) -> Iterator[StoredInboxRow]:
        until = self._consumed if until is None else until
        mine = self._vms
        for p, v, t, _kind, r, _wall in segments.segment_inbox(self._db, after, until):
            if v in mine or v == ALL_VMS:
                yield p, v, t, r
        after = max(after, self._archived_until)
        cur = self._db.execute(
            "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? AND pos <= ? AND (vm = ? OR vm IN temp.part)"
            " ORDER BY pos",
            (after, until, ALL_VMS),
        )
        while rows := cur.fetchmany(batch):
            yield from rows

    def iter_stored_events(self, vm: str | None = None, after_seq: int = 0) -> Iterator[StoredEventRow]:
        if vm is not None:
            yield from super().iter_stored_events(vm, after_seq)
            return
        mine = self._vms
        for _id, v, sq, p, _kind, r in segments.segment_events(self._db):
            if v in mine:
                yield v, sq, p, r
        cur = self._db.execute("SELECT vm, seq, inbox_pos, record FROM events WHERE vm IN temp.part ORDER BY id")
        while rows := cur.fetchmany(2000):
            yield from rows


class ClosableReader(LogReader, Protocol):
    def close(self) -> None: ...


def audit_share(reader: ClosableReader, vms: Sequence[str], from_pos: int, gap_ticks: int) -> dict[str, VmReport]:
    """One process's share of a split audit: ``audit`` over ``reader`` (a view of some VMs, which
    this closes), its VM reports ready to be sent back to the parent."""
    try:
        report = audit(reader, vms=vms, from_pos=from_pos, gap_ticks=gap_ticks)
    finally:
        reader.close()
    for vm_report in report.vms.values():
        vm_report.comparison._rows = iter(())  # a generator over the closed file: not picklable
    return report.vms


def _audit_part(
    path: str, vms: Sequence[str], consumed: int, high: int, from_pos: int, gap_ticks: int
) -> dict[str, VmReport]:
    return audit_share(PartReader(path, vms, consumed, high), vms, from_pos, gap_ticks)


def start_position(reader: LogReader, from_pos: int, from_tick: int | None, consumed: int) -> int:
    """The position a split audit reports after: ``--from-tick`` resolved once, clamped to the cut."""
    if from_tick is not None:
        from_pos = position_of_tick(reader, from_tick, consumed)
    return max(0, min(from_pos, consumed))


def audit_in_processes(
    share: Callable[..., dict[str, VmReport]], argument_lists: Sequence[tuple[Any, ...]]
) -> dict[str, VmReport]:
    """``share(*arguments)`` for each argument list, one process each (forked where the platform
    can), the VM reports of all of them together."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=len(argument_lists), mp_context=context) as pool:
        futures = [pool.submit(share, *arguments) for arguments in argument_lists]
        reports: dict[str, VmReport] = {}
        for future in futures:
            reports.update(future.result())
    return reports


def merged_report(
    reader: LogReader,
    reports: dict[str, VmReport],
    *,
    config_of: tuple[EngineConfig, str],
    selected: Sequence[str],
    consumed: int,
    high: int,
    inbox_records: int,
    from_pos: int,
    compaction: dict[str, Any] | None = None,
) -> AuditReport:
    """The split audit's report: the shares' VM reports side by side, the first divergence over all
    of them, the counts of the whole inbox from the parent (equal to the one-process report)."""
    missing = sorted(set(selected) - set(reports))
    if missing:
        raise LogError(f"vm {missing[0]!r} does not appear in the log")
    ordered = {name: reports[name] for name in sorted(reports)}
    config, source = config_of
    return AuditReport(
        db=reader.path,
        config=config,
        config_source=source,
        consumed_position=consumed,
        inbox_high_watermark=high,
        inbox_records=inbox_records,
        vms=ordered,
        first_divergence=first_divergence(iter(r.comparison for r in ordered.values())),
        report_after=from_pos,
        selected_vms=tuple(selected),
        compaction=compaction,
    )


def split(vms: Sequence[str], jobs: int) -> list[list[str]]:
    """Round-robin over the sorted VMs: neighbouring names (often similar workloads) spread out."""
    parts: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(vms))))]
    for i, vm in enumerate(sorted(vms)):
        parts[i % len(parts)].append(vm)
    return parts


def audit_jobs(
    reader: SqliteReader,
    jobs: int,
    *,
    vms: Collection[str] | None = None,
    from_pos: int = 0,
    from_tick: int | None = None,
    gap_ticks: int = DEFAULT_GAP_TICKS,
    min_records: int = MIN_PARALLEL_RECORDS,
) -> AuditReport:
    """``audit(reader, ...)`` in up to ``jobs`` processes (one if the log is small)."""
    consumed = reader.consumed_position()
    high = reader.inbox_high_watermark()
    selected = sorted(set(vms or ()))
    names = selected or _vms_until(reader, consumed)
    if jobs <= 1 or len(names) <= 1 or consumed < min_records:
        return audit(reader, vms=selected or None, from_pos=from_pos, from_tick=from_tick, gap_ticks=gap_ticks)
    config_of = engine_config(reader)
    from_pos = start_position(reader, from_pos, from_tick, consumed)
    base = compacted.base_of(reader)
    arguments = [(reader.path, part, consumed, high, from_pos, gap_ticks) for part in split(names, jobs)]
    return merged_report(
        reader,
        audit_in_processes(_audit_part, arguments),
        config_of=config_of,
        selected=selected,
        consumed=consumed,
        high=high,
        inbox_records=_records_until(reader, consumed),
        from_pos=from_pos,
        compaction=compacted.section(base),
    )


def _vms_until(reader: SqliteReader, consumed: int) -> list[str]:
    """The VMs a whole audit reports: those with an inbox record up to ``consumed``, and those with
    recorded events for such records (forged rows for a VM the inbox never named included). Rows
    archived into segments (all consumed) name their VMs in ``archived``: without them a log older
    than one archiving would be audited in one process."""
    archived = " UNION SELECT vm FROM archived" if "archived" in reader.tables else ""  # (older logs: none)
    cur = reader._db.execute(
        "SELECT vm FROM inbox WHERE pos <= ? AND vm != ? UNION SELECT vm FROM events WHERE inbox_pos <= ?" + archived,
        (consumed, ALL_VMS, consumed),
    )
    # A compacted log: also the VMs only its summaries still name.
    return sorted({str(r[0]) for r in cur} | set(compacted.vms_at_cut(compacted.base_of(reader))))


def _records_until(reader: SqliteReader, consumed: int) -> int:
    """Inbox records up to ``consumed``: what a single-process audit counts as it reads them."""
    db = reader._db
    archived = segments.archived_until(db)
    live = db.execute("SELECT COUNT(*) FROM inbox WHERE pos > ? AND pos <= ?", (archived, consumed)).fetchone()
    if not archived:
        return int(live[0])
    packed = db.execute("SELECT COALESCE(SUM(inbox_rows), 0) FROM segments").fetchone()
    return int(live[0]) + int(packed[0])
