"""Wires the embedded service: SQLite log, engine runner, clock, and the loops that drive them.

Gateways, the QMP server and the metrics exporter talk to the engine only through this object:
``submit`` appends an input to the inbox (stamped with the current tick) and wakes the engine
loop, and listeners hear about every committed batch. Everything runs on one asyncio loop, so the
SQLite connection is used from one thread only.

Faults: when the log cannot be written (a full disk, an I/O error), ``submit`` raises
``LogWriteError`` having stored nothing, so the caller can tell its peer or retry; the ticker and
the engine loop retry with back-off and carry on by themselves once writes succeed again (ticks
missed meanwhile are appended then, one per tick, as timeouts count ticks). Neither loop ends
on an error: an unexpected exception is logged with its traceback and retried, and a loop that
ends anyway is reported in ``failure`` so ``hvdm run`` stops loudly instead of running without
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..dm_engine.config import EngineConfig
from ..dm_engine.inputs import ALL_VMS, ChannelClosed, Input, Tick
from ..dm_engine.records import to_dict
from ..dm_engine.state import ProtocolState, VmState
from ..event_log.retry import Backoff, retry_write
from ..event_log.sqlite_log import LogWriteError, SqliteLog
from .clock import TickClock
from .runner import EngineRunner, Processed

log = logging.getLogger("hvdm.service")

#: Ticks appended per transaction when the ticker catches up after an outage.
MAX_TICKS_PER_APPEND = 1000

#: ``ChannelClosed.reason`` of the channels a clean stop closes.
HOST_SHUTDOWN = "host shutdown"


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
        #: Set when a loop of the service ended on an error: the service is not running any more.
        self.failure: BaseException | None = None

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
        """Append one input for ``vm`` to the inbox, stamped with the current tick.

        Raises ``LogWriteError`` (nothing stored) while the log cannot be written."""
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
        for task in self._tasks:
            task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failure = exc
            log.critical("event=service_loop_died loop=%s error=%r", task.get_name(), exc, exc_info=exc)

    async def stop(self, *, close_channels: bool = False, timeout: float = 10.0) -> bool:
        """Stop the loops, drain the inbox and close the log; True when nothing was left undone.

        ``close_channels``: a host shutdown (``hvdm run`` ending): every channel still open is
        closed in the log (``ChannelClosed(reason="host shutdown")``), so the log says the guests
        lost their host. Without it (tests, a restart in place) channels stay open for a resume.
        While the log cannot be written this waits up to ``timeout`` seconds, then gives up
        loudly: what is in the inbox is processed at the next start, nothing is lost.
        """
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        deadline = time.monotonic() + timeout
        try:
            # Drain what is already in the inbox so a clean stop leaves nothing half-done.
            await self._drain(deadline)
            if close_channels:
                await self._close_open_channels(deadline)
            clean = True
        except LogWriteError as exc:
            log.error(
                "event=stop_incomplete kind=%s unprocessed_inbox_records=%d; they are processed at the next start",
                exc.kind,
                self.runner.lag(),
            )
            clean = False
        self.log.close()
        return clean

    async def _drain(self, deadline: float) -> None:
        """Process the inbox to its end, retrying failed commits until ``deadline``."""
        await retry_write(
            lambda: self.runner.run_until_idle(self.batch_size),
            what="drain inbox",
            give_up_after=max(0.0, deadline - time.monotonic()),
        )

    async def _close_open_channels(self, deadline: float) -> None:
        # DM-gateway VMs only: a QEMU-managed VM's channel is QEMU's, and its agent detaches it.
        open_vms = [
            vm
            for vm, s in sorted(self.runner.states.items())
            if s.protocol is not ProtocolState.CLOSED and s.qemu is None
        ]
        if not open_vms:
            return
        tick = self.now_tick()
        rows = [(vm, tick, to_dict(ChannelClosed(tick=tick, reason=HOST_SHUTDOWN)), None) for vm in open_vms]
        await retry_write(
            lambda: self.log.append_inputs(rows),
            what="close channels",
            give_up_after=max(0.0, deadline - time.monotonic()),
        )
        await self._drain(deadline)
        log.info("event=channels_closed reason=%r vms=%s", HOST_SHUTDOWN, ",".join(open_vms))

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
        backoff = Backoff()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.process_pending()
                backoff.reset()
            except LogWriteError:
                # Logged and counted by the log; the batch is retried from the committed state.
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()
            except Exception:
                log.exception("engine batch failed; state rebuilt from the log, retrying")
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()
            async with self._processed:
                self._processed.notify_all()

    def append_tick(self, tick: int) -> int:
        """One broadcast tick for every VM; the engine's only source of time."""
        return self.append_ticks(tick, tick)

    def append_ticks(self, first: int, last: int) -> int:
        """Ticks ``first..last`` and the clock's ``last_tick``, in one transaction (all or none)."""
        rows = [(ALL_VMS, t, to_dict(Tick(tick=t)), None) for t in range(first, last + 1)]
        pos = self.log.append_inputs(rows, meta={"last_tick": str(last)})
        self._last_tick = last
        self._wake.set()
        return pos

    async def _ticker(self) -> None:
        backoff = Backoff()
        while True:
            now = self.clock.now_tick()
            try:
                # Catch up tick by tick: timeouts count ticks, so none may be skipped.
                while now > self._last_tick:
                    self.append_ticks(self._last_tick + 1, min(now, self._last_tick + MAX_TICKS_PER_APPEND))
                backoff.reset()
            except LogWriteError:
                await asyncio.sleep(backoff.next_delay())  # logged and counted by the log
                continue
            except Exception:
                log.exception("ticker failed to append ticks; retrying")
                await asyncio.sleep(backoff.next_delay())
                continue
            await asyncio.sleep(max(0.001, self.clock.wall_seconds_until_tick(self._last_tick + 1)))
