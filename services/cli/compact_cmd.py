"""``hvdm compact``: drop history older than a limit, keeping snapshots, per-VM summaries and the cut.

Why an operator runs it: the embedded log never forgets, so its file grows for as long as the
service runs. ``hvdm compact --older-than-days 30`` keeps the last 30 days in full and the rest as
what the audit still reports about it (``services.event_log.compaction``). It rewrites the log, so
it takes the writer lock and is refused while the service runs; ``--dry-run`` only reads and says
what would go.

    $ hvdm compact --db /var/lib/hvdm/hvdm.db --older-than-days 30
    compacted /var/lib/hvdm/hvdm.db: cut after inbox position 81,234,117 (tick 2,592,000, ...)
    $ hvdm compact --db log.db --before 2026-11-01T00:00:00Z --dry-run --json

Exit status: 0 compacted (or nothing older than the limit), 1 refused or failed (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time

from ..audit.wall_clock import iso, parse_when
from ..event_log.compaction import CompactionError, Result, compact
from ..event_log.sqlite_log import NotAnHvdmLog
from .arg_types import ArgError, FloatArg

EXIT_OK = 0
EXIT_ERROR = 1

#: ``--older-than-days``: up to a century; 0 compacts everything consumed so far.
DAYS = FloatArg(0.0, 36500.0)
SECONDS_PER_DAY = 86_400


def iso_time(text: str) -> float:
    """``--before``: an ISO 8601 time (local without an offset) as Unix seconds."""
    try:
        return parse_when(text)
    except (ValueError, OverflowError, OSError) as exc:
        raise ArgError(str(exc)) from None


def _text(result: Result) -> str:
    cut = result.cut
    if cut is None:
        since = f" after the previous cut at position {result.previous_pos:,}" if result.previous_pos else ""
        return f"{result.db}: nothing stamped before {iso(result.limit_wall)}{since}; nothing to compact"
    verb = "would compact" if result.dry_run else "compacted"
    lines = [
        f"{verb} {result.db}: cut after inbox position {cut.pos:,} (tick {cut.tick:,}, appended {iso(cut.wall)}; "
        f"limit {iso(result.limit_wall)})",
        f"  removed        {cut.inbox_rows:,} inbox records, {cut.event_rows:,} events, {cut.outbox_rows:,} outbox "
        f"messages, {result.segments_removed} segments ({result.segments_split} split)",
        f"  kept           a snapshot and a summary for each of {result.vms} VMs",
    ]
    if result.bytes_after is not None:
        ratio = result.bytes_after / result.bytes_before if result.bytes_before else 0.0
        lines.append(
            f"  size           {result.bytes_before:,} -> {result.bytes_after:,} bytes on disk ({ratio:.1%} of before)"
        )
    else:
        lines.append(f"  size           {result.bytes_before:,} bytes on disk now")
    if result.vacuum_error is not None:
        lines.append(
            f"  VACUUM failed  ({result.vacuum_error}): the compaction is committed, the freed pages are reused by "
            "later writes; `sqlite3 PATH VACUUM` (service stopped) reclaims them once there is room for a copy"
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    limit = args.before if args.before is not None else time.time() - args.older_than_days * SECONDS_PER_DAY

    def stage(name: str) -> None:
        if not args.json:
            print(f"compact: {name}", file=sys.stderr, flush=True)

    try:
        result = compact(args.db, limit, dry_run=args.dry_run, stage=stage if args.progress else None)
    except (CompactionError, NotAnHvdmLog) as exc:
        print(f"hvdm: compact error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except sqlite3.Error as exc:  # locked, damaged or unwritable: infrastructure, not a bug
        print(f"hvdm: compact error: {args.db}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(result.to_dict()) if args.json else _text(result), flush=True)
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "compact",
        help="drop log history older than a limit, keeping snapshots and per-VM summaries the audit reports",
        description="Exit status: 0 compacted or nothing to do, 1 refused (service running, unconsumed inputs) "
        "or failed.",
    )
    parser.add_argument("--db", required=True, metavar="PATH", help="the SQLite log file")
    limit = parser.add_mutually_exclusive_group(required=True)
    limit.add_argument(
        "--older-than-days", type=DAYS, metavar="N", help="compact inbox records appended more than N days ago"
    )
    limit.add_argument(
        "--before", type=iso_time, metavar="TIME", help="compact inbox records appended before an ISO 8601 TIME"
    )
    parser.add_argument("--dry-run", action="store_true", help="only say what would be compacted (reads the log)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--progress", action="store_true", help="name each stage on stderr as it starts")
    parser.set_defaults(func=_run)
