"""The service's clock: wall time scaled by ``speed`` and cut into engine ticks.

The engine never reads a clock; this is the one place that does. Ticks continue from the last
tick recorded in the log, so they stay monotonic across restarts and replays never see time run
backwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TickClock:
    def __init__(
        self,
        *,
        tick_seconds: float = 1.0,
        speed: float = 1.0,
        start_tick: int = 0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0 or tick_seconds <= 0:
            raise ValueError("speed and tick_seconds must be positive")
        self.tick_seconds = tick_seconds
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._start_seconds = start_tick * tick_seconds

    def now_seconds(self) -> float:
        """Simulated seconds since the log's epoch."""
        return self._start_seconds + (self._monotonic() - self._t0) * self.speed

    def now_tick(self) -> int:
        return int(self.now_seconds() // self.tick_seconds)

    def wall_seconds_until_tick(self, tick: int) -> float:
        """How long to sleep (wall clock) until ``tick`` begins."""
        return max(0.0, (tick * self.tick_seconds - self.now_seconds()) / self.speed)
