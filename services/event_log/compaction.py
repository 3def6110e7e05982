"""Retention for the embedded log: history older than a cut becomes snapshots plus per-VM summaries.

Why: the log is the source of truth and never forgets, so a host's disk fills (issue 14: ~470 GB a
day for a fleet of 10,000 VMs before compression). Segments (``segments.py``) shrink history
losslessly; retention goes further and *drops* it, keeping what is still needed:

* **a snapshot of every VM at the cut** (``VmState.to_snapshot``, the log's own mechanism), so the
  service recovers and the audit re-decides from the cut without any event before it: every
  stored event after the cut is still reproduced byte for byte (``replay_matches``);
* **a summary per VM** (``summaries.HistorySummary``): violations by reason, pages and bytes moved
  by balloon / unballoon / hot-add / hot-remove, the status-report cadence, inputs rejected -- what
  the audit reports for the dropped history, merged with what it folds after the cut;
* **the cut itself** (``compactions``: inbox position, its tick and wall time, when, by which hvdm
  version, what was removed), so every reader knows where the log begins.

The cut is the last inbox position stamped (``wall``, ``SqliteLog.append_inputs``) before the
limit; the engine never reads stamps, its clock stays ticks. It must be consumed: a compaction
never decides for the engine. Everything -- the states and summaries written, the inbox rows,
events, outbox messages and segments before the cut deleted -- is one transaction, so a ``kill -9``
leaves the old log or the new one; then ``VACUUM`` gives the pages back to the file system.

Positions never restart: the inbox row at the cut stays (as ``SqliteLog.archive`` keeps its last
row; SQLite numbers a new row after the largest live one) and readers start after the cut
(``segments.archived_until`` includes it). Event seqs go on from ``archived.last_seq``. Compacting
again moves the cut forward from the stored states and merges the summaries.

Only one writer: compaction takes the log's writer lock (``writer_lock.py``) and is refused while a
service holds it. ``--dry-run`` only reads (no lock, ``mode=ro``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import orjson

from ..dm_engine import events as ev
from ..dm_engine.decider import initial_state
from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.records import event_from_dict, loads, stored_event_json
from ..dm_engine.state import VmState
from ..dm_engine.step import fold_recorded
from . import segments
from .cut import SCHEMA, Cut, CutBase, read_base, read_cuts
from .sqlite_log import SqliteLog, check_log_file
from .summaries import HistorySummary
from .writer_lock import LogLockError, WriterLock

#: ``meta.log_format`` of a compacted log: history before the cut is gone (older readers would
#: replay from position 1 and find nothing to start from).
COMPACTED_FORMAT: Final = 4


class CompactionError(Exception):
    """The log cannot be compacted now; the message says why (one line)."""


@dataclass(slots=True)
class Result:
    """What a compaction did (or, with ``dry_run``, would do)."""

    db: str
    dry_run: bool
    limit_wall: float
    cut: Cut | None
    previous_pos: int
    vms: int = 0
    segments_removed: int = 0
    segments_split: int = 0
    bytes_before: int = 0
    bytes_after: int | None = None
    summaries: dict[str, HistorySummary] = field(default_factory=dict)
    #: Why ``VACUUM`` failed after the committed compaction (the file then keeps its free pages).
    vacuum_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``hvdm compact --json`` document."""
        ratio = None
        if self.bytes_after is not None and self.bytes_before:
            ratio = self.bytes_after / self.bytes_before
        return {
            "db": self.db,
            "dry_run": self.dry_run,
            "compacted": self.cut is not None and not self.dry_run,
            "limit_wall": self.limit_wall,
            "previous_cut_position": self.previous_pos,
            "cut": None if self.cut is None else self.cut.to_dict(),
            "vms": self.vms,
            "segments_removed": self.segments_removed,
            "segments_split": self.segments_split,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "size_ratio": ratio,
            "vacuum_error": self.vacuum_error,
            "summaries": {vm: s.to_dict() for vm, s in sorted(self.summaries.items())},
        }


def hvdm_version() -> str:
    """The installed distribution's version, recorded with each cut."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hvdm")
    except PackageNotFoundError:
        return "unknown"


def file_bytes(path: str | Path) -> int:
    """The log's size on disk: the file and its write-ahead log."""
    return sum(os.path.getsize(p) for p in (str(path), f"{path}-wal") if os.path.exists(p))


# ---------------------------------------------------------------------- the history before a cut
def _inbox(db: sqlite3.Connection, after: int, until: int) -> Iterator[tuple[int, int, float | None]]:
    """(pos, tick, wall) of the inbox rows with ``after < pos <= until``, archived ones included."""
    for p, _v, t, _k, _r, w in segments.segment_inbox(db, after, until):
        yield p, t, w
    start = max(after, segments.archived_until(db))
    cur = db.execute("SELECT pos, tick, wall FROM inbox WHERE pos > ? AND pos <= ? ORDER BY pos", (start, until))
    while rows := cur.fetchmany(5000):
        for p, t, w in rows:
            yield int(p), int(t), None if w is None else float(w)


def _events(db: sqlite3.Connection, after: int, until: int) -> Iterator[tuple[str, int, int, str, str | bytes]]:
    """(vm, seq, inbox_pos, kind, stored record) of the events of inbox rows in ``(after, until]``."""
    if segments.has_segments(db):
        cur = db.execute(
            "SELECT events FROM segments WHERE last_pos > ? AND first_pos <= ? ORDER BY first_pos", (after, until)
        )
        for (data,) in cur.fetchall():
            for _id, vm, seq, pos, kind, record in segments.unpack_events(data):
                if after < pos <= until:
                    yield vm, seq, pos, kind, record
    cur = db.execute(
        "SELECT vm, seq, inbox_pos, kind, record FROM events WHERE inbox_pos > ? AND inbox_pos <= ? ORDER BY id",
        (after, until),
    )
    while rows := cur.fetchmany(5000):
        yield from rows


def _find_cut(db: sqlite3.Connection, limit_wall: float, after: int) -> int:
    """The last inbox position stamped before ``limit_wall`` (0: none after ``after``).

    Live rows first; then the segments from the newest down, stopping at the first that holds
    such a stamp: it holds the largest such position, even if the host clock once stepped back."""
    live = db.execute("SELECT COALESCE(MAX(pos), 0) FROM inbox WHERE wall < ? AND pos > ?", (limit_wall, after))
    best = int(live.fetchone()[0])
    if not segments.has_segments(db):
        return best
    cur = db.execute("SELECT inbox FROM segments WHERE last_pos > ? ORDER BY first_pos DESC", (max(after, best),))
    for (data,) in cur.fetchall():
        found = [p for p, _v, _t, _k, _r, w in segments.unpack_inbox(data) if w is not None and w < limit_wall]
        if found:
            return max(best, max(found)) if max(found) > after else best
    return best


@dataclass(slots=True)
class _Fold:
    """States and summaries of every VM over ``(previous cut, cut]``, from the previous cut's base."""

    states: dict[str, VmState | None]
    seqs: dict[str, int]
    summaries: dict[str, HistorySummary]
    events: int = 0
    #: Tick and wall time of the inbox row at the cut.
    cut_tick: int = 0
    cut_wall: float | None = None


def _fold(db: sqlite3.Connection, base: CutBase | None, after: int, until: int) -> _Fold:
    states: dict[str, VmState | None] = {}
    seqs: dict[str, int] = {}
    if base is not None:
        seqs.update(base.seqs)
        states.update({vm: base.state(vm) for vm in base.seqs})
    summaries: dict[str, HistorySummary] = {}
    fold = _Fold(states, seqs, summaries)
    inbox = _inbox(db, after, until)
    pos, tick, wall = 0, 0, None
    for vm, seq, inbox_pos, kind, record in _events(db, after, until):
        while pos < inbox_pos:
            nxt = next(inbox, None)
            if nxt is None:
                raise CompactionError(f"event {vm} seq {seq} names inbox position {inbox_pos}, which is not in the log")
            pos, tick, wall = nxt
        if pos != inbox_pos:
            raise CompactionError(f"event {vm} seq {seq} names inbox position {inbox_pos}, which is not in the log")
        try:
            event = event_from_dict(loads(stored_event_json(record)))
        except Exception as exc:
            raise CompactionError(f"event {vm} seq {seq} ({kind}) does not read: {exc!r}") from None
        state = states.get(vm)
        # Forgotten: the engine holds no state for it (``step.forgets``) until it comes back.
        states[vm] = None if type(event) is ev.VmForgotten else fold_recorded(state or initial_state(vm), event)
        seqs[vm] = seq
        summary = summaries.get(vm)
        if summary is None:
            summary = summaries[vm] = HistorySummary(vm)
        summary.apply(event, inbox_pos, tick, wall)
        fold.events += 1
    for row in inbox:  # on to the row at the cut
        pos, tick, wall = row
    if pos != until:
        raise CompactionError(f"inbox position {until} is not in the log")
    fold.cut_tick, fold.cut_wall = tick, wall
    return fold


# ---------------------------------------------------------------------- compacting
def _connect_read_only(path: str) -> sqlite3.Connection:
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    db.execute("PRAGMA busy_timeout=10000")
    return db


def compact(
    path: str | Path,
    limit_wall: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
    stage: Callable[[str], None] | None = None,
) -> Result:
    """Compact the log at ``path``: history stamped before ``limit_wall`` (Unix time) is dropped,
    leaving snapshots, summaries and the cut (see the module docstring).

    Raises ``CompactionError`` when the log cannot be compacted now (in use, not consumed up to
    the cut, not a log) and ``NotAnHvdmLog`` for a file that is not an hvdm log."""
    path = str(path)
    say = stage or (lambda _s: None)
    if not check_log_file(path):
        raise CompactionError(f"{path}: no log there")
    lock: WriterLock | None = None
    if not dry_run:
        try:
            lock = WriterLock.acquire(path)
        except LogLockError as exc:
            raise CompactionError(f"{exc}; stop the service first (compaction rewrites the log)") from None
    try:
        previous, cut_pos = _probe(path, limit_wall)
        if cut_pos == 0:  # nothing to do: the file is left exactly as it was
            return Result(path, dry_run, limit_wall, None, previous, bytes_before=file_bytes(path))
        if not dry_run:
            SqliteLog(path).close()  # today's schema (an older log gains its columns), WAL mode
        db = _connect_read_only(path) if dry_run else sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=10000")
            return _compact(db, path, limit_wall, cut_pos, dry_run, time.time() if now is None else now, say)
        finally:
            db.close()
    finally:
        if lock is not None:
            lock.release()


def _probe(path: str, limit_wall: float) -> tuple[int, int]:
    """(previous cut, the new cut or 0), read without changing the file."""
    db = _connect_read_only(path)
    try:
        cuts = read_cuts(db)
        previous = cuts[-1].pos if cuts else 0
        if "wall" not in {str(r[1]) for r in db.execute("PRAGMA table_info(inbox)")}:
            return previous, 0  # a log from before wall-clock stamps: nothing is known to be old
        cut = _find_cut(db, limit_wall, previous)
        _check_consumed(db, cut)
        return previous, cut
    finally:
        db.close()


def _compact(
    db: sqlite3.Connection,
    path: str,
    limit_wall: float,
    cut_pos: int,
    dry_run: bool,
    now: float,
    say: Callable[[str], None],
) -> Result:
    bytes_before = file_bytes(path)
    if not dry_run:
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")
    try:
        result = _plan_and_write(db, path, limit_wall, cut_pos, dry_run, now, bytes_before, say)
        if not dry_run:
            say("commit")
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if dry_run or result.cut is None:
        result.bytes_before = bytes_before
        return result
    say("vacuum")
    try:
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        after = file_bytes(path)
        db.execute("UPDATE compactions SET bytes_after = ? WHERE cut_pos = ?", (after, result.cut.pos))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        result.cut = next(c for c in read_cuts(db) if c.pos == result.cut.pos)
    except sqlite3.Error as exc:
        # The compaction is committed; only the file did not shrink (VACUUM needs room for a copy
        # of the log in the WAL): the freed pages are reused by later writes.
        if db.in_transaction:
            db.execute("ROLLBACK")
        result.vacuum_error = str(exc)
    result.bytes_after = file_bytes(path)
    say("done")
    return result


def _plan_and_write(
    db: sqlite3.Connection,
    path: str,
    limit_wall: float,
    cut_pos: int,
    dry_run: bool,
    now: float,
    bytes_before: int,
    say: Callable[[str], None],
) -> Result:
    """``cut_pos`` was found by ``_probe`` (under the writer lock, so the log has not moved since)."""
    base = read_base(db)
    previous = 0 if base is None else base.cut.pos
    result = Result(path, dry_run, limit_wall, None, previous, bytes_before=bytes_before)
    if cut_pos <= previous:
        return result
    _check_consumed(db, cut_pos)
    say("fold")
    fold = _fold(db, base, previous, cut_pos)
    tick, wall = fold.cut_tick, fold.cut_wall
    merged: dict[str, HistorySummary] = {}
    for vm in sorted(set(fold.summaries) | set(base.summaries if base else {})):
        earlier = base.summaries.get(vm) if base else None
        now_part = fold.summaries.get(vm)
        if earlier is None:
            assert now_part is not None
            merged[vm] = now_part
        else:
            merged[vm] = earlier if now_part is None else earlier.merged(now_part)
    inbox_rows, event_rows = _counts(db, previous, cut_pos)
    outbox_rows = sum(n for _vm, _seq, n in _outbox_doomed(db, fold.seqs))
    version = hvdm_version()
    cut = Cut(cut_pos, tick, wall, limit_wall, now, version, inbox_rows, event_rows, outbox_rows, bytes_before, None)
    result.cut = cut
    result.vms = len(merged)
    result.summaries = merged
    result.segments_removed, result.segments_split = _segment_counts(db, cut_pos)
    if dry_run:
        return result
    say("write")
    _write(db, fold, merged, cut)
    say("delete")
    _delete(db, fold, cut_pos)
    return result


def _check_consumed(db: sqlite3.Connection, cut_pos: int) -> None:
    """A compaction never decides for the engine: everything before the cut must be consumed."""
    row = db.execute("SELECT pos FROM positions WHERE name = 'engine'").fetchone()
    consumed = 0 if row is None else int(row[0])
    if consumed < cut_pos:
        raise CompactionError(
            f"inbox records up to position {cut_pos} are older than the limit but the engine has consumed only up "
            f"to {consumed} ({cut_pos - consumed} unconsumed before the cut); run the service until it has "
            "processed them, then compact"
        )


def _counts(db: sqlite3.Connection, after: int, cut: int) -> tuple[int, int]:
    """Inbox rows and events that a cut at ``cut`` removes."""
    archived = segments.archived_until(db)
    live = db.execute("SELECT COUNT(*) FROM inbox WHERE pos > ? AND pos < ?", (max(after, archived), cut))
    inbox = int(live.fetchone()[0])
    events = int(db.execute("SELECT COUNT(*) FROM events WHERE inbox_pos <= ?", (cut,)).fetchone()[0])
    if segments.has_segments(db):
        for first, last, inbox_rows, event_rows in db.execute(
            "SELECT first_pos, last_pos, inbox_rows, event_rows FROM segments WHERE first_pos <= ?", (cut,)
        ).fetchall():
            if last <= cut:
                inbox += int(inbox_rows)
                events += int(event_rows)
            else:
                data = db.execute("SELECT inbox, events FROM segments WHERE first_pos = ?", (first,)).fetchone()
                inbox += sum(1 for r in segments.unpack_inbox(data[0]) if r[0] <= cut)
                events += sum(1 for e in segments.unpack_events(data[1]) if e[3] <= cut)
    return inbox, events


def _segment_counts(db: sqlite3.Connection, cut: int) -> tuple[int, int]:
    if not segments.has_segments(db):
        return 0, 0
    removed = int(db.execute("SELECT COUNT(*) FROM segments WHERE last_pos <= ?", (cut,)).fetchone()[0])
    split = int(
        db.execute("SELECT COUNT(*) FROM segments WHERE first_pos <= ? AND last_pos > ?", (cut, cut)).fetchone()[0]
    )
    return removed, split


def _outbox_doomed(db: sqlite3.Connection, seqs: dict[str, int]) -> list[tuple[str, int, int]]:
    """(vm, last event seq at the cut, outbox rows to delete): the messages of events up to the cut,
    but never a VM's last one (the next message is numbered after it, and a gateway resumes by it)."""
    out = []
    for vm, seq in sorted(seqs.items()):
        row = db.execute(
            "SELECT COUNT(*) FROM outbox WHERE vm = ? AND event_seq <= ?"
            " AND seq < (SELECT MAX(seq) FROM outbox WHERE vm = ?)",
            (vm, seq, vm),
        ).fetchone()
        if int(row[0]):
            out.append((vm, seq, int(row[0])))
    return out


def _write(db: sqlite3.Connection, fold: _Fold, merged: dict[str, HistorySummary], cut: Cut) -> None:
    for vm, summary in merged.items():
        state = fold.states.get(vm)
        db.execute(
            "INSERT OR REPLACE INTO compacted (vm, seq, state, summary) VALUES (?, ?, ?, ?)",
            (
                vm,
                fold.seqs.get(vm, 0),
                None if state is None else zlib.compress(orjson.dumps(state.to_snapshot()), 6),
                json.dumps(summary.to_dict(), separators=(",", ":")),
            ),
        )
    # Recovery must never need an event before the cut: a snapshot older than the cut is replaced
    # by the one at the cut (or dropped, for a VM the engine no longer held there).
    for vm, _seq, pos in db.execute("SELECT vm, seq, inbox_pos FROM snapshots").fetchall():
        if int(pos) <= cut.pos and fold.states.get(str(vm)) is None:
            db.execute("DELETE FROM snapshots WHERE vm = ?", (vm,))
    for vm, state in fold.states.items():
        if state is None:
            continue
        row = db.execute("SELECT inbox_pos FROM snapshots WHERE vm = ?", (vm,)).fetchone()
        if row is None or int(row[0]) < cut.pos:
            db.execute(
                "INSERT OR REPLACE INTO snapshots (vm, seq, inbox_pos, state) VALUES (?, ?, ?, ?)",
                (vm, fold.seqs[vm], cut.pos, json.dumps(state.to_snapshot(), separators=(",", ":"))),
            )
    db.executemany(
        "INSERT INTO archived (vm, last_seq) VALUES (?, ?)"
        " ON CONFLICT (vm) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
        [(vm, seq) for vm, seq in fold.seqs.items() if vm != ALL_VMS],
    )
    db.execute(
        "INSERT INTO compactions (cut_pos, cut_tick, cut_wall, limit_wall, compacted_at, version, inbox_rows,"
        " event_rows, outbox_rows, bytes_before, bytes_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        (
            cut.pos,
            cut.tick,
            cut.wall,
            cut.limit_wall,
            cut.compacted_at,
            cut.version,
            cut.inbox_rows,
            cut.event_rows,
            cut.outbox_rows,
            cut.bytes_before,
        ),
    )
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('log_format', ?)", (str(COMPACTED_FORMAT),))


def _delete(db: sqlite3.Connection, fold: _Fold, cut: int) -> None:
    for vm, last, _n in _outbox_doomed(db, fold.seqs):
        db.execute(
            "DELETE FROM outbox WHERE vm = ? AND event_seq <= ? AND seq < (SELECT MAX(seq) FROM outbox WHERE vm = ?)",
            (vm, last, vm),
        )
    db.execute("DELETE FROM events WHERE inbox_pos <= ?", (cut,))
    # The row at the cut stays: positions go on after the largest live row (see the docstring).
    db.execute("DELETE FROM inbox WHERE pos < ?", (cut,))
    if not segments.has_segments(db):
        return
    db.execute("DELETE FROM segments WHERE last_pos <= ?", (cut,))
    for first, last, inbox_blob, events_blob in db.execute(
        "SELECT first_pos, last_pos, inbox, events FROM segments WHERE first_pos <= ?", (cut,)
    ).fetchall():
        inbox = [r for r in segments.unpack_inbox(inbox_blob) if r[0] > cut]
        events = [e for e in segments.unpack_events(events_blob) if e[3] > cut]
        db.execute("DELETE FROM segments WHERE first_pos = ?", (first,))
        db.execute(
            "INSERT INTO segments (first_pos, last_pos, inbox_rows, event_rows, inbox, events)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (cut + 1, last, len(inbox), len(events), segments.pack_inbox(inbox), segments.pack_events(events)),
        )
