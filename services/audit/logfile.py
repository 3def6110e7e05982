"""Open an existing hvdm SQLite log for an audit, and read the engine config it was made with.

Why a separate check before ``SqliteLog``: ``SqliteLog`` creates its tables in whatever file it
is given, which is right for the service and wrong for an audit -- pointing ``hvdm audit`` at a
typo or at some other database must report that, not quietly turn it into an empty hvdm log.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Final

from ..dm_engine.config import EngineConfig
from ..event_log.sqlite_log import SqliteLog
from .reader import LogReader, SqliteReader, UnreadableLog, connect_read_only

#: Tables an audit reads; a file without them was not written by the engine.
REQUIRED_TABLES: Final = frozenset({"meta", "inbox", "events", "outbox", "positions"})


class LogError(Exception):
    """The log cannot be audited: missing, not SQLite, not an hvdm log, or a record is unreadable."""


def _check(path: str | Path) -> Path:
    """``path`` if it is an hvdm log (checked read-only), else LogError."""
    file = Path(path)
    if not file.is_file():
        raise LogError(f"no such log file: {path}")
    try:
        with closing(connect_read_only(file)) as db:
            tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except UnreadableLog as exc:
        raise LogError(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise LogError(f"{path}: not a readable SQLite database ({exc})") from None
    missing = sorted(REQUIRED_TABLES - tables)
    if missing:
        raise LogError(f"{path}: not an hvdm log (no table {', '.join(missing)})")
    return file


def open_log(path: str | Path) -> SqliteLog:
    """Open ``path`` for writing (the rebalancer appends inputs) after checking it is an hvdm log."""
    return SqliteLog(_check(path))


def open_reader(path: str | Path) -> SqliteReader:
    """Open ``path`` read-only for an audit; works on logs of older schema versions."""
    file = _check(path)
    try:
        return SqliteReader(file)
    except sqlite3.Error as exc:
        raise LogError(f"{path}: cannot be opened read-only ({exc})") from None


def engine_config(log: LogReader) -> tuple[EngineConfig, str]:
    """The config the log was produced with, and where it came from (``meta`` or ``default``).

    A log the engine never opened has no config stored; the defaults are what a runner would
    have used on it, and the report says so rather than guessing silently.
    """
    stored = log.get_meta("engine_config")
    if stored is None:
        return EngineConfig(), "default"
    try:
        data = json.loads(stored)
        return EngineConfig.from_dict(data), "meta"
    except (ValueError, TypeError, AttributeError) as exc:
        raise LogError(f"meta engine_config is not a valid EngineConfig: {exc}") from None
