"""Archived history of the embedded log: consumed inbox and event rows, packed and compressed.

Why: row by row, SQLite spends most of a status report's bytes on per-row structure (the VM id
three times, the kind twice, ids, an index entry), not on the facts. History the engine has
consumed is never changed again, so it can be stored as *segments*: one row per range of inbox
positions holding those inbox rows and the events they caused, column by column (a column of one
kind of value compresses far better than interleaved rows), JSON, then zlib. zstd packed the
same columns 2-3x smaller in a side measurement, but the standard library's zlib already brings a
status report to about 15 bytes (bench/log_size.py) without a new dependency; a zstd layout would
be a new ``SEGMENT_FORMAT``.

Every reader (``SqliteLog``, the audit's ``SqliteReader``) reads a segment's rows back exactly as
the live tables would have returned them, stored form included (a compact BLOB stays a BLOB), so
nothing above the log can tell archived rows from live ones.

A segment is read from a file that may have been edited: anything that does not unpack to the
expected columns raises ``SegmentError``, an ``sqlite3.DatabaseError`` (a damaged database file,
which is what it is), never another exception.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

#: Version of the packed columns; a new layout gets a new number and keeps reading the old ones.
SEGMENT_FORMAT = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    first_pos INTEGER PRIMARY KEY,
    last_pos INTEGER NOT NULL,
    inbox_rows INTEGER NOT NULL,
    event_rows INTEGER NOT NULL,
    inbox BLOB NOT NULL,
    events BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS archived (vm TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
"""

#: (pos, vm, tick, kind, record, wall): an inbox row as stored (record: JSON text or compact bytes;
#: wall: the Unix time of its append, None on rows from before the stamps).
InboxTuple = tuple[int, str, int, str, str | bytes, float | None]
#: (id, vm, seq, inbox_pos, kind, record): an event row as stored.
EventTuple = tuple[int, str, int, int, str, str | bytes]


class SegmentError(sqlite3.DatabaseError):
    """A segment that does not unpack: the file was damaged or edited."""


def _records(values: Sequence[str | bytes]) -> tuple[list[str | None], list[str | None]]:
    text = [v if isinstance(v, str) else None for v in values]
    blob = [None if isinstance(v, str) else bytes(v).hex() for v in values]
    return text, blob


def _pack(columns: dict[str, Any]) -> bytes:
    return zlib.compress(orjson.dumps({"format": SEGMENT_FORMAT, **columns}), 6)


def pack_inbox(rows: Sequence[InboxTuple]) -> bytes:
    cols = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [], [], [], [])
    pos, vm, tick, kind, record, wall = cols
    text, blob = _records(record)
    return _pack({"pos": pos, "vm": vm, "tick": tick, "kind": kind, "text": text, "blob": blob, "wall": wall})


def pack_events(rows: Sequence[EventTuple]) -> bytes:
    cols = (list(c) for c in zip(*rows, strict=True)) if rows else ([], [], [], [], [], [])
    ids, vm, seq, inbox_pos, kind, record = cols
    text, blob = _records(record)
    return _pack({"id": ids, "vm": vm, "seq": seq, "inbox_pos": inbox_pos, "kind": kind, "text": text, "blob": blob})


def _unpack(data: bytes, names: Sequence[str], walls: bool = False) -> list[list[Any]]:
    try:
        doc = orjson.loads(zlib.decompress(data))
        if type(doc) is not dict or doc.get("format") != SEGMENT_FORMAT:
            raise SegmentError(f"segment format {doc.get('format') if type(doc) is dict else '?'} is not readable")
        columns = [doc[name] for name in names]
        text, blob = doc["text"], doc["blob"]
        n = len(text)
        if any(type(c) is not list or len(c) != n for c in [*columns, blob]):
            raise SegmentError("segment columns differ in length")
        records = [t if t is not None else bytes.fromhex(b) for t, b in zip(text, blob, strict=True)]
        ints = [c for name, c in zip(names, columns, strict=True) if name not in ("vm", "kind")]
        strs = [c for name, c in zip(names, columns, strict=True) if name in ("vm", "kind")]
        if not all(type(v) is int for c in ints for v in c) or not all(type(v) is str for c in strs for v in c):
            raise SegmentError("segment column of the wrong type")
        if not all(isinstance(r, str | bytes) for r in records):
            raise SegmentError("segment record of the wrong type")
        if walls:
            wall = doc.get("wall", [None] * n)
            if type(wall) is not list or len(wall) != n:
                raise SegmentError("segment wall column differs in length")
            if not all(w is None or type(w) in (int, float) for w in wall):
                raise SegmentError("segment wall stamp of the wrong type")
            return [*columns, records, [None if w is None else float(w) for w in wall]]
    except SegmentError:
        raise
    except (zlib.error, orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise SegmentError(f"segment does not unpack: {e}") from None
    return [*columns, records]


def unpack_inbox(data: bytes) -> list[InboxTuple]:
    pos, vm, tick, kind, record, wall = _unpack(data, ("pos", "vm", "tick", "kind"), walls=True)
    return list(zip(pos, vm, tick, kind, record, wall, strict=True))


def unpack_events(data: bytes) -> list[EventTuple]:
    ids, vm, seq, inbox_pos, kind, record = _unpack(data, ("id", "vm", "seq", "inbox_pos", "kind"))
    return list(zip(ids, vm, seq, inbox_pos, kind, record, strict=True))


# ---------------------------------------------------------------------- reading, for every reader
def has_segments(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'segments'").fetchone() is not None


def archived_until(db: sqlite3.Connection) -> int:
    """The last inbox position archived (0: none), or compacted away (``compaction.py``: readers
    start after the cut in both cases, and the live row at it is skipped the same way)."""
    archived = 0
    if has_segments(db):
        archived = int(db.execute("SELECT COALESCE(MAX(last_pos), 0) FROM segments").fetchone()[0])
    return max(archived, compacted_until(db))


def compacted_until(db: sqlite3.Connection) -> int:
    """The inbox position a compacted log begins after (0: never compacted); the table is
    ``compaction.SCHEMA``'s, read here because every reader of segments needs it too."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'compactions'").fetchone() is None:
        return 0
    return int(db.execute("SELECT COALESCE(MAX(cut_pos), 0) FROM compactions").fetchone()[0])


def segment_inbox(db: sqlite3.Connection, after: int, until: int | None) -> Iterator[InboxTuple]:
    """Archived inbox rows with ``after < pos <= until``, in position order."""
    if not has_segments(db):
        return
    cur = db.execute(
        "SELECT inbox FROM segments WHERE last_pos > ? AND first_pos <= ? ORDER BY first_pos",
        (after, (1 << 62) if until is None else until),
    )
    for (data,) in cur.fetchall():
        for row in unpack_inbox(data):
            if row[0] > after and (until is None or row[0] <= until):
                yield row


def segment_events(db: sqlite3.Connection, vm: str | None = None, after_seq: int = 0) -> Iterator[EventTuple]:
    """Archived event rows (all, in commit order; or one VM's with ``seq > after_seq``)."""
    if not has_segments(db):
        return
    if vm is not None:
        row = db.execute("SELECT last_seq FROM archived WHERE vm = ?", (vm,)).fetchone()
        if row is None or int(row[0]) <= after_seq:
            return  # nothing of this VM's after that seq was archived (the common case: snapshots)
    for (data,) in db.execute("SELECT events FROM segments ORDER BY first_pos").fetchall():
        for ev in unpack_events(data):
            if vm is None or (ev[1] == vm and ev[2] > after_seq):
                yield ev


def archived_walls(db: sqlite3.Connection) -> list[tuple[int, int, float]]:
    """(pos, tick, wall) of every archived inbox row with a wall-clock stamp, in position order."""
    if not has_segments(db):
        return []
    out: list[tuple[int, int, float]] = []
    for (data,) in db.execute("SELECT inbox FROM segments ORDER BY first_pos").fetchall():
        out.extend((p, t, w) for p, _v, t, _k, _r, w in unpack_inbox(data) if w is not None)
    return out


def archived_vms(db: sqlite3.Connection) -> list[str]:
    if not has_segments(db):
        return []
    return [str(r[0]) for r in db.execute("SELECT vm FROM archived")]


def archived_event_count(db: sqlite3.Connection) -> int:
    if not has_segments(db):
        return 0
    return int(db.execute("SELECT COALESCE(SUM(event_rows), 0) FROM segments").fetchone()[0])
