"""Waiting for the log to become writable again: exponential back-off around one write.

Why this exists: a full disk is usually transient (a log rotation, an operator freeing space), and
every writer of the embedded log -- the ticker, the engine loop, the gateway's connection
handlers -- must neither die nor drop what it was writing while it lasts. Each of them retries
the same write (safe: a failed write left nothing behind, see ``LogWriteError``) with the same
back-off, and says so in the service log, so an outage is visible and time resumes by itself
when space returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .sqlite_log import LogWriteError

log = logging.getLogger("hvdm.log")

T = TypeVar("T")

#: How often a writer that is still waiting says so (the first failure is logged at once).
STILL_WAITING_EVERY_S = 30.0


@dataclass(slots=True)
class Backoff:
    """Delays of ``first``, ``first * factor``, ... capped at ``cap`` seconds; ``reset`` after a success.

    >>> b = Backoff(first=0.1, factor=2.0, cap=0.3)
    >>> [b.next_delay() for _ in range(4)]
    [0.1, 0.2, 0.3, 0.3]
    >>> b.reset(); b.next_delay()
    0.1
    """

    first: float = 0.05
    factor: float = 2.0
    cap: float = 2.0
    _next: float = field(default=0.0, init=False)

    def next_delay(self) -> float:
        delay = self._next or self.first
        self._next = min(self.cap, delay * self.factor)
        return min(delay, self.cap)

    def reset(self) -> None:
        self._next = 0.0


async def retry_write(
    write: Callable[[], T],
    *,
    what: str,
    backoff: Backoff | None = None,
    give_up_after: float | None = None,
) -> T:
    """``write()``, retried with back-off while it raises ``LogWriteError``.

    ``what`` names the write in the log lines. With ``give_up_after`` (seconds), the last
    ``LogWriteError`` is raised once that much time has passed; without it, this waits as long
    as the outage lasts (the caller's task can still be cancelled).
    """
    backoff = backoff or Backoff()
    started = time.monotonic()
    said = 0.0
    while True:
        try:
            return write()
        except LogWriteError as exc:
            now = time.monotonic()
            if give_up_after is not None and now - started >= give_up_after:
                raise
            if said == 0.0 or now - said >= STILL_WAITING_EVERY_S:
                log.warning(
                    "event=log_write_waiting what=%s kind=%s waited_seconds=%.1f", what, exc.kind, now - started
                )
                said = now
            await asyncio.sleep(backoff.next_delay())
