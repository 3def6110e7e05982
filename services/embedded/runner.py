"""Drives the pure engine from the SQLite log: read inputs in order, step, commit the results.

This is the adapter between the core (``dm_engine.step``) and a durable log. It keeps every VM's
state in memory, rebuilt at start-up from the latest snapshot plus the events after it, and
commits each batch's events, outbox messages, snapshots and consumed position together, which is
what makes a crash-and-restart neither lose nor double-apply an input.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from ..dm_engine.config import EngineConfig
from ..dm_engine.decider import initial_state
from ..dm_engine.records import event_from_dict, loads, stored_event, stored_event_json
from ..dm_engine.state import VmState
from ..dm_engine.step import Processed, fold_recorded, forgets, read_stored, step
from ..event_log.sqlite_log import SqliteLog, StepWrite

__all__ = ["EngineRunner", "Processed", "ProcessedListener"]


#: Consumed inbox records between two archivings of history into a compressed segment.
ARCHIVE_EVERY = 100_000


class ProcessedListener(Protocol):
    def __call__(self, batch: Sequence[Processed]) -> None: ...


class EngineRunner:
    """The embedded engine: one SQLite log, every VM in one process."""

    def __init__(
        self,
        log: SqliteLog,
        config: EngineConfig | None = None,
        *,
        snapshot_every: int = 2000,
        archive_every: int = ARCHIVE_EVERY,
    ) -> None:
        self.log = log
        stored = log.get_meta("engine_config")
        if stored is not None and config is not None and config != EngineConfig.from_dict(json.loads(stored)):
            # The log's events were decided with the stored config; replays must keep using it.
            logging.getLogger(__name__).warning(
                "event=engine_config_kept reason=%r", "the log has its own engine config; a new log takes the given one"
            )
            config = None
        if config is None:
            config = EngineConfig.from_dict(json.loads(stored)) if stored else EngineConfig()
        if stored is None:
            # The config is part of what the log means: audits replay with the same one.
            log.set_meta("engine_config", json.dumps(config.to_dict(), sort_keys=True))
        self.config = config
        self.snapshot_every = snapshot_every
        #: Consumed inbox records kept live before they go into a compressed segment (0: never).
        self.archive_every = archive_every
        self.states: dict[str, VmState] = {}
        self._events_since_snapshot: dict[str, int] = {}
        self._last_seq: dict[str, int] = {}
        self.listeners: list[Callable[[Sequence[Processed]], None]] = []
        self.inputs_processed = 0
        self.recover()

    # ------------------------------------------------------------------ recovery
    def recover(self) -> None:
        """Rebuild every VM's state: latest snapshot, then the events recorded after it."""
        self.states.clear()
        self._events_since_snapshot.clear()
        self._last_seq.clear()
        for vm, seq, _pos, data in self.log.snapshots():
            self.states[vm] = VmState.from_snapshot(data)
            self._last_seq[vm] = seq
        for vm in self.log.vms():
            state = self.states.get(vm)
            if state is None:
                state = self.states[vm] = initial_state(vm)
            after = self._last_seq.get(vm, 0)
            count = 0
            gone = False
            for row in self.log.iter_events(vm, after):
                event = event_from_dict(loads(row.record))
                state = fold_recorded(state, event)
                gone = forgets((event,))
                self._last_seq[vm] = row.seq
                count += 1
            self._events_since_snapshot[vm] = count
            if gone or (after == 0 and count == 0):
                # Forgotten and not back since, or never decided anything (``step``): no state, so
                # no QMP socket or metric series either.
                del self.states[vm]
            else:
                self.states[vm] = state

    @property
    def consumed(self) -> int:
        return self.log.consumed_position()

    def events_since_snapshot(self) -> int:
        """Events a restart would fold on top of the snapshots: the recovery cost."""
        return sum(self._events_since_snapshot.values())

    def lag(self) -> int:
        """Inbox records appended but not yet processed."""
        return self.log.inbox_high_watermark() - self.consumed

    # ------------------------------------------------------------------ processing
    def run_batch(self, limit: int = 500) -> int:
        """Process up to ``limit`` inbox records; returns how many were consumed."""
        rows = self.log.read_inbox_stored(self.consumed, limit)
        if not rows:
            return 0
        # A batch makes thousands of short-lived objects (inputs, events, results, rows) that stay
        # alive until its commit and form no cycles: the cyclic collector would scan and promote
        # them several times per batch, about a tenth of the runner's time on status reports
        # (``bench/engine.py``). It is paused for the batch and resumes (and finds any cycle) after.
        collecting = gc.isenabled()
        gc.disable()
        try:
            processed, snapshots = self._process_rows(rows)
            self.log.commit_step(processed, rows[-1][0], snapshots)
        except BaseException:
            # Memory ran ahead of the log: throw it away and rebuild from what was committed.
            self.recover()
            raise
        finally:
            if collecting:
                gc.enable()
        self.inputs_processed += len(rows)
        if self.archive_every and rows[-1][0] - self.log.archived_until >= self.archive_every:
            self.archive()
        for listener in self.listeners:
            listener(processed)
        return len(rows)

    def archive(self) -> int:
        """Move the consumed history into a compressed segment (``SqliteLog.archive``), first
        snapshotting every VM that has events since its last snapshot, so that a restart rebuilds
        from snapshots and live rows alone and never reads a segment."""
        until = self.consumed
        snapshots = [
            (vm, self._last_seq[vm], until, json.dumps(self.states[vm].to_snapshot(), separators=(",", ":")))
            for vm, count in self._events_since_snapshot.items()
            if count and vm in self.states
        ]
        archived = self.log.archive(until, snapshots)
        if archived:
            for vm, *_ in snapshots:
                self._events_since_snapshot[vm] = 0
        return archived

    def run_until_idle(self, limit: int = 500) -> int:
        total = 0
        while n := self.run_batch(limit):
            total += n
        return total

    def _process_rows(
        self, rows: Sequence[tuple[int, str, int, str | bytes]]
    ) -> tuple[list[Processed], list[tuple[str, int, int, str]]]:
        """Step every row; the results that decided something are also what the log writes
        (``SqliteLog.commit_step`` takes ``Processed`` as its ``StepWrite``)."""
        config = self.config
        states = self.states
        last_seq = self._last_seq
        since_snapshot = self._events_since_snapshot
        snapshot_every = self.snapshot_every
        processed: list[Processed] = []
        append = processed.append
        due: dict[str, int] = {}

        def rebuild(vm: str) -> VmState:
            return self._rebuild(vm, processed)

        for pos, row_vm, tick, stored in rows:
            record = read_stored(stored, tick)
            for result in step(
                states, row_vm, record, config, inbox_pos=pos, rebuild=rebuild, encode_event=stored_event
            ):
                events = result.events
                if not events:
                    continue
                vm = result.vm
                n = len(events)
                last_seq[vm] = last_seq.get(vm, 0) + n
                count = since_snapshot[vm] = since_snapshot.get(vm, 0) + n
                if count >= snapshot_every or forgets(events):
                    if forgets(events):
                        due.pop(vm, None)  # nothing to snapshot; recovery replays the forget
                    else:
                        due[vm] = pos
                append(result)
        snapshots = []
        for vm, pos in due.items():
            snapshots.append(
                (
                    vm,
                    last_seq[vm],
                    pos,
                    json.dumps(states[vm].to_snapshot(), separators=(",", ":")),
                )
            )
            since_snapshot[vm] = 0
        return processed, snapshots

    def _rebuild(self, vm: str, pending: Sequence[StepWrite]) -> VmState:
        """``vm`` as it was before the input being stepped: its committed state, then what this
        batch has decided for it so far (not committed yet)."""
        snap = self.log.snapshot(vm)
        state = initial_state(vm) if snap is None else VmState.from_snapshot(snap[2])
        for row in self.log.iter_events(vm, 0 if snap is None else snap[0]):
            state = fold_recorded(state, event_from_dict(loads(row.record)))
        for write in pending:
            if write.vm == vm:
                for record in write.records:
                    state = fold_recorded(state, event_from_dict(loads(stored_event_json(record))))
        return state
