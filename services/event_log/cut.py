"""Where a compacted log begins: the cuts, and per VM its state and summary at the latest one.

Written by ``compaction.py`` (which says why and how), read by every reader of the log: the
service's recovery needs none of it (snapshots at the cut are in ``snapshots``), but audits start
their replay from these states and report these summaries (``services.audit.compacted``).
"""

from __future__ import annotations

import sqlite3
import zlib
from dataclasses import dataclass
from typing import Any, Final

from ..dm_engine.records import loads
from ..dm_engine.state import VmState
from .summaries import HistorySummary

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS compactions (
    id INTEGER PRIMARY KEY,
    cut_pos INTEGER NOT NULL,
    cut_tick INTEGER NOT NULL,
    cut_wall REAL,
    limit_wall REAL NOT NULL,
    compacted_at REAL NOT NULL,
    version TEXT NOT NULL,
    inbox_rows INTEGER NOT NULL,
    event_rows INTEGER NOT NULL,
    outbox_rows INTEGER NOT NULL,
    bytes_before INTEGER NOT NULL,
    bytes_after INTEGER
);
CREATE TABLE IF NOT EXISTS compacted (
    vm TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT,
    summary TEXT NOT NULL
);
"""

#: Tables a compacted log adds (``sqlite_log.KNOWN_TABLES`` lists them).
TABLES: Final = frozenset({"compactions", "compacted"})


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a compacted log begins: history up to ``pos`` is summarised, not stored."""

    pos: int
    tick: int
    wall: float | None
    limit_wall: float
    compacted_at: float
    version: str
    inbox_rows: int
    event_rows: int
    outbox_rows: int
    bytes_before: int
    bytes_after: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.pos,
            "tick": self.tick,
            "wall": self.wall,
            "limit_wall": self.limit_wall,
            "compacted_at": self.compacted_at,
            "version": self.version,
            "inbox_rows_removed": self.inbox_rows,
            "event_rows_removed": self.event_rows,
            "outbox_rows_removed": self.outbox_rows,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
        }


@dataclass(frozen=True, slots=True)
class CutBase:
    """What a compacted log starts from: the cuts (oldest first) and, per VM, its last seq at the
    latest cut, its state there (None: not held by the engine then) and its summary."""

    cuts: tuple[Cut, ...]
    seqs: dict[str, int]
    #: Snapshots (``VmState.to_snapshot``) of the VMs the engine held at the cut.
    snapshots: dict[str, dict[str, Any]]
    summaries: dict[str, HistorySummary]

    @property
    def cut(self) -> Cut:
        return self.cuts[-1]

    def state(self, vm: str) -> VmState | None:
        """A fresh copy of ``vm``'s state at the cut (states are mutable: every user gets its own)."""
        snap = self.snapshots.get(vm)
        return None if snap is None else VmState.from_snapshot(snap)


def has_tables(db: sqlite3.Connection) -> bool:
    row = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('compactions', 'compacted')")
    return int(row.fetchone()[0]) == 2


def read_cuts(db: sqlite3.Connection) -> tuple[Cut, ...]:
    if not has_tables(db):
        return ()
    cur = db.execute(
        "SELECT cut_pos, cut_tick, cut_wall, limit_wall, compacted_at, version, inbox_rows, event_rows,"
        " outbox_rows, bytes_before, bytes_after FROM compactions ORDER BY cut_pos"
    )
    return tuple(_cut(row) for row in cur)


def _cut(row: tuple[Any, ...]) -> Cut:
    """A ``compactions`` row, checked: an edited file is reported as damaged, not as a crash later."""
    pos, tick, wall, limit, at, version, inbox, events, outbox, before, after = row
    ints = (pos, tick, inbox, events, outbox, before) + (() if after is None else (after,))
    reals = (limit, at) + (() if wall is None else (wall,))
    if not all(type(v) is int and v >= 0 for v in ints) or not all(type(v) in (int, float) for v in reals):
        raise sqlite3.DatabaseError(f"compactions row at position {pos!r} does not read: {row!r}")
    return Cut(
        pos,
        tick,
        None if wall is None else float(wall),
        float(limit),
        float(at),
        str(version),
        inbox,
        events,
        outbox,
        before,
        after,
    )


def read_base(db: sqlite3.Connection) -> CutBase | None:
    """What a compacted log starts from, or None for a log never compacted.

    Raises ``sqlite3.DatabaseError`` for a stored state or summary that does not read (the file
    was damaged or edited), like every other damaged row."""
    cuts = read_cuts(db)
    if not cuts:
        return None
    seqs: dict[str, int] = {}
    snapshots: dict[str, dict[str, Any]] = {}
    summaries: dict[str, HistorySummary] = {}
    for vm, seq, state, summary in db.execute("SELECT vm, seq, state, summary FROM compacted ORDER BY vm"):
        try:
            seqs[str(vm)] = int(seq)
            if state is not None:
                # A BLOB is the snapshot's JSON, zlib-compressed (what ``compaction`` writes: it is
                # kept once per VM for good); TEXT is plain JSON.
                snapshots[str(vm)] = loads(zlib.decompress(state) if isinstance(state, bytes) else state)
                VmState.from_snapshot(snapshots[str(vm)])  # reads, or the row is damaged
            summaries[str(vm)] = HistorySummary.from_dict(loads(summary))
        except Exception as exc:  # an edited row is a damaged file, reported as one
            raise sqlite3.DatabaseError(f"compacted row of vm {vm!r} does not read: {exc!r}") from None
    return CutBase(cuts, seqs, snapshots, summaries)
