"""QEMU's QMP event throttle, driven by a clock the caller passes in.

QEMU's monitor (``monitor_qapi_event_queue``, MON L318) rate-limits some events to one per period:
the first event goes out at once and arms a timer; events arriving while the timer runs replace
each other (only the latest is kept); when the timer fires, the kept event goes out and the timer
re-arms, otherwise the throttle goes idle. This class keeps exactly that state, but instead of a
timer it is *polled* with the current time, so the service can drive it from its own (simulated)
clock and tests are deterministic without sleeping.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class RateLimiter(Generic[T]):
    """One throttled event stream: at most one emission per ``period`` seconds, keeping the latest.

    >>> r: RateLimiter[str] = RateLimiter(1.0)
    >>> r.offer("a", now=10.0), r.offer("b", now=10.2), r.offer("c", now=10.5)
    (['a'], [], [])
    >>> r.poll(now=10.9), r.poll(now=11.0), r.poll(now=12.0), r.armed
    ([], ['c'], [], False)

    Runtime complexity: O(1) per call.
    """

    __slots__ = ("_pending", "_until", "period")

    def __init__(self, period: float) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.period = period
        self._until: float | None = None
        self._pending: T | None = None

    @property
    def armed(self) -> bool:
        """True while the throttle's timer runs (a ``poll`` may still emit something)."""
        return self._until is not None

    def poll(self, now: float) -> list[T]:
        """Fire the timer if it is due: emit the kept event (and re-arm), or go idle."""
        out: list[T] = []
        while self._until is not None and now >= self._until:
            if self._pending is not None:
                out.append(self._pending)
                self._pending = None
                # QEMU re-arms from the firing time, not from when we noticed it.
                self._until += self.period
            else:
                self._until = None
        return out

    def offer(self, item: T, now: float) -> list[T]:
        """An event happened at ``now``: returns what must be emitted now (possibly nothing)."""
        out = self.poll(now)
        if self._until is None:
            out.append(item)
            self._until = now + self.period
        else:
            self._pending = item
        return out
