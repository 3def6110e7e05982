"""``hvdm audit --broker``: a Kafka deployment's topics as an audit ``LogReader``.

Why a materialized cut. The audit (``services.audit``) reads a log through the ``LogReader``
methods of the embedded SQLite log: one inbox in one order with dense positions ``1..N`` (it
keeps an array indexed by position, and "state at tick N" is a prefix of that order), every VM's
events with the inbox position they came from, and the engine's consumed position. The Kafka
deployment has none of these directly: the inbox is ``P`` partitions with their own offsets and
their own clocks, the events topic may hold duplicates and orphans that only the sequence rule
removes, and "consumed" is one committed offset per partition. So the reader takes one consistent
cut of the topics when it is opened, folds it with the worker's own rules, and stores the result
in a temporary SQLite file (deleted by ``close``) that the audit then reads like the embedded log,
with bounded memory whatever the size of the topics.

The cut, in this order (each read sees everything the previous one promises):

1. the engine group's committed offset per inbox partition: every input below it has its records
   written (the worker acknowledges an input only after its writes are durable);
2. the events topic to its fetch high-watermark, folded per VM with ``PartitionEngine.replay``'s
   rule: a record counts only if its first ``seq`` is the VM's next one, so duplicates (an input
   decided twice) and orphans (written after a lost one) are dropped, as recovery drops them;
3. the snapshots topic (latest snapshot per VM) and the meta topic (first record of a key wins);
4. the inbox to its fetch high-watermark (past the committed offsets: a live log's tail).

The contract for the audit (the ``LogReader`` methods, plus a few extras):

* **Positions.** Every inbox record read gets one position, dense from 1. Records the engine has
  consumed come first (positions ``1..consumed_position()``), the rest after. Within each part
  the order is by the partition's clock (the number of the last Tick record before it, as a
  running maximum), then partition, then offset: each partition's records keep their order, and
  a prefix "up to tick N" holds every partition's records up to its tick N. Positions are valid
  for one opened reader; ``locate(pos)`` / ``position_of(partition, offset)`` translate.
* **Inbox rows** (``iter_inbox`` / ``read_inbox``) reproduce exactly what the worker decided:
  a non-tick input is one row for its VM, with ``tick`` and the record's ``"tick"`` both set to
  its partition's clock (the worker's stamp, whatever the publisher wrote). A Tick record that
  moves its partition's clock forward becomes one row per VM seen in that partition before it
  (sorted by VM id), each ``{"type": "Tick", "tick": n}`` with the Tick record's position; a
  stale or repeated Tick becomes no row. There are no ``"*"`` rows: the audit's broadcast rule
  (every VM seen anywhere in the log) is not the worker's (every VM of the partition), so the
  reader expands ticks itself and ``InboxReplay`` re-decides them as ordinary per-VM inputs.
  Records the worker skips (not an envelope, a ``"*"`` record that is not a Tick, an input
  this engine cannot parse) have a position and no row; ``ignored_inputs`` lists them.
  Several rows can therefore share one position (a Tick's fan-out); ``limit`` and ``batch``
  count rows.
* **Events** (``iter_events``): one row per event of the events records the sequence rule
  accepts, ``record`` the event's canonical JSON (byte for byte what the worker wrote),
  ``inbox_pos`` the position of its input. ``iter_events(None)`` orders rows by
  (inbox position, VM, seq), the order a replay decides them in; ``iter_events(vm, after_seq)``
  by seq.
* ``consumed_position()``: the last position the engine group has committed (0 if none);
  ``inbox_high_watermark()``: the last position read. ``vms()``: every VM with an inbox row.
  ``get_meta``: the meta topic (``engine_config`` is there). ``snapshots()``: latest snapshot per
  VM as ``(vm, seq, inbox position of its last input, state)``.

Opening costs one pass over the topics (the audit needs all of it anyway); pass ``store_dir`` to
put the temporary file somewhere roomier than the default temp directory.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dm_engine.inputs import ALL_VMS
from ..dm_engine.records import dumps, input_from_dict, loads
from ..event_log.sqlite_log import EventRow, InboxRow
from . import envelope
from .envelope import EnvelopeError, EventsRecord
from .partition import PartitionClock
from .settings import KafkaSettings

if TYPE_CHECKING:
    from .kafka_log import PartitionReader

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records (p INTEGER NOT NULL, o INTEGER NOT NULL, clock INTEGER NOT NULL, pos INTEGER,
                      PRIMARY KEY (p, o)) WITHOUT ROWID;
CREATE TABLE rows (p INTEGER NOT NULL, o INTEGER NOT NULL, sub INTEGER NOT NULL, vm TEXT NOT NULL,
                   tick INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE raw_events (id INTEGER PRIMARY KEY, vm TEXT NOT NULL, seq INTEGER NOT NULL, p INTEGER NOT NULL,
                         o INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE raw_snapshots (vm TEXT PRIMARY KEY, seq INTEGER NOT NULL, p INTEGER NOT NULL, o INTEGER NOT NULL,
                            state TEXT NOT NULL);
CREATE TABLE committed (p INTEGER PRIMARY KEY, offset INTEGER NOT NULL);
"""

#: Below this many inbox records one process reads the topics faster than starting others.
MIN_PARALLEL_RECORDS = 50_000

#: Why an inbox record has no row (``ignored_inputs``).
NOT_AN_ENVELOPE = "not an hvdm envelope"
NOT_A_TICK = "a '*' record that is not a Tick"
NOT_AN_INPUT = "not an input this engine can parse"


class LogCut:
    """The fold of one cut of the topics into the reader's SQLite file, fed record by record.

    Pure (no broker): ``KafkaLogReader`` feeds it what it reads, tests feed it records directly.
    Feed ``committed`` first, then events records (per partition in offset order), snapshots,
    meta and inbox records (per partition in offset order), then call ``finish``.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(_SCHEMA)
        self._next_seq: dict[str, int] = {}
        self._clocks: dict[int, PartitionClock] = {}
        self._keys: dict[int, int] = {}
        self._seen: dict[int, set[str]] = {}
        self._order: dict[int, list[str]] = {}
        self._rows: list[tuple[int, int, int, str, int, str]] = []
        self._records: list[tuple[int, int, int]] = []
        self._events: list[tuple[str, int, int, int, str]] = []
        self.ignored_inputs: list[tuple[int, int, str]] = []
        self.ignored_events_records = 0
        self.committed: dict[int, int] = {}

    # ------------------------------------------------------------------ feeding
    def set_committed(self, committed: dict[int, int]) -> None:
        self.committed = dict(committed)
        self.db.executemany("INSERT INTO committed (p, offset) VALUES (?, ?)", sorted(committed.items()))

    def add_meta(self, meta: dict[str, str]) -> None:
        self.db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))

    def add_events_record(self, raw: bytes | None) -> None:
        """One record of the events topic; kept only if the sequence rule accepts it."""
        try:
            rec = EventsRecord.from_value(envelope.decode(raw))
        except EnvelopeError:
            self.ignored_events_records += 1
            return
        if rec.seq != self._next_seq.get(rec.vm, 1):
            self.ignored_events_records += 1  # a duplicate or an orphan (see partition.py)
            return
        self._next_seq[rec.vm] = rec.last_seq + 1
        for i, event in enumerate(rec.events):
            self._events.append((rec.vm, rec.seq + i, rec.partition, rec.offset, dumps(event)))
        if len(self._events) >= 20_000:
            self._flush()

    def add_snapshot(self, partition: int, raw: bytes | None) -> None:
        try:
            value = envelope.decode(raw)
        except EnvelopeError:
            return
        vm = value.get("vm")
        if vm == ALL_VMS or not isinstance(vm, str):
            return  # a checkpoint marker
        self.db.execute(
            "INSERT INTO raw_snapshots (vm, seq, p, o, state) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (vm) DO UPDATE SET seq = excluded.seq, p = excluded.p, o = excluded.o, "
            "state = excluded.state WHERE excluded.seq > raw_snapshots.seq",
            (vm, int(value["seq"]), partition, int(value["applied"]), dumps(value["state"])),
        )

    def add_inbox_record(self, partition: int, offset: int, raw: bytes | None) -> None:
        """One inbox record, in offset order per partition: the worker's rules (``partition.py``)."""
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self._clocks[partition] = PartitionClock(None)
            self._seen[partition] = set()
            self._order[partition] = []
        rows = self._rows
        try:
            vm, record = envelope.inbox_entry(envelope.decode(raw))
        except EnvelopeError:
            self._ignore(partition, offset, clock, NOT_AN_ENVELOPE)
            return
        if vm == ALL_VMS:
            try:
                number = envelope.tick_number(record)
            except EnvelopeError:
                self._ignore(partition, offset, clock, NOT_A_TICK)
                return
            if clock.on_tick(number):
                tick_json = dumps({"type": "Tick", "tick": number})
                order = self._order[partition]
                if len(order) != len(self._seen[partition]):
                    order[:] = sorted(self._seen[partition])
                for sub, name in enumerate(order):
                    rows.append((partition, offset, sub, name, number, tick_json))
        else:
            now = clock.now
            stamped = {**record, "tick": now}
            try:
                input_from_dict(stamped)
            except (KeyError, TypeError, ValueError):
                self._ignore(partition, offset, clock, NOT_AN_INPUT)
                return
            self._seen[partition].add(vm)
            rows.append((partition, offset, 0, vm, now, dumps(stamped)))
        self._record(partition, offset, clock)

    def _ignore(self, partition: int, offset: int, clock: PartitionClock, reason: str) -> None:
        self.ignored_inputs.append((partition, offset, reason))
        self._record(partition, offset, clock)

    def _record(self, partition: int, offset: int, clock: PartitionClock) -> None:
        key = max(self._keys.get(partition, 0), clock.now)
        self._keys[partition] = key
        self._records.append((partition, offset, key))
        if len(self._records) >= 20_000 or len(self._rows) >= 20_000:
            self._flush()

    def _flush(self) -> None:
        db = self.db
        if self._records:
            db.executemany("INSERT INTO records (p, o, clock) VALUES (?, ?, ?)", self._records)
            self._records = []
        if self._rows:
            db.executemany("INSERT INTO rows (p, o, sub, vm, tick, record) VALUES (?, ?, ?, ?, ?, ?)", self._rows)
            self._rows = []
        if self._events:
            db.executemany("INSERT INTO raw_events (vm, seq, p, o, record) VALUES (?, ?, ?, ?, ?)", self._events)
            self._events = []

    def merge_shares(self, paths: list[str], shares: list[ShareRead]) -> None:
        """Copy the rows that ``_read_share`` processes wrote to ``paths`` into this cut."""
        self._flush()
        db = self.db
        for path, share in zip(paths, shares, strict=True):
            db.execute("ATTACH DATABASE ? AS share", (path,))
            db.execute("INSERT INTO records (p, o, clock) SELECT p, o, clock FROM share.records")
            db.execute(
                "INSERT INTO rows (p, o, sub, vm, tick, record) SELECT p, o, sub, vm, tick, record FROM share.rows"
            )
            db.execute(
                "INSERT INTO raw_events (vm, seq, p, o, record) SELECT vm, seq, p, o, record FROM share.raw_events"
                " ORDER BY id"
            )
            db.execute(
                "INSERT INTO raw_snapshots (vm, seq, p, o, state) SELECT vm, seq, p, o, state FROM share.raw_snapshots"
            )
            db.commit()
            db.execute("DETACH DATABASE share")
            self.ignored_inputs.extend(share.ignored_inputs)
            self.ignored_events_records += share.ignored_events_records
        self.ignored_inputs.sort()

    # ------------------------------------------------------------------ positions
    def finish(self) -> tuple[int, int]:
        """Assign positions and build the tables the reader queries; (consumed, high watermark)."""
        self._flush()
        db = self.db
        db.executescript(
            """
            CREATE TABLE positions AS
              SELECT r.p, r.o, ROW_NUMBER() OVER (
                  ORDER BY (r.o >= COALESCE(c.offset, 0)), r.clock, r.p, r.o) AS pos,
                (r.o < COALESCE(c.offset, 0)) AS consumed
              FROM records r LEFT JOIN committed c ON c.p = r.p;
            CREATE UNIQUE INDEX positions_po ON positions (p, o);
            CREATE UNIQUE INDEX positions_pos ON positions (pos);
            CREATE TABLE inbox AS
              SELECT q.pos, w.sub, w.vm, w.tick, w.record FROM rows w JOIN positions q ON q.p = w.p AND q.o = w.o
              ORDER BY q.pos, w.sub;
            CREATE INDEX inbox_pos ON inbox (pos, sub);
            CREATE INDEX inbox_vm ON inbox (vm, pos);
            DROP TABLE rows;
            """
        )
        consumed = int(db.execute("SELECT COALESCE(SUM(consumed), 0) FROM positions").fetchone()[0])
        high = int(db.execute("SELECT COUNT(*) FROM positions").fetchone()[0])
        # An event whose input is not in the cut cannot exist (the inbox was read after the
        # events); were it so, it sorts after everything and is never judged.
        db.executescript(
            f"""
            CREATE TABLE events AS
              SELECT e.id, e.vm, e.seq, COALESCE(q.pos, {high + 1}) AS inbox_pos, e.record
              FROM raw_events e LEFT JOIN positions q ON q.p = e.p AND q.o = e.o;
            CREATE INDEX events_vm ON events (vm, seq);
            CREATE INDEX events_order ON events (inbox_pos, vm, seq);
            DROP TABLE raw_events;
            CREATE TABLE snapshots AS
              SELECT s.vm, s.seq, COALESCE(q.pos, 0) AS inbox_pos, s.state
              FROM raw_snapshots s LEFT JOIN positions q ON q.p = s.p AND q.o = s.o;
            DROP TABLE raw_snapshots;
            """
        )
        db.commit()
        return consumed, high


class KafkaLogReader:
    """A ``services.audit.reader.LogReader`` over one cut of a Kafka deployment (module docstring)."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        url: str | None = None,
        store_dir: str | None = None,
        jobs: int = 1,
        min_records: int = MIN_PARALLEL_RECORDS,
    ) -> None:
        self.settings = settings
        self._url = url or settings.url
        #: Per inbox partition, the offset after the last record read.
        self.inbox_ends: dict[int, int] = {}
        #: Processes that read the topics (1 unless ``jobs`` > 1 and the log was large enough).
        self.read_jobs = 1
        self._dir = tempfile.mkdtemp(prefix="hvdm-audit-", dir=store_dir)
        self._db = sqlite3.connect(str(Path(self._dir) / "cut.db"), check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=OFF")
            self._db.execute("PRAGMA synchronous=OFF")
            self.cut = LogCut(self._db)
            self._consumed, self._high = self._load(jobs, min_records)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_cut(cls, cut_dir: str, cut: LogCut, url: str) -> KafkaLogReader:
        """A reader over a ``LogCut`` fed by the caller (``fold``), in ``cut_dir`` (removed by ``close``)."""
        self = cls.__new__(cls)
        self._url, self._dir, self._db, self.cut = url, cut_dir, cut.db, cut
        self.inbox_ends = {}
        self.read_jobs = 1
        self._consumed, self._high = cut.finish()
        return self

    def _load(self, jobs: int, min_records: int) -> tuple[int, int]:
        from .kafka_log import GroupOffsets, PartitionReader, inbox_partitions, read_meta

        settings = self.settings
        cut = self.cut
        partitions = inbox_partitions(settings)
        group = GroupOffsets(settings)
        try:
            cut.set_committed(group.committed(partitions))
        finally:
            group.close()
        cut.add_meta(read_meta(settings))
        if jobs > 1 and partitions > 1:
            reader = PartitionReader(settings)
            try:
                records = sum(reader.highwaters(settings.inbox, range(partitions)).values())
            finally:
                reader.close()
            if records >= min_records and self._load_parallel(min(jobs, partitions), partitions):
                return cut.finish()
        reader = PartitionReader(settings)
        try:
            self.inbox_ends = read_partitions(cut, reader, settings, list(range(partitions)))
        finally:
            reader.close()
        return cut.finish()

    def _load_parallel(self, jobs: int, partitions: int) -> bool:
        """Read the topics in ``jobs`` processes, each its share of the partitions into its own
        file, then copy the files into this cut. Returns False (nothing copied) if a VM's records
        turned up in partitions of two jobs: the sequence rule then needs one reader.

        Sound because everything ``LogCut`` keeps is per partition (clocks, the VMs a tick
        reaches) or per VM (the next sequence number), and a VM's records are in one partition:
        each job's rows are exactly the single reader's rows of its partitions, and ``finish``
        orders them by (consumed, clock, partition, offset) whoever read them.
        """
        shares = [list(range(partitions))[i::jobs] for i in range(jobs)]
        paths = [str(Path(self._dir) / f"part{i}.db") for i in range(jobs)]
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [
                pool.submit(_read_share, self._url, share, path) for share, path in zip(shares, paths, strict=True)
            ]
            results = [f.result() for f in futures]
        seen: set[str] = set()
        for share in results:
            if seen & share.vms:
                for path in paths:
                    Path(path).unlink(missing_ok=True)
                return False
            seen |= share.vms
        self.cut.merge_shares(paths, results)
        for share in results:
            self.inbox_ends.update(share.inbox_ends)
        for path in paths:
            Path(path).unlink(missing_ok=True)
        self.read_jobs = jobs
        return True

    # ------------------------------------------------------------------ LogReader
    @property
    def path(self) -> str:
        return self._url

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def consumed_position(self) -> int:
        return self._consumed

    def inbox_high_watermark(self) -> int:
        return self._high

    def vms(self) -> list[str]:
        return [str(r[0]) for r in self._db.execute("SELECT DISTINCT vm FROM inbox ORDER BY vm")]

    def read_inbox(self, after: int, limit: int = 1000, vm: str | None = None) -> list[InboxRow]:
        if vm is None:
            cur = self._db.execute(
                "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? ORDER BY pos, sub LIMIT ?", (after, limit)
            )
        else:
            cur = self._db.execute(
                "SELECT pos, vm, tick, record FROM inbox WHERE vm = ? AND pos > ? ORDER BY pos LIMIT ?",
                (vm, after, limit),
            )
        return [InboxRow(int(p), str(v), int(t), loads(r)) for p, v, t, r in cur]

    def iter_inbox(self, after: int = 0, until: int | None = None, batch: int = 5000) -> Iterator[InboxRow]:
        last = self._high if until is None else until
        cur = self._db.execute(
            "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? AND pos <= ? ORDER BY pos, sub", (after, last)
        )
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            for p, v, t, r in rows:
                yield InboxRow(int(p), str(v), int(t), loads(r))

    def iter_events(self, vm: str | None = None, after_seq: int = 0) -> Iterator[EventRow]:
        if vm is None:
            cur = self._db.execute("SELECT vm, seq, inbox_pos, record FROM events ORDER BY inbox_pos, vm, seq")
        else:
            cur = self._db.execute(
                "SELECT vm, seq, inbox_pos, record FROM events WHERE vm = ? AND seq > ? ORDER BY seq", (vm, after_seq)
            )
        while True:
            rows = cur.fetchmany(5000)
            if not rows:
                return
            for v, s, p, r in rows:
                yield EventRow(str(v), int(s), int(p), str(r))

    def snapshots(self) -> list[tuple[str, int, int, dict[str, Any]]]:
        cur = self._db.execute("SELECT vm, seq, inbox_pos, state FROM snapshots ORDER BY vm")
        return [(str(v), int(s), int(p), loads(st)) for v, s, p, st in cur]

    # ------------------------------------------------------------------ extras
    def position_of(self, partition: int, offset: int) -> int | None:
        """The position of inbox record ``partition``/``offset`` in this cut (None: not read)."""
        row = self._db.execute("SELECT pos FROM positions WHERE p = ? AND o = ?", (partition, offset)).fetchone()
        return None if row is None else int(row[0])

    def locate(self, pos: int) -> tuple[int, int] | None:
        """(partition, offset) of the inbox record at ``pos``."""
        row = self._db.execute("SELECT p, o FROM positions WHERE pos = ?", (pos,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    @property
    def committed_offsets(self) -> dict[int, int]:
        """The engine group's committed offset per inbox partition, as read for this cut."""
        return {int(p): int(o) for p, o in self._db.execute("SELECT p, offset FROM committed ORDER BY p")}

    def ignored_inputs(self) -> list[tuple[int, int, int, str]]:
        """Inbox records the worker skips: (position, partition, offset, reason)."""
        out = []
        for p, o, reason in self.cut.ignored_inputs:
            pos = self.position_of(p, o)
            out.append((pos or 0, p, o, reason))
        return out


def read_partitions(
    cut: LogCut, reader: PartitionReader, settings: KafkaSettings, partitions: list[int]
) -> dict[int, int]:
    """Feed ``cut`` the events, snapshots and inbox of ``partitions``, in the order the cut's
    promises need (module docstring); returns the offset after the last inbox record read per
    partition."""
    for p in partitions:
        for record in reader.read(settings.events, p, timeout=600):
            cut.add_events_record(record.value)
    for p in partitions:
        for record in reader.read(settings.snapshots, p, timeout=600):
            cut.add_snapshot(p, record.value)
    ends: dict[int, int] = {}
    for p in partitions:
        end = 0
        for record in reader.read(settings.inbox, p, timeout=600):
            cut.add_inbox_record(p, record.offset, record.value)
            end = record.offset + 1
        ends[p] = end
    return ends


@dataclass(frozen=True, slots=True)
class ShareRead:
    """What one reading process reports besides the rows it wrote."""

    inbox_ends: dict[int, int]
    ignored_inputs: list[tuple[int, int, str]]
    ignored_events_records: int
    #: Every VM named by a row, an events record or a snapshot of its partitions.
    vms: frozenset[str]


def _read_share(url: str, partitions: list[int], path: str) -> ShareRead:
    """One process of a parallel read: ``partitions`` into a cut file at ``path``."""
    from .kafka_log import PartitionReader

    settings = KafkaSettings.from_url(url)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        cut = LogCut(db)
        reader = PartitionReader(settings)
        try:
            ends = read_partitions(cut, reader, settings, partitions)
        finally:
            reader.close()
        cut._flush()
        db.commit()
        vms = frozenset(
            str(r[0])
            for r in db.execute(
                "SELECT vm FROM rows UNION SELECT vm FROM raw_events UNION SELECT vm FROM raw_snapshots"
            )
        )
        return ShareRead(ends, cut.ignored_inputs, cut.ignored_events_records, vms)
    finally:
        db.close()


def open_audit_reader(url: str, *, store_dir: str | None = None, jobs: int = 1) -> KafkaLogReader:
    """``services.audit.reader.open_broker_reader``'s seam: a reader over ``--broker URL``, reading
    the topics in up to ``jobs`` processes (one per share of the partitions)."""
    return KafkaLogReader(KafkaSettings.from_url(url), url=url, store_dir=store_dir, jobs=jobs)


def fold(
    committed: dict[int, int],
    events: Iterable[bytes],
    inbox: Iterable[tuple[int, int, bytes]],
    meta: dict[str, str] | None = None,
    snapshots: Iterable[tuple[int, bytes]] = (),
) -> KafkaLogReader:
    """A reader over records given directly, without a broker (tests): events values in topic
    order, inbox ``(partition, offset, value)`` in offset order per partition."""
    cut_dir = tempfile.mkdtemp(prefix="hvdm-audit-")
    db = sqlite3.connect(str(Path(cut_dir) / "cut.db"), check_same_thread=False)
    cut = LogCut(db)
    cut.set_committed(committed)
    for raw in events:
        cut.add_events_record(raw)
    for partition, raw in snapshots:
        cut.add_snapshot(partition, raw)
    cut.add_meta(meta or {})
    for partition, offset, raw in inbox:
        cut.add_inbox_record(partition, offset, raw)
    return KafkaLogReader.from_cut(cut_dir, cut, "records://")
