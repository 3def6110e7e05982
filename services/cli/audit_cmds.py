"""``hvdm audit`` and ``hvdm replay``: read an event log, rebuild, report.

Why on the command line: after an incident the log is what is left, and the questions are "can
this log be trusted?" (audit: replay the inbox and compare byte for byte) and "what did the
service believe at that moment?" (replay --until). Both only read the log.

Exit status of ``audit``: 0 when the replay matches the recorded events, 2 when it diverges, 3 when
it matches but the engine's consumed position is behind its inbox (``consumed_behind_inbox``: the
engine stopped on a record, or is still running), 4 with ``--fail-on-violations`` when it matches
but a guest committed protocol violations in the judged window (a CI gate: "this run's guests
behaved"), 1 on errors (one line on stderr, never a traceback). ``replay`` exits 0 or 1.

    $ hvdm audit --db /var/lib/hvdm/log.db --json
    {"replay_matches": true, "inbox_records": 1200, "events": 431, ..., "first_divergence": null}
    $ hvdm audit --db log.db --vm vm1 --vm vm7 --from-tick 3600 --html report.html
    $ hvdm replay --db /var/lib/hvdm/log.db --vm vm1 --until-tick 300
    $ hvdm replay --db log.db --vm vm1 --until 2026-12-05T14:25:00      # local time; ...Z for UTC
    $ hvdm audit --db log.db --from 2026-12-05T14:00:00Z --html report.html

``--from`` (audit) and ``--until`` (replay) take an inbox position or an ISO 8601 time: the log
stamps every inbox record with the wall time it was appended (``services.audit.wall_clock``), and
reports show those times next to ticks.

The log is opened read-only (``SqliteReader``), so an audit never changes the file it judges and
reads logs written by older versions. ``--broker URL`` reads a Kafka deployment instead, through
the reader the Kafka package provides (``services.audit.reader.open_broker_reader``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audit import LogError, ReplayError, audit, audit_text, compacted, point_text, state_at
from ..audit.jobs import audit_jobs, default_jobs
from ..audit.logfile import open_reader
from ..audit.reader import BrokerReaderUnavailable, LogReader, SqliteReader, open_broker_reader
from ..audit.wall_clock import (
    iso,
    parse_when,
    position_from,
    position_until,
    wall_after,
    wall_of,
    wall_span,
)
from .arg_types import NON_NEGATIVE, OUTPUT_PATH, VM_ID, IntArg

#: ``--jobs``: processes, each a copy of the engine's state for its VMs.
JOBS = IntArg(1, 256)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DIVERGED = 2
EXIT_BEHIND = 3
EXIT_VIOLATIONS = 4


@dataclass(frozen=True, slots=True)
class When:
    """A wall-clock time given on the command line (resolved to a position once the log is open)."""

    unix: float
    text: str


@dataclass(frozen=True, slots=True)
class PositionOrTimeArg:
    """An inbox position (a non-negative integer) or an ISO 8601 time (``2026-12-05T14:25:00Z``)."""

    def __call__(self, text: str) -> int | When:
        if text.strip().isdigit():
            return NON_NEGATIVE(text)
        try:
            return When(parse_when(text), text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"must be an inbox position or an ISO 8601 time: {e}") from None


POSITION_OR_TIME = PositionOrTimeArg()


def _wall_section(log: LogReader, from_pos: int) -> dict[str, str | None] | None:
    """When the log's records were appended (None: the log has no wall-clock stamps)."""
    span = wall_span(log)
    if span is None:
        return None
    return {"first": iso(span[0]), "last": iso(span[1]), "from": iso(wall_after(log, from_pos)) if from_pos else None}


def _fail(command: str, message: object) -> int:
    line = f"hvdm: {command} error: {message}".replace("\r", " ").replace("\n", " ")
    print(line, file=sys.stderr)
    return EXIT_ERROR


def _open(args: argparse.Namespace) -> LogReader:
    broker = getattr(args, "broker", None)
    if broker:
        try:
            return open_broker_reader(broker, _jobs(args))
        except (LogError, BrokerReaderUnavailable):
            raise
        except Exception as exc:  # the broker is unreachable or refused us: infrastructure, not a bug
            raise LogError(f"{broker}: {type(exc).__name__}: {exc}") from None
    if not args.db:
        raise LogError("give --db PATH or --broker URL")
    return open_reader(args.db)


def _jobs(args: argparse.Namespace) -> int:
    jobs = getattr(args, "jobs", None)
    return default_jobs() if jobs is None else int(jobs)


def _with_log(command: str, args: argparse.Namespace, body: Callable[[LogReader], tuple[str, int]]) -> int:
    """Run ``body`` on the opened log and print its output; every expected failure becomes one
    stderr line and exit status 1."""
    try:
        with closing(_open(args)) as log:
            output, code = body(log)
    except (LogError, ReplayError, BrokerReaderUnavailable) as exc:
        return _fail(command, exc)
    except sqlite3.Error as exc:  # locked, corrupt or unreadable file: infrastructure, not a bug
        return _fail(command, f"{args.db}: {exc}")
    try:
        print(output, flush=True)
    except BrokenPipeError:
        # The reader went away (``| head``): not the audit's failure; silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _progress_bar(enabled: bool) -> Callable[[float], None] | None:
    """A one-line bar on stderr (never on stdout, which may be JSON)."""
    if not enabled:
        return None
    started = time.monotonic()

    def show(fraction: float) -> None:
        width = 30
        done = int(fraction * width)
        elapsed = time.monotonic() - started
        print(
            f"\rreading log [{'#' * done}{'.' * (width - done)}] {fraction:6.1%} {elapsed:5.1f} s",
            end="" if fraction < 1.0 else "\n",
            file=sys.stderr,
            flush=True,
        )

    return show


def _run_audit(args: argparse.Namespace) -> int:
    def body(log: LogReader) -> tuple[str, int]:
        progress = _progress_bar(args.progress or sys.stderr.isatty())
        from_pos = args.from_pos or 0
        if isinstance(from_pos, When):
            from_pos = position_from(log, from_pos.unix)
        jobs = _jobs(args)
        # A Kafka deployment's reader splits its audit by partition (kafka_engine.audit_partitions).
        by_partition = getattr(log, "audit_jobs", None)
        if jobs > 1 and isinstance(log, SqliteReader) and progress is None:
            report = audit_jobs(
                log,
                jobs,
                vms=args.vm or None,
                from_pos=from_pos,
                from_tick=args.from_tick,
                gap_ticks=args.gap_ticks,
            )
        elif jobs > 1 and callable(by_partition):
            report = by_partition(
                jobs, vms=args.vm or None, from_pos=from_pos, from_tick=args.from_tick, gap_ticks=args.gap_ticks
            )
        else:
            report = audit(
                log,
                vms=args.vm or None,
                from_pos=from_pos,
                from_tick=args.from_tick,
                progress=progress,
                gap_ticks=args.gap_ticks,
            )
        if args.html:
            from ..audit.html import audit_html

            Path(args.html).write_text(audit_html(report, log), encoding="utf-8")
        rebalancer = _rebalancer_section(args)
        doc = report.to_dict()
        wall = _wall_section(log, from_pos)
        if args.json:
            if rebalancer is not None:
                doc["rebalancer"] = rebalancer
            doc["wall_clock"] = wall
            output = json.dumps(doc)
        else:
            output = audit_text(report) + _wall_text(wall) + _rebalancer_text(rebalancer)
        if not report.replay_matches:
            return output, EXIT_DIVERGED
        if report.consumed_behind_inbox:
            return output, EXIT_BEHIND
        if args.fail_on_violations and any(sum(vm["violations"].values()) for vm in doc["vms"].values()):
            return output, EXIT_VIOLATIONS
        return output, EXIT_OK

    return _with_log("audit", args, body)


def _rebalancer_section(args: argparse.Namespace) -> dict[str, Any] | None:
    """On Kafka, the rebalancer's hosts, lease claims and migration recommendations (issue 15)."""
    if not getattr(args, "broker", None):
        return None
    from ..kafka_engine.settings import KafkaSettings
    from ..rebalancer.kafka_live import audit_section

    return audit_section(KafkaSettings.from_url(args.broker))


def _rebalancer_text(section: dict[str, Any] | None) -> str:
    if section is None:
        return ""
    from ..rebalancer.kafka_live import audit_section_text

    return audit_section_text(section)


def _wall_text(wall: dict[str, str | None] | None) -> str:
    if wall is None:
        return "\nwall clock     not recorded in this log (written before wall-clock stamps)"
    since = f"; window from {wall['from']}" if wall["from"] else ""
    return f"\nwall clock     records appended from {wall['first']} to {wall['last']} (UTC){since}"


def _first(log: LogReader) -> str | None:
    span = wall_span(log)
    return None if span is None else iso(span[0])


def _run_replay(args: argparse.Namespace) -> int:
    def body(log: LogReader) -> tuple[str, int]:
        until = args.until
        if isinstance(until, When):
            until = position_until(log, until.unix)
            if until == 0 and compacted.base_of(log) is None:
                raise LogError(
                    f"--until {args.until.text}: no inbox record is stamped that early (first stamp: {_first(log)}; "
                    "archived history keeps no stamps)"
                )
        point = state_at(log, args.vm, until_pos=until, until_tick=args.until_tick, from_inbox=args.from_inbox)
        at = iso(wall_of(log, point.until_pos))
        if args.json:
            return json.dumps({**point.to_dict(), "wall_time": at}), EXIT_OK
        return point_text(point) + f"\nwall clock: the record at that position was appended at {at or '-'}", EXIT_OK

    return _with_log("replay", args, body)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit_parser = subparsers.add_parser(
        "audit",
        help="replay a log's inbox, compare with its events byte for byte, report accounting",
        description="Exit status: 0 replay matches, 2 replay diverges, 3 inbox not fully consumed, 1 error.",
    )
    source = audit_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", metavar="PATH", help="the SQLite log file (opened read-only)")
    source.add_argument("--broker", metavar="URL", help="a Kafka deployment (kafka://host:port), if supported")
    audit_parser.add_argument("--vm", metavar="ID", type=VM_ID, action="append", help="audit only this VM (repeatable)")
    window = audit_parser.add_mutually_exclusive_group()
    window.add_argument(
        "--from",
        dest="from_pos",
        type=POSITION_OR_TIME,
        metavar="POS|TIME",
        help="judge and report inbox records after POS, or appended at or after an ISO 8601 TIME",
    )
    window.add_argument("--from-tick", type=NON_NEGATIVE, metavar="N", help="judge and report from tick N on")
    audit_parser.add_argument("--json", action="store_true", help="print one JSON document")
    audit_parser.add_argument(
        "--html", metavar="FILE", type=OUTPUT_PATH, help="also write a self-contained HTML report with plots"
    )
    audit_parser.add_argument(
        "--gap-ticks", type=NON_NEGATIVE, default=3, metavar="N", help="status-report gap threshold (default 3)"
    )
    audit_parser.add_argument("--progress", action="store_true", help="progress bar on stderr even if not a TTY")
    audit_parser.add_argument(
        "--jobs",
        type=JOBS,
        metavar="N",
        help="processes auditing in parallel: the embedded log split by VM, a Kafka deployment (--broker) by "
        "partition (default: the cores; one for a small log, and for the embedded log with --progress)",
    )
    audit_parser.add_argument(
        "--fail-on-violations",
        action="store_true",
        help="exit 4 when the log replays but a guest committed protocol violations (for CI gates)",
    )
    audit_parser.set_defaults(func=_run_audit)

    replay_parser = subparsers.add_parser(
        "replay", help="rebuild one VM's state at an inbox position or tick, for incident analysis"
    )
    replay_parser.add_argument("--db", required=True, metavar="PATH", help="the SQLite log file")
    replay_parser.add_argument("--vm", required=True, metavar="ID", type=VM_ID, help="the VM to rebuild")
    point = replay_parser.add_mutually_exclusive_group()
    point.add_argument(
        "--until",
        type=POSITION_OR_TIME,
        metavar="POS|TIME",
        help="after this inbox position, or the last record appended at or before an ISO 8601 TIME "
        "(default and maximum: what the engine consumed)",
    )
    point.add_argument(
        "--until-tick", type=NON_NEGATIVE, metavar="N", help="after the last inbox record at or before tick N"
    )
    replay_parser.add_argument(
        "--from-inbox",
        action="store_true",
        help="re-decide the inbox instead of folding the recorded events (to compare after an audit)",
    )
    replay_parser.add_argument("--json", action="store_true", help="print one JSON document")
    replay_parser.set_defaults(func=_run_replay)
