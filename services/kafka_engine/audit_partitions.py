"""``hvdm audit --broker URL --jobs N``: a Kafka deployment's audit split by partition across processes.

Why by partition: a partition is the Kafka deployment's unit of independence -- every VM's records
are in one partition, and its ticks are that partition's own -- so N processes that each take a share
of the partitions do all the work without talking to each other. The work has two halves, both split:

1. **reading** (``KafkaLogReader(jobs=N)``, ``audit_reader``): each process fetches and folds its
   partitions' events, snapshots and inbox into its own cut file; the parent copies the files into
   one cut and numbers the positions, which therefore are exactly the single reader's;
2. **auditing** (``audit_partitions`` here): each process re-decides, compares and folds the VMs of
   its partitions from that one cut file (read-only, filtered in SQLite to its VMs), and the parent
   merges the VM reports, recomputes the first divergence over all of them and takes the counts that
   belong to the whole inbox from the whole cut. The merged report equals the single-process report
   (tested on tansu).

The audit as Faust workers over the partitions (one consumer group, a worker per share) would split
the same way, but an audit is a one-shot read of a cut, not a stream: a process pool reads the cut
without joining a consumer group (which costs seconds per rebalance, see ``kafka_log``) and cannot
be left half-assigned by a rebalance in the middle of a report.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from ..audit.behaviour import DEFAULT_GAP_TICKS
from ..audit.jobs import MIN_PARALLEL_RECORDS, audit_in_processes, audit_share, merged_report, start_position
from ..audit.logfile import engine_config
from ..audit.report import AuditReport, VmReport, audit
from ..dm_engine.records import loads
from ..event_log.sqlite_log import EventRow, InboxRow
from .audit_reader import KafkaLogReader
from .settings import KafkaSettings


class CutShare(KafkaLogReader):
    """A read-only view of some VMs of a finished cut file (one audit process's share)."""

    def __init__(self, path: str, url: str, vms: Collection[str], consumed: int, high: int) -> None:
        # Not KafkaLogReader.__init__: nothing is read from the broker, and the file is not ours.
        self._url = url
        self._dir = ""
        self.inbox_ends = {}
        self.read_jobs = 1
        self._consumed, self._high = consumed, high
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._db.execute("CREATE TEMP TABLE share (vm TEXT PRIMARY KEY)")
        self._db.executemany("INSERT INTO temp.share (vm) VALUES (?)", [(vm,) for vm in vms])

    def close(self) -> None:
        self._db.close()

    def iter_inbox(self, after: int = 0, until: int | None = None, batch: int = 5000) -> Iterator[InboxRow]:
        last = self._high if until is None else until
        cur = self._db.execute(
            "SELECT pos, vm, tick, record FROM inbox WHERE pos > ? AND pos <= ? AND vm IN temp.share ORDER BY pos, sub",
            (after, last),
        )
        while rows := cur.fetchmany(batch):
            for p, v, t, r in rows:
                yield InboxRow(int(p), str(v), int(t), loads(r))

    def iter_events(self, vm: str | None = None, after_seq: int = 0) -> Iterator[EventRow]:
        if vm is not None:
            yield from super().iter_events(vm, after_seq)
            return
        cur = self._db.execute(
            "SELECT vm, seq, inbox_pos, record FROM events WHERE vm IN temp.share ORDER BY inbox_pos, vm, seq"
        )
        while rows := cur.fetchmany(5000):
            for v, s, p, r in rows:
                yield EventRow(str(v), int(s), int(p), str(r))


def _audit_share(
    path: str, url: str, vms: list[str], consumed: int, high: int, from_pos: int, gap_ticks: int
) -> dict[str, VmReport]:
    return audit_share(CutShare(path, url, vms, consumed, high), vms, from_pos, gap_ticks)


def vms_by_partition(reader: KafkaLogReader, consumed: int) -> dict[int, list[str]]:
    """The VMs a whole audit reports (an inbox row, or a recorded event of an input, up to
    ``consumed``), each under the partition of its first such record."""
    db = reader._db
    cur = db.execute(
        "SELECT vm, MIN(p) FROM ("
        " SELECT i.vm AS vm, q.p AS p FROM inbox i JOIN positions q ON q.pos = i.pos WHERE i.pos <= ?"
        " UNION ALL"
        " SELECT e.vm, q.p FROM events e JOIN positions q ON q.pos = e.inbox_pos WHERE e.inbox_pos <= ?"
        ") GROUP BY vm ORDER BY vm",
        (consumed, consumed),
    )
    out: dict[int, list[str]] = {}
    for vm, p in cur:
        out.setdefault(int(p), []).append(str(vm))
    return out


def audit_partitions(
    reader: KafkaLogReader,
    jobs: int,
    *,
    vms: Collection[str] | None = None,
    from_pos: int = 0,
    from_tick: int | None = None,
    gap_ticks: int = DEFAULT_GAP_TICKS,
    min_records: int = MIN_PARALLEL_RECORDS,
) -> AuditReport:
    """``audit(reader, ...)`` in up to ``jobs`` processes, each the VMs of a share of the partitions
    (one process if the cut is small or holds one partition's VMs)."""
    consumed = reader.consumed_position()
    high = reader.inbox_high_watermark()
    selected = sorted(set(vms or ()))
    by_partition = vms_by_partition(reader, consumed)
    if selected:
        wanted = set(selected)
        by_partition = {p: [v for v in names if v in wanted] for p, names in by_partition.items()}
        by_partition = {p: names for p, names in by_partition.items() if names}
    partitions = sorted(by_partition)
    if jobs <= 1 or len(partitions) <= 1 or consumed < min_records:
        return audit(reader, vms=selected or None, from_pos=from_pos, from_tick=from_tick, gap_ticks=gap_ticks)
    config_of = engine_config(reader)
    from_pos = start_position(reader, from_pos, from_tick, consumed)
    count = min(jobs, len(partitions))
    shares = [[vm for p in partitions[i::count] for vm in by_partition[p]] for i in range(count)]
    path = str(Path(reader._dir) / "cut.db")
    arguments = [(path, reader.path, share, consumed, high, from_pos, gap_ticks) for share in shares]
    rows = reader._db.execute("SELECT COUNT(*) FROM inbox WHERE pos <= ?", (consumed,)).fetchone()
    return merged_report(
        reader,
        audit_in_processes(_audit_share, arguments),
        config_of=config_of,
        selected=selected,
        consumed=consumed,
        high=high,
        inbox_records=int(rows[0]),
        from_pos=from_pos,
    )


class PartitionedKafkaLogReader(KafkaLogReader):
    """The reader ``hvdm audit --broker URL`` opens: a ``KafkaLogReader`` whose audit can be split by
    partition (``audit_jobs``, the hook the audit command looks for). It lives here, not in
    ``audit_reader``, so the reader module does not depend back on the module that splits it."""

    def audit_jobs(self, jobs: int, **options: Any) -> AuditReport:
        """The audit of this cut split by partition over ``jobs`` processes."""
        return audit_partitions(self, jobs, **options)


def open_partitioned_reader(url: str, *, store_dir: str | None = None, jobs: int = 1) -> PartitionedKafkaLogReader:
    """``services.audit.reader.open_broker_reader``'s seam: a reader over ``--broker URL``, reading
    the topics in up to ``jobs`` processes and auditing them split by partition."""
    return PartitionedKafkaLogReader(KafkaSettings.from_url(url), url=url, store_dir=store_dir, jobs=jobs)
