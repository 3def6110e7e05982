"""Wires the embedded service: SQLite log, engine runner, clock, and the loops that drive them.

Gateways, the QMP server and the metrics exporter talk to the engine only through this object:
``submit`` appends an input to the inbox (stamped with the current tick) and wakes the engine
loop, and listeners hear about every committed batch. Everything runs on one asyncio loop, so the
SQLite connection is used from one thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import ALL_VMS, Input, Tick
from services.dm_engine.records import to_dict
from services.dm_engine.state import VmState
from services.embedded.clock import TickClock
from services.embedded.runner import EngineRunner, Processed
from services.event_log.sqlite_log import SqliteLog

log = logging.getLogger("hvdm.service")


class EmbeddedService:
    """The engine on a SQLite log, fed by ``submit`` and a ticker, inside one asyncio loop."""

    def __init__(self, log_: SqliteLog, runner: EngineRunner, clock: TickClock, *, batch_size: int = 1000) -> None:
        self.log = log_
        self.runner = runner
        self.clock = clock
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        self._processed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_tick = int(log_.get_meta("last_tick") or -1)
        self.on_batch: list[Callable[[int, float], None]] = []  # (records, seconds) per batch

    @classmethod
    def open(
        cls,
        db_path: str | Path,
        *,
        speed: float = 1.0,
        config: EngineConfig | None = None,
        snapshot_every: int = 2000,
    ) -> EmbeddedService:
        sqlite_log = SqliteLog(db_path)
        runner = EngineRunner(sqlite_log, config, snapshot_every=snapshot_every)
        start = int(sqlite_log.get_meta("last_tick") or 0)
        clock = TickClock(tick_seconds=runner.config.tick_seconds, speed=speed, start_tick=start)
        return cls(sqlite_log, runner, clock)

    # ------------------------------------------------------------------ the interface
    @property
    def states(self) -> dict[str, VmState]:
        """Every VM's state, live (the runner's)."""
        return self.runner.states

    @property
    def consumed(self) -> int:
        """Inbox position of the last input processed: ``submit``'s return value reaches it."""
        return self.runner.consumed

    def now_tick(self) -> int:
        return max(self.clock.now_tick(), self._last_tick)

    def now_seconds(self) -> float:
        return self.clock.now_seconds()

    def submit(self, vm: str, record: Input) -> int:
        """Append one input for ``vm`` to the inbox, stamped with the current tick."""
        tick = self.now_tick()
        record = replace(record, tick=tick)
        # The raw guest bytes are the one stored fact (no decoded copy: issue 14).
        pos = self.log.append_input(vm, tick, to_dict(record))
        self._wake.set()
        return pos

    def add_listener(self, cb: Callable[[Sequence[Processed]], None]) -> None:
        self.runner.listeners.append(cb)

    async def wait_processed(self, pos: int, timeout: float = 5.0) -> None:
        async def _wait() -> None:
            async with self._processed:
                await self._processed.wait_for(lambda: self.runner.consumed >= pos)

        self._wake.set()
        await asyncio.wait_for(_wait(), timeout)

    # ------------------------------------------------------------------ loops
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._engine_loop(), name="hvdm-engine"),
            asyncio.create_task(self._ticker(), name="hvdm-ticker"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        # Drain what is already in the inbox so a clean stop leaves nothing half-done.
        self.runner.run_until_idle(self.batch_size)
        self.log.close()

    def process_pending(self) -> int:
        """Run the engine until the inbox is drained (synchronously); returns records consumed."""
        total = 0
        while True:
            started = time.perf_counter()
            n = self.runner.run_batch(self.batch_size)
            if not n:
                return total
            elapsed = time.perf_counter() - started
            total += n
            for cb in self.on_batch:
                cb(n, elapsed)

    async def _engine_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.process_pending()
            except Exception:
                log.exception("engine batch failed; state rebuilt from the log, retrying")
                await asyncio.sleep(0.1)
                self._wake.set()
            async with self._processed:
                self._processed.notify_all()

    def append_tick(self, tick: int) -> int:
        """One broadcast tick for every VM; the engine's only source of time."""
        pos = self.log.append_input(ALL_VMS, tick, to_dict(Tick(tick=tick)))
        self.log.set_meta("last_tick", str(tick))
        self._last_tick = tick
        self._wake.set()
        return pos

    async def _ticker(self) -> None:
        while True:
            now = self.clock.now_tick()
            if now > self._last_tick:
                # Catch up one tick at a time: timeouts count ticks, so none may be skipped.
                for tick in range(self._last_tick + 1, now + 1):
                    self.append_tick(tick)
            await asyncio.sleep(max(0.001, self.clock.wall_seconds_until_tick(self._last_tick + 1)))
