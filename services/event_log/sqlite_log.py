"""The embedded log: inbox, event log, outbox, snapshots and positions in one SQLite file.

One file, WAL mode, and every engine step commits its events, outbox messages, snapshots and the
consumed inbox position in a single transaction, so a ``kill -9`` at any instant leaves either
all of a step or none of it: restarting re-decides exactly the inputs whose effects were lost.
WAL with ``synchronous=NORMAL`` survives process crashes (not power loss, which needs FULL).

Why the file is marked and checked: the log is the source of truth, so ``SqliteLog`` refuses to
add its tables to a file that is not an hvdm log (another application's database, or not SQLite
at all). An hvdm log carries ``PRAGMA application_id`` = ``APPLICATION_ID``; a log written before
the marker existed is recognised by its tables and marked in place.

Why writes raise ``LogWriteError``: a full disk, an I/O error or a read-only file must be told
apart from a bug, and must never leave half a transaction behind. Every write is one
transaction; a failed one is rolled back (SQLite has often rolled it back already, so ROLLBACK
itself must not fail and hide the cause, which is what ``cannot rollback - no transaction is
active`` used to do) and reported as ``LogWriteError(kind)``, and the log keeps count
(``write_errors``, ``writable``) so metrics and the service's retry loops can see the outage.
Retrying a failed write is safe: nothing of it is in the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote

import orjson

from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.records import LOG_FORMAT, stored_event_json, stored_input, stored_input_dict
from . import segments
from .cut import CutBase, read_base

log = logging.getLogger("hvdm.log")

#: Records are parsed with orjson (about four times faster than json.loads, same values).
_loads = orjson.loads
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))

#: ``PRAGMA application_id`` of an hvdm log: "hvdm" in ASCII (``file(1)`` and we can tell the file).
APPLICATION_ID: Final = 0x6876646D

#: Tables every hvdm log has had since the first version, and every table it may have: a file
#: holding the first and nothing beyond the second is an hvdm log written before the marker.
CORE_TABLES: Final = frozenset({"meta", "inbox", "events", "outbox", "positions"})
KNOWN_TABLES: Final = CORE_TABLES | {"snapshots", "segments", "archived", "compactions", "compacted"}

#: ``LogWriteError.kind`` values, each a series of ``hvdm_log_write_errors_total{kind}``.
WRITE_ERROR_KINDS: Final = ("full", "io", "readonly", "busy", "other")

#: SQLite primary result codes -> kind (``sqlite3.Error.sqlite_errorcode`` & 0xFF).
_KIND_OF_CODE: Final = {13: "full", 10: "io", 14: "io", 8: "readonly", 5: "busy", 6: "busy"}
_KIND_OF_MESSAGE: Final = (
    ("disk is full", "full"),
    ("disk i/o error", "io"),
    ("unable to open", "io"),
    ("readonly database", "readonly"),
    ("database is locked", "busy"),
    ("database table is locked", "busy"),
)


class NotAnHvdmLog(Exception):
    """The file exists but is not an hvdm log: refused rather than given hvdm's tables."""


class LogWriteError(sqlite3.OperationalError):
    """A write transaction failed for a reason outside the program and was rolled back.

    ``kind`` is one of :data:`WRITE_ERROR_KINDS`. Nothing of the failed transaction is in the
    log, so the same write may be retried once the cause (a full disk, say) has gone.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def write_error_kind(exc: sqlite3.Error) -> str:
    """What kind of outage ``exc`` is: by SQLite's result code, else by its message.

    >>> write_error_kind(sqlite3.OperationalError("database or disk is full"))
    'full'
    >>> write_error_kind(sqlite3.OperationalError("no such table: x"))
    'other'
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _KIND_OF_CODE:
        return _KIND_OF_CODE[code & 0xFF]
    text = str(exc).lower()
    for needle, kind in _KIND_OF_MESSAGE:
        if needle in text:
            return kind
    return "other"


_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (
    pos INTEGER PRIMARY KEY,
    vm TEXT NOT NULL,
    tick INTEGER NOT NULL,
    kind TEXT NOT NULL,
    record TEXT NOT NULL,
    decoded TEXT,
    wall REAL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    vm TEXT NOT NULL,
    seq INTEGER NOT NULL,
    inbox_pos INTEGER NOT NULL,
    kind TEXT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (vm, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    vm TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event_seq INTEGER NOT NULL,
    message BLOB NOT NULL,
    UNIQUE (vm, seq)
);
CREATE TABLE IF NOT EXISTS snapshots (
    vm TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    inbox_pos INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (name TEXT PRIMARY KEY, pos INTEGER NOT NULL);
"""
    + segments.SCHEMA
)

#: ``meta.log_format`` once history has been archived into segments (older readers would miss it).
ARCHIVED_FORMAT = 3


@dataclass(frozen=True, slots=True)
class InboxRow:
    pos: int
    vm: str
    tick: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventRow:
    vm: str
    seq: int
    inbox_pos: int
    record: str  # canonical JSON (whichever form is stored), compared byte for byte by audits


@dataclass(frozen=True, slots=True)
class OutboxRow:
    vm: str
    seq: int
    event_seq: int
    message: bytes


class StepWrite(Protocol):
    """Everything one processed inbox record produced for one VM (``dm_engine.step.Processed``
    is one: the runner hands its results over as they are, without building a row object each)."""

    @property
    def vm(self) -> str: ...
    @property
    def inbox_pos(self) -> int: ...
    @property
    def events(self) -> Sequence[HasKind]: ...
    @property
    def records(self) -> Sequence[str | bytes]: ...  # canonical JSON or compact form, one per event
    @property
    def outbox(self) -> Sequence[tuple[int, bytes]]: ...  # (index into events, encoded DM message)


class HasKind(Protocol):
    """An event, as far as the log is concerned: its type's name goes in the ``kind`` column."""

    @property
    def KIND(self) -> str: ...


def _identify(db: sqlite3.Connection, path: str) -> int:
    """``db``'s application_id if it is empty or an hvdm log, else ``NotAnHvdmLog``. Reads only."""
    try:
        app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise NotAnHvdmLog(f"{path}: not an SQLite database ({exc}); refusing to use it as the log") from None
    if app_id not in (0, APPLICATION_ID):
        raise NotAnHvdmLog(
            f"{path}: SQLite file of another application (application_id 0x{app_id:08x}); "
            "refusing to add hvdm's tables to it"
        )
    if app_id == 0 and tables and not (CORE_TABLES <= tables <= KNOWN_TABLES):
        shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        raise NotAnHvdmLog(f"{path}: not an hvdm log (it holds the tables {shown}); refusing to add hvdm's tables")
    return app_id


def check_log_file(path: str | Path) -> bool:
    """True if ``path`` is an hvdm log, False if there is nothing there yet (missing or empty file);
    ``NotAnHvdmLog`` otherwise. Opens the file read-only and changes nothing."""
    file = Path(path)
    if not file.exists() or (file.is_file() and file.stat().st_size == 0):
        return False
    if not file.is_file():
        raise NotAnHvdmLog(f"{path}: not a regular file; refusing to use it as the log")
    uri = f"file:{quote(str(file.resolve()))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise NotAnHvdmLog(f"{path}: cannot be opened ({exc})") from None
    try:
        return _identify(db, str(path)) != 0 or bool(
            db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone()
        )
    finally:
        db.close()


#: Event rows per INSERT statement: 5 columns each, 500 variables (any SQLite allows 999).
_ROWS_PER_INSERT: Final = 100
_EVENT_COLUMNS: Final = 5
_INSERT_EVENTS: dict[int, str] = {}


def _insert_events(db: sqlite3.Connection, flat: list[Any]) -> None:
    """Insert event rows given as their columns, flat and in order.

    Rows go ``_ROWS_PER_INSERT`` to a statement, the rest in power-of-two chunks (so the connection's
    statement cache holds a handful of shapes, not one per remainder). One statement of many rows
    costs SQLite and the binding about 0.3-0.5 us less per row than ``executemany`` of one-row
    statements (measured on the status-report batches of ``bench/engine.py``); the rows still get
    their ids in order."""
    width = _EVENT_COLUMNS
    k = 0
    left = len(flat) // width
    while left:
        rows = _ROWS_PER_INSERT if left >= _ROWS_PER_INSERT else 1 << (left.bit_length() - 1)
        sql = _INSERT_EVENTS.get(rows)
        if sql is None:
            values = ",".join(["(?,?,?,?,?)"] * rows)
            sql = _INSERT_EVENTS[rows] = f"INSERT INTO events (vm, seq, inbox_pos, kind, record) VALUES {values}"
        db.execute(sql, flat[k : k + rows * width])
        k += rows * width
        left -= rows


class SqliteLog:
    """All three logs in one file. Not thread-safe: one instance per thread (asyncio: one loop)."""

    def __init__(self, path: str | Path, *, connect: Callable[..., sqlite3.Connection] = sqlite3.connect) -> None:
        """``connect`` opens the connection (``sqlite3.connect``; fault-injection tests wrap it)."""
        self.path = str(path)
        #: False from a failed write until the next successful one (``hvdm_log_writable``).
        self.writable = True
        #: Failed write transactions by kind (``hvdm_log_write_errors_total``).
        self.write_errors: dict[str, int] = dict.fromkeys(WRITE_ERROR_KINDS, 0)
        self._unwritable_since = 0.0
        self._failed_since_writable = 0
        if Path(path).exists() and not Path(path).is_file():
            raise NotAnHvdmLog(f"{path}: not a regular file; refusing to use it as the log")
        self._db = connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA busy_timeout=10000")
            self._adopt()
        except BaseException:
            self._db.close()
            raise
        self._next_event_seq: dict[str, int] = {}
        self._next_outbox_seq: dict[str, int] = {}
        self._archived_until = segments.archived_until(self._db)

    def _adopt(self) -> None:
        """Check the file is empty or an hvdm log (before writing anything), then set it up."""
        db = self._db
        app_id = _identify(db, self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        columns = {str(r[1]) for r in db.execute("PRAGMA table_info(inbox)")}
        if "wall" not in columns:
            # A log from before wall-clock stamps: its old rows stay NULL (audits say so).
            db.execute("ALTER TABLE inbox ADD COLUMN wall REAL")
        if app_id == 0:
            # A new file, or an hvdm log from before the marker: mark it.
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        stored = db.execute("SELECT value FROM meta WHERE key = 'log_format'").fetchone()
        if stored is None or int(stored[0]) < LOG_FORMAT:
            # Rows say their own form (TEXT = JSON, BLOB = compact), so a format-1 log simply goes on
            # as format 2; the key tells an older reader that it may meet rows it cannot read.
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('log_format', ?)", (str(LOG_FORMAT),))

    def close(self) -> None:
        """Close the connection; SQLite checkpoints the WAL into the file and removes it, so a
        cleanly closed log is one self-contained file (which an immutable read-only open needs)."""
        self._db.close()

    # ------------------------------------------------------------------ write transactions
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it committed, or none of it and a ``LogWriteError``."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.OperationalError as exc:
            raise self._write_failed(exc) from exc
        if not self.writable:
            self._write_recovered()

    def _rollback(self) -> None:
        # SQLite rolls a transaction back by itself after e.g. SQLITE_FULL; a second ROLLBACK
        # would raise "no transaction is active" and hide the real error.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("event=log_rollback_failed path=%s error=%r", self.path, str(exc))

    def _write_failed(self, exc: sqlite3.OperationalError) -> LogWriteError:
        kind = exc.kind if isinstance(exc, LogWriteError) else write_error_kind(exc)
        self.write_errors[kind] = self.write_errors.get(kind, 0) + 1
        self._failed_since_writable += 1
        if self.writable:
            self.writable = False
            self._unwritable_since = time.monotonic()
            log.error("event=log_unwritable path=%s kind=%s error=%r; writes are retried", self.path, kind, str(exc))
        return exc if isinstance(exc, LogWriteError) else LogWriteError(kind, f"event log write failed: {exc}")

    def _write_recovered(self) -> None:
        log.warning(
            "event=log_writable path=%s after_seconds=%.1f failed_writes=%d",
            self.path,
            time.monotonic() - self._unwritable_since,
            self._failed_since_writable,
        )
        self.writable = True
        self._failed_since_writable = 0

    # ------------------------------------------------------------------ meta and positions
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_position(self, name: str) -> int:
        row = self._db.execute("SELECT pos FROM positions WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_position(self, name: str, pos: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO positions (name, pos) VALUES (?, ?)", (name, pos))

    # ------------------------------------------------------------------ inbox
    def append_inputs(
        self, rows: Iterable[tuple[str, int, dict[str, Any], str | None]], meta: dict[str, str] | None = None
    ) -> int:
        """Append (vm, tick, input record, decoded JSON or None) rows atomically; returns the last pos.

        ``meta`` keys are set in the same transaction (the clock's ``last_tick`` moves with its ticks).
        The decoded copy is no longer stored (format 2): it repeated the raw guest bytes, which the
        record keeps and today's decoder reads again. The ``decoded`` column stays for old files.

        Each row is stamped with the Unix time of the append (``wall``), so audits can be lined up
        with other logs and cut at a wall-clock time. The stamp is beside the record, not in it: the
        engine never sees it (ticks stay its only clock) and replays do not depend on it."""
        last = 0
        wall = time.time()
        with self._transaction() as db:
            for vm, tick, record, _decoded in rows:
                cur = db.execute(
                    "INSERT INTO inbox (vm, tick, kind, record, wall) VALUES (?, ?, ?, ?, ?)",
                    (vm, tick, record["type"], stored_input(record, tick), wall),
                )
                last = int(cur.lastrowid or 0)
            for key, value in (meta or {}).items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        return last

    def append_input(self, vm: str, tick: int, record: dict[str, Any], decoded: str | None = None) -> int:
        return self.append_inputs([(vm, tick, record, decoded)])

    def read_inbox(self, after: int, limit: int = 1000, vm: str | None = None) -> list[InboxRow]:
        if after < self._archived_until - 1:  # (the row at the cut is still live: see archive)
            rows = (r for r in self.iter_inbox(after) if vm is None or r.vm in (vm, ALL_VMS))
            return [r for _, r in zip(range(limit), rows, strict=False)]
        if vm is None:
            cur = self._db.execute(
                "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? ORDER BY pos LIMIT ?", (after, limit)
            )
        else:
            cur = self._db.execute(
                "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? AND vm IN (?, ?) ORDER BY pos LIMIT ?",
                (after, vm, ALL_VMS, limit),
            )
        return [InboxRow(p, v, t, stored_input_dict(r, t)) for p, v, t, r in cur]

    def read_inbox_stored(self, after: int, limit: int = 1000) -> list[tuple[int, str, int, str | bytes]]:
        """``read_inbox`` for the engine: (pos, vm, tick, stored record) as the table holds them.

        The record stays in its stored form (``records.stored_input``) for ``step.read_stored``,
        which builds the input without the dict (and, for guest bytes, the hex) a reader needs."""
        if after < self._archived_until - 1:
            out: list[tuple[int, str, int, str | bytes]] = []
            for p, v, t, _kind, r, _wall in segments.segment_inbox(self._db, after, None):
                if len(out) >= limit:
                    return out
                out.append((p, v, t, r))
            after = max(after, self._archived_until)
            if len(out) >= limit:
                return out
            limit -= len(out)
            cur = self._db.execute(
                "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? ORDER BY pos LIMIT ?", (after, limit)
            )
            return out + cur.fetchall()
        return self._db.execute(
            "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? ORDER BY pos LIMIT ?", (after, limit)
        ).fetchall()

    def inbox_high_watermark(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(pos), 0) FROM inbox").fetchone()
        return int(row[0])

    def iter_inbox(self, after: int = 0, until: int | None = None, batch: int = 5000) -> Iterator[InboxRow]:
        for p, v, t, _kind, r, _wall in segments.segment_inbox(self._db, after, until):
            yield InboxRow(p, v, t, stored_input_dict(r, t))
        pos = max(after, self._archived_until)
        while True:
            rows = self.read_inbox(pos, batch)
            for row in rows:
                if until is not None and row.pos > until:
                    return
                yield row
            if len(rows) < batch:
                return
            pos = rows[-1].pos

    # ------------------------------------------------------------------ engine commits
    def consumed_position(self) -> int:
        return self.get_position("engine")

    def _next_seq(self, cache: dict[str, int], table: str, vm: str) -> int:
        seq = cache.get(vm)
        if seq is None:
            row = self._db.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {table} WHERE vm = ?", (vm,)).fetchone()
            seq = int(row[0]) + 1
            if table == "events" and seq == 1:
                archived = self._db.execute("SELECT last_seq FROM archived WHERE vm = ?", (vm,)).fetchone()
                seq = 1 if archived is None else int(archived[0]) + 1
        return seq

    def commit_step(
        self,
        writes: Sequence[StepWrite],
        consumed_pos: int,
        snapshots: Sequence[tuple[str, int, int, str]] = (),
    ) -> None:
        """Append events and outbox messages, replace snapshots and move the consumed position,
        all in one transaction."""
        ev_seq: dict[str, int] = {}
        ob_seq: dict[str, int] = {}
        # The event rows' columns, flat, in order: bound to multi-row INSERTs (see _insert_events).
        # One pass building them: this runs once per event the engine decides, so the common
        # one-event write takes a path without a comprehension of its own.
        flat: list[Any] = []
        extend = flat.extend
        outbox_rows: list[tuple[str, int, int, bytes]] = []
        next_seq = self._next_seq
        cached = self._next_event_seq
        for w in writes:
            vm = w.vm
            first = ev_seq.get(vm) or next_seq(cached, "events", vm)
            records = w.records
            events = w.events
            n = len(records)
            if n == 1:
                extend((vm, first, w.inbox_pos, events[0].KIND, records[0]))
            else:
                if len(events) != n:
                    raise ValueError(f"{vm}: {len(events)} events but {n} records")
                pos = w.inbox_pos
                for i in range(n):
                    extend((vm, first + i, pos, events[i].KIND, records[i]))
            ev_seq[vm] = first + n
            if w.outbox:
                oseq = ob_seq.get(vm) or next_seq(self._next_outbox_seq, "outbox", vm)
                outbox_rows.extend((vm, oseq + i, first + idx, msg) for i, (idx, msg) in enumerate(w.outbox))
                ob_seq[vm] = oseq + len(w.outbox)
        with self._transaction() as db:
            _insert_events(db, flat)
            if outbox_rows:
                db.executemany("INSERT INTO outbox (vm, seq, event_seq, message) VALUES (?, ?, ?, ?)", outbox_rows)
            for vm, seq, inbox_pos, state in snapshots:
                db.execute(
                    "INSERT OR REPLACE INTO snapshots (vm, seq, inbox_pos, state) VALUES (?, ?, ?, ?)",
                    (vm, seq, inbox_pos, state),
                )
            db.execute("INSERT OR REPLACE INTO positions (name, pos) VALUES ('engine', ?)", (consumed_pos,))
        self._next_event_seq.update(ev_seq)
        self._next_outbox_seq.update(ob_seq)

    # ------------------------------------------------------------------ reading back
    def vms(self) -> list[str]:
        cur = self._db.execute("SELECT DISTINCT vm FROM inbox WHERE vm != ? ORDER BY vm", (ALL_VMS,))
        live = [str(r[0]) for r in cur]
        if not self._archived_until:
            return live
        return sorted(set(live) | set(segments.archived_vms(self._db)) - {ALL_VMS})

    def snapshot(self, vm: str) -> tuple[int, int, dict[str, Any]] | None:
        row = self._db.execute("SELECT seq, inbox_pos, state FROM snapshots WHERE vm = ?", (vm,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), json.loads(row[2]))

    def compaction_base(self) -> CutBase | None:
        """Where a compacted log begins (``compaction.py``); None if it was never compacted."""
        return read_base(self._db)

    def snapshots(self) -> list[tuple[str, int, int, dict[str, Any]]]:
        cur = self._db.execute("SELECT vm, seq, inbox_pos, state FROM snapshots ORDER BY vm")
        return [(str(v), int(s), int(p), json.loads(st)) for v, s, p, st in cur]

    def iter_events(self, vm: str | None = None, after_seq: int = 0) -> Iterator[EventRow]:
        for _id, v, s, p, _kind, r in segments.segment_events(self._db, vm, after_seq):
            yield EventRow(v, s, p, stored_event_json(r))
        if vm is None:
            cur = self._db.execute("SELECT vm, seq, inbox_pos, record FROM events ORDER BY id")
        else:
            cur = self._db.execute(
                "SELECT vm, seq, inbox_pos, record FROM events WHERE vm = ? AND seq > ? ORDER BY seq",
                (vm, after_seq),
            )
        for v, s, p, r in cur:
            yield EventRow(v, s, p, stored_event_json(r))

    def event_count(self) -> int:
        live = int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return live + segments.archived_event_count(self._db)

    # ------------------------------------------------------------------ archiving
    @property
    def archived_until(self) -> int:
        return self._archived_until

    def archive(self, until: int, snapshots: Sequence[tuple[str, int, int, str]] = ()) -> int:
        """Move consumed history up to inbox position ``until`` into one compressed segment, with
        ``snapshots`` replaced in the same transaction; returns the inbox rows archived.

        The caller passes snapshots for every VM whose archived events are newer than its snapshot,
        so recovery never has to read a segment. The row at ``until`` stays in the live inbox too
        (skipped by readers): SQLite numbers a new row after the largest live one, and positions
        must never restart."""
        until = min(until, self.consumed_position())
        start = self._archived_until
        if until <= start:
            return 0
        with self._transaction() as db:
            inbox = db.execute(
                "SELECT pos, vm, tick, kind, record, wall FROM inbox WHERE pos > ? AND pos <= ? ORDER BY pos",
                (start, until),
            ).fetchall()
            events = db.execute(
                "SELECT id, vm, seq, inbox_pos, kind, record FROM events WHERE inbox_pos <= ? ORDER BY id", (until,)
            ).fetchall()
            if not inbox:
                return 0
            db.execute(
                "INSERT INTO segments (first_pos, last_pos, inbox_rows, event_rows, inbox, events)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (start + 1, until, len(inbox), len(events), segments.pack_inbox(inbox), segments.pack_events(events)),
            )
            last: dict[str, int] = {str(row[1]): 0 for row in inbox if row[1] != ALL_VMS}
            for _, vm, seq, _, _, _ in events:
                last[vm] = max(last.get(vm, 0), int(seq))
            db.executemany(
                "INSERT INTO archived (vm, last_seq) VALUES (?, ?)"
                " ON CONFLICT (vm) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
                list(last.items()),
            )
            db.execute("DELETE FROM events WHERE inbox_pos <= ?", (until,))
            db.execute("DELETE FROM inbox WHERE pos < ?", (until,))
            for vm, seq, inbox_pos, state in snapshots:
                db.execute(
                    "INSERT OR REPLACE INTO snapshots (vm, seq, inbox_pos, state) VALUES (?, ?, ?, ?)",
                    (vm, seq, inbox_pos, state),
                )
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('log_format', ?)", (str(ARCHIVED_FORMAT),))
        self._archived_until = until
        return len(inbox)

    def read_outbox(self, vm: str, after_seq: int, limit: int = 1000) -> list[OutboxRow]:
        cur = self._db.execute(
            "SELECT vm, seq, event_seq, message FROM outbox WHERE vm = ? AND seq > ? ORDER BY seq LIMIT ?",
            (vm, after_seq, limit),
        )
        return [OutboxRow(str(v), int(s), int(e), bytes(m)) for v, s, e, m in cur]

    def outbox_high_watermark(self, vm: str) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE vm = ?", (vm,)).fetchone()
        return int(row[0])
