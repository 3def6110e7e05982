"""``hvdm audit`` and ``hvdm replay``: read an event log, rebuild, report.

Why on the command line: after an incident the log is what is left, and the questions are "can
this log be trusted?" (audit: replay the inbox and compare byte for byte) and "what did the
service believe at that moment?" (replay --until). Both only read the log.

Exit status of ``audit``: 0 when the replay matches the recorded events, 2 when it diverges, 1 on
errors (one line on stderr, never a traceback). ``replay`` exits 0 or 1.

    $ hvdm audit --db /var/lib/hvdm/log.db --json
    {"replay_matches": true, "inbox_records": 1200, "events": 431, ..., "first_divergence": null}
    $ hvdm replay --db /var/lib/hvdm/log.db --vm vm1 --until-tick 300
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing

from services.audit import LogError, ReplayError, audit, audit_text, open_log, point_text, state_at
from services.event_log.sqlite_log import SqliteLog

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DIVERGED = 2


def _fail(command: str, message: object) -> int:
    line = f"hvdm: {command} error: {message}".replace("\r", " ").replace("\n", " ")
    print(line, file=sys.stderr)
    return EXIT_ERROR


def _with_log(command: str, path: str, body: Callable[[SqliteLog], tuple[str, int]]) -> int:
    """Run ``body`` on the opened log and print its output; every expected failure becomes one
    stderr line and exit status 1."""
    try:
        with closing(open_log(path)) as log:
            output, code = body(log)
    except (LogError, ReplayError) as exc:
        return _fail(command, exc)
    except sqlite3.Error as exc:  # locked, corrupt or unreadable file: infrastructure, not a bug
        return _fail(command, f"{path}: {exc}")
    try:
        print(output, flush=True)
    except BrokenPipeError:
        # The reader went away (``| head``): not the audit's failure; silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _run_audit(args: argparse.Namespace) -> int:
    def body(log: SqliteLog) -> tuple[str, int]:
        report = audit(log, vm=args.vm)
        output = json.dumps(report.to_dict()) if args.json else audit_text(report)
        return output, EXIT_OK if report.replay_matches else EXIT_DIVERGED

    return _with_log("audit", args.db, body)


def _run_replay(args: argparse.Namespace) -> int:
    def body(log: SqliteLog) -> tuple[str, int]:
        point = state_at(log, args.vm, until_pos=args.until, until_tick=args.until_tick, from_inbox=args.from_inbox)
        return (json.dumps(point.to_dict()) if args.json else point_text(point)), EXIT_OK

    return _with_log("replay", args.db, body)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit_parser = subparsers.add_parser(
        "audit",
        help="replay a log's inbox, compare with its events byte for byte, report accounting",
        description="Exit status: 0 replay matches, 2 replay diverges, 1 error.",
    )
    audit_parser.add_argument("--db", required=True, metavar="PATH", help="the SQLite log file")
    audit_parser.add_argument("--vm", metavar="ID", help="audit only this VM")
    audit_parser.add_argument("--json", action="store_true", help="print one JSON document")
    audit_parser.set_defaults(func=_run_audit)

    replay_parser = subparsers.add_parser(
        "replay", help="rebuild one VM's state at an inbox position or tick, for incident analysis"
    )
    replay_parser.add_argument("--db", required=True, metavar="PATH", help="the SQLite log file")
    replay_parser.add_argument("--vm", required=True, metavar="ID", help="the VM to rebuild")
    point = replay_parser.add_mutually_exclusive_group()
    point.add_argument(
        "--until",
        type=_non_negative,
        metavar="POS",
        help="after this inbox position (default and maximum: what the engine consumed)",
    )
    point.add_argument(
        "--until-tick", type=_non_negative, metavar="N", help="after the last inbox record at or before tick N"
    )
    replay_parser.add_argument(
        "--from-inbox",
        action="store_true",
        help="re-decide the inbox instead of folding the recorded events (to compare after an audit)",
    )
    replay_parser.add_argument("--json", action="store_true", help="print one JSON document")
    replay_parser.set_defaults(func=_run_replay)
