"""Wall-clock time in audits: ISO 8601 timestamps to inbox positions and back.

Why: an incident is reported as "at 14:25", other logs are stamped in wall time, and the engine's
clock is ticks. Every inbox record of the embedded log carries the Unix time it was appended
(``SqliteLog``'s ``wall`` column, beside the record, never read by the engine), so ``--from`` and
``--until`` can take a timestamp and reports can say when things happened. Logs written before the
stamps existed (and the Kafka reader, whose envelopes carry none yet) have none: a timestamp is then
refused with one line, and positions or ticks still work.

A timestamp without an offset is local time, as an operator reads a wall clock; output is UTC (``Z``).

>>> parse_when("1970-01-01T00:01:00Z"), parse_when("1970-01-01 01:00:00+01:00")
(60.0, 0.0)
>>> iso(90.5)
'1970-01-01T00:01:30.500Z'
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .logfile import LogError


class NoWallClock(LogError):
    """The log records no wall-clock time (written before the stamps, or a reader without them)."""


def parse_when(text: str) -> float:
    """An ISO 8601 date and time as Unix seconds; raises ``ValueError`` with the reason."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time (e.g. 2026-12-05T14:25:00Z): {text[:40]!r}") from None
    return when.timestamp()  # naive: local time


def iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    when = dt.datetime.fromtimestamp(unix, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _require(log: Any, flag: str) -> Any:
    span = getattr(log, "wall_span", None)
    if span is None or span() is None:
        raise NoWallClock(f"{flag} TIME: this log records no wall-clock time (older log, or Kafka); give a position")
    return log


def position_from(log: Any, unix: float) -> int:
    """``--from TIME``: the position after which records are judged (records stamped at or after
    ``unix`` are in the window)."""
    pos: int = _require(log, "--from").last_pos_before_wall(unix, inclusive=False)
    return pos


def position_until(log: Any, unix: float) -> int:
    """``--until TIME``: the last position stamped at or before ``unix`` (0: none yet)."""
    pos: int = _require(log, "--until").last_pos_before_wall(unix, inclusive=True)
    return pos


def wall_of(log: Any, pos: int) -> float | None:
    lookup = getattr(log, "wall_of", None)
    return None if lookup is None else lookup(pos)


def wall_after(log: Any, pos: int) -> float | None:
    lookup = getattr(log, "wall_after", None)
    return None if lookup is None else lookup(pos)


def wall_span(log: Any) -> tuple[float, float] | None:
    span = getattr(log, "wall_span", None)
    return None if span is None else span()


def wall_of_ticks(log: Any) -> dict[int, float]:
    lookup = getattr(log, "wall_of_ticks", None)
    return {} if lookup is None else lookup()
