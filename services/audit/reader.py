"""What an audit reads: the ``LogReader`` interface, and a read-only SQLite reader for it.

Why an interface: audits must run on every deployment's log -- the embedded SQLite file and the
Kafka topics -- and on logs written by older versions. Everything in ``services.audit`` reads
through these few methods (the reading half of ``SqliteLog``), so ``SqliteLog`` itself, the
read-only ``SqliteReader`` below, or a Kafka reader (``open_broker_reader``) can be handed in.

Why a separate SQLite reader: ``SqliteLog`` creates its tables in the file it opens and expects
today's schema. An audit must neither change the file it judges (``mode=ro``, or ``immutable=1``
on read-only media: see ``connect_read_only``) nor refuse a log
written before a column or table existed: ``SqliteReader`` selects only the columns every
version had (``inbox(pos, vm, tick, record)``, ``events(vm, seq, inbox_pos, record)``,
``meta``, ``positions``) and treats a missing ``snapshots`` table as "no snapshots". Records are
parsed by ``records.py``, which fills fields added later with their defaults, and guest messages
are raw bytes that today's decoder reads again. Rows of log format 2 may be compact BLOBs
(``records.stored_event_json`` / ``stored_input_dict``), read back as the canonical JSON they stand for.
"""

from __future__ import annotations

import bisect
import importlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.records import loads, stored_event_json, stored_input_dict
from ..event_log import segments
from ..event_log.cut import CutBase, read_base
from ..event_log.sqlite_log import EventRow, InboxRow

#: (vm, seq, inbox_pos, record) of an event row, ``record`` as stored: canonical JSON text, or a
#: compact blob (``records.stored_event_json`` expands it, ``records.event_from_stored`` reads it).
StoredEventRow = tuple[str, int, int, str | bytes]
#: (pos, vm, tick, record) of an inbox row, ``record`` as stored: canonical JSON text, or a guest
#: message's raw bytes (``records.stored_input_dict``).
StoredInboxRow = tuple[int, str, int, str | bytes]


class LogReader(Protocol):
    """The reading interface of an hvdm log (``SqliteLog`` has it too)."""

    @property
    def path(self) -> str: ...

    def get_meta(self, key: str) -> str | None: ...
    def consumed_position(self) -> int: ...
    def inbox_high_watermark(self) -> int: ...
    def vms(self) -> list[str]: ...
    def read_inbox(self, after: int, limit: int = 1000, vm: str | None = None) -> list[InboxRow]: ...
    def iter_inbox(self, after: int = 0, until: int | None = None, batch: int = 5000) -> Iterator[InboxRow]: ...
    def iter_events(self, vm: str | None = None, after_seq: int = 0) -> Iterator[EventRow]: ...
    def snapshots(self) -> list[tuple[str, int, int, dict[str, Any]]]: ...
    def close(self) -> None: ...


class UnreadableLog(sqlite3.OperationalError):
    """The log cannot be read where it is (read-only media holding a WAL that was never checkpointed)."""


def connect_read_only(path: str | Path) -> sqlite3.Connection:
    """Open ``path`` for reading without ever writing to it or next to it.

    ``mode=ro`` first: it sees everything committed, including what is still in the WAL, and
    works next to a live service. On read-only media a WAL-mode file cannot be opened that way
    (SQLite needs to create its ``-shm`` file), so then the file is opened ``immutable=1``, which
    reads the main file alone. That is the whole log when the writer stopped cleanly (closing
    checkpoints the WAL into the file and removes it); when a non-empty ``-wal`` is still there
    (the writer crashed, or the copy took the WAL along) immutable would silently miss its
    commits, so that case is refused with ``UnreadableLog`` instead.
    """
    file = Path(path).resolve()
    db = sqlite3.connect(f"file:{quote(str(file))}?mode=ro", uri=True, check_same_thread=False)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.Error as exc:
        db.close()
        if not isinstance(exc, sqlite3.OperationalError):
            raise  # not a database at all: no other way of opening it helps
        first_error = exc
    wal = Path(f"{file}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise UnreadableLog(
            f"{path}: cannot be opened read-only ({first_error}) and its write-ahead log {wal.name} holds "
            "commits that an immutable open would miss; copy the file with its -wal to writable storage"
        ) from None
    db = sqlite3.connect(f"file:{quote(str(file))}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        db.close()
        raise
    return db


class SqliteReader:
    """A read-only view of an embedded log, of any schema version that has the core tables."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._db = connect_read_only(path)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._tables = {str(r[0]) for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self._has_wall = "wall" in {str(r[1]) for r in self._db.execute("PRAGMA table_info(inbox)")}
        #: History up to this inbox position is in compressed segments (``services.event_log.segments``).
        self._archived_until = segments.archived_until(self._db)

    @property
    def path(self) -> str:
        return self._path

    @property
    def tables(self) -> frozenset[str]:
        return frozenset(self._tables)

    def close(self) -> None:
        self._db.close()

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def consumed_position(self) -> int:
        row = self._db.execute("SELECT pos FROM positions WHERE name = 'engine'").fetchone()
        return 0 if row is None else int(row[0])

    def inbox_high_watermark(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(pos), 0) FROM inbox").fetchone()[0])

    def vms(self) -> list[str]:
        cur = self._db.execute("SELECT DISTINCT vm FROM inbox WHERE vm != ? ORDER BY vm", (ALL_VMS,))
        live = [str(r[0]) for r in cur]
        if not self._archived_until:
            return live
        return sorted(set(live) | set(segments.archived_vms(self._db)) - {ALL_VMS})

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
        return [InboxRow(int(p), str(v), int(t), stored_input_dict(r, t)) for p, v, t, r in cur]

    def iter_inbox(self, after: int = 0, until: int | None = None, batch: int = 5000) -> Iterator[InboxRow]:
        for p, v, t, r in self.iter_stored_inbox(after, until, batch):
            yield InboxRow(p, v, t, stored_input_dict(r, t))

    def iter_stored_inbox(
        self, after: int = 0, until: int | None = None, batch: int = 5000
    ) -> Iterator[StoredInboxRow]:
        """``iter_inbox`` with each record in its stored form (``StoredInboxRow``)."""
        for p, v, t, _kind, r, _wall in segments.segment_inbox(self._db, after, until):
            yield p, v, t, r
        pos = max(after, self._archived_until)
        sql = "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? ORDER BY pos LIMIT ?"
        if until is not None:
            sql = "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? AND pos <= ? ORDER BY pos LIMIT ?"
        while True:
            rows = self._db.execute(sql, (pos, batch) if until is None else (pos, until, batch)).fetchall()
            yield from rows
            if len(rows) < batch:
                return
            pos = rows[-1][0]

    def iter_events(self, vm: str | None = None, after_seq: int = 0) -> Iterator[EventRow]:
        for v, s, p, r in self.iter_stored_events(vm, after_seq):
            yield EventRow(v, s, p, stored_event_json(r))

    def iter_stored_events(self, vm: str | None = None, after_seq: int = 0) -> Iterator[StoredEventRow]:
        """``iter_events`` with each record in its stored form (``StoredEventRow``)."""
        for _id, v, sq, p, _kind, r in segments.segment_events(self._db, vm, after_seq):
            yield v, sq, p, r
        if vm is None:
            cur = self._db.execute("SELECT vm, seq, inbox_pos, record FROM events ORDER BY id")
        else:
            cur = self._db.execute(
                "SELECT vm, seq, inbox_pos, record FROM events WHERE vm = ? AND seq > ? ORDER BY seq",
                (vm, after_seq),
            )
        while rows := cur.fetchmany(2000):
            yield from rows

    # ------------------------------------------------------------------ wall-clock stamps
    # Unix times at which inbox records were appended (``SqliteLog.append_inputs``); None or
    # absent on logs written before the stamps existed. See ``services.audit.wall_clock``.
    def _archived_walls(self) -> list[tuple[int, int, float]]:
        """(pos, tick, wall) of the archived rows (read from the segments once, on first use)."""
        cached: list[tuple[int, int, float]] | None = getattr(self, "_walls", None)
        if cached is None:
            cached = segments.archived_walls(self._db) if self._archived_until else []
            self._walls = cached
        return cached

    def wall_of(self, pos: int) -> float | None:
        """The wall time of the record at ``pos`` (or of the last stamped record before it)."""
        if not self._has_wall:
            return None
        row = self._db.execute(
            "SELECT wall FROM inbox WHERE pos <= ? AND wall IS NOT NULL ORDER BY pos DESC LIMIT 1", (pos,)
        ).fetchone()
        if row is not None:
            return float(row[0])
        archived = self._archived_walls()
        i = bisect.bisect_right(archived, (pos, 1 << 62, 0.0))
        return archived[i - 1][2] if i else None

    def wall_after(self, pos: int) -> float | None:
        """The wall time of the first stamped record after ``pos``."""
        if not self._has_wall:
            return None
        archived = self._archived_walls()
        i = bisect.bisect_right(archived, (pos, 1 << 62, 0.0))
        if i < len(archived):
            return archived[i][2]
        row = self._db.execute(
            "SELECT wall FROM inbox WHERE pos > ? AND wall IS NOT NULL ORDER BY pos LIMIT 1", (pos,)
        ).fetchone()
        return None if row is None else float(row[0])

    def last_pos_before_wall(self, unix: float, inclusive: bool) -> int | None:
        """The last inbox position stamped before (or at) ``unix``; None when nothing is stamped.

        Stamps are non-decreasing in position as long as the host clock is (an NTP step back
        can break that; the answer is then the last position on either side of the step)."""
        if not self._has_wall or self.wall_span() is None:
            return None
        op = "<=" if inclusive else "<"
        row = self._db.execute(f"SELECT COALESCE(MAX(pos), 0) FROM inbox WHERE wall {op} ?", (unix,)).fetchone()
        archived = [p for p, _t, w in self._archived_walls() if (w <= unix if inclusive else w < unix)]
        return max(int(row[0]), max(archived, default=0))

    def wall_span(self) -> tuple[float, float] | None:
        if not self._has_wall:
            return None
        row = self._db.execute("SELECT MIN(wall), MAX(wall) FROM inbox WHERE wall IS NOT NULL").fetchone()
        walls = [w for _p, _t, w in self._archived_walls()]
        if row[0] is not None:
            walls += [float(row[0]), float(row[1])]
        return (min(walls), max(walls)) if walls else None

    def wall_of_ticks(self) -> dict[int, float]:
        """The first wall time stamped at each tick (for charts against time)."""
        if not self._has_wall:
            return {}
        out: dict[int, float] = {}
        for _p, t, w in self._archived_walls():
            if t not in out or w < out[t]:
                out[t] = w
        cur = self._db.execute("SELECT tick, MIN(wall) FROM inbox WHERE wall IS NOT NULL GROUP BY tick ORDER BY tick")
        for t, w in cur:
            if int(t) not in out or float(w) < out[int(t)]:
                out[int(t)] = float(w)
        return dict(sorted(out.items()))

    def compaction_base(self) -> CutBase | None:
        """Where a compacted log begins (``services.audit.compacted``); None if never compacted."""
        if not hasattr(self, "_base"):
            self._base = read_base(self._db)
        return self._base

    def snapshots(self) -> list[tuple[str, int, int, dict[str, Any]]]:
        if "snapshots" not in self._tables:
            return []
        cur = self._db.execute("SELECT vm, seq, inbox_pos, state FROM snapshots ORDER BY vm")
        return [(str(v), int(s), int(p), loads(st)) for v, s, p, st in cur]


def stored_events(log: LogReader, vm: str | None = None, after_seq: int = 0) -> Iterator[StoredEventRow]:
    """A log's event rows in their stored forms when the reader can give them (the SQLite readers),
    else as the canonical text every reader gives: replays and folds then skip expanding blobs."""
    fast: Callable[[str | None, int], Iterator[StoredEventRow]] | None = getattr(log, "iter_stored_events", None)
    if fast is not None:
        return fast(vm, after_seq)
    return ((r.vm, r.seq, r.inbox_pos, r.record) for r in log.iter_events(vm, after_seq))


def stored_inbox(log: LogReader, after: int = 0, until: int | None = None) -> Iterator[tuple[int, str, int, Any]]:
    """A log's inbox rows with their records as stored (text or raw guest bytes) when the reader
    can give them, else as the parsed dicts every reader gives (``replay.read_stored_input`` reads all)."""
    fast: Callable[[int, int | None], Iterator[StoredInboxRow]] | None = getattr(log, "iter_stored_inbox", None)
    if fast is not None:
        return fast(after, until)
    return ((r.pos, r.vm, r.tick, r.record) for r in log.iter_inbox(after, until))


#: The Kafka deployment's audit reader, looked up by name so that the audit does not import the
#: Kafka stack: ``kafka_engine.audit_partitions.open_partitioned_reader(url) -> LogReader`` (a reader
#: whose ``audit_jobs`` splits the audit by partition).
BROKER_READER = ("..kafka_engine.audit_partitions", "open_partitioned_reader")


class BrokerReaderUnavailable(Exception):
    """This build has no Kafka log reader (the seam is ``BROKER_READER``)."""


def open_broker_reader(url: str, jobs: int = 1) -> LogReader:
    """A ``LogReader`` over a Kafka deployment's topics, if the Kafka package provides one; it reads
    the topics in up to ``jobs`` processes (one per share of the partitions)."""
    module_name, attr = BROKER_READER
    try:
        module = importlib.import_module(module_name, __package__)
    except ImportError:
        raise BrokerReaderUnavailable(
            f"no Kafka log reader in this build ({module_name}.{attr} is missing); audit the embedded log with --db"
        ) from None
    opener: Callable[..., LogReader] = getattr(module, attr)
    return opener(url, jobs=jobs) if jobs > 1 else opener(url)
