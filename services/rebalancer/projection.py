"""The live fleet view: a read-only projection of the SQLite event log into per-VM states.

Why a projection and not a query of the engine: the rebalancer is its own process (architecture:
"the fleet view is a projection"); it folds the same events the engine recorded, with the
engine's own ``evolve``, so it sees exactly the accounting the engine acts on -- and it never
writes anything but ``SetTarget`` inputs to the inbox. Start-up is the engine's recovery, read
only: the latest snapshot of each VM, then the events after it; afterwards each ``catch_up``
folds only the events appended since.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..dm_engine.config import EngineConfig
from ..dm_engine.decider import initial_state
from ..dm_engine.records import event_from_dict
from ..dm_engine.state import NEGOTIATED_STATES, ProtocolState, VmState
from ..dm_engine.step import fold_recorded
from ..event_log.sqlite_log import SqliteLog
from ..units import PAGE_SIZE
from .fleet_view import NO_TARGET, FleetView
from .migration import UNKNOWN_HOST as MIGRATION_UNKNOWN_HOST

#: The host of VMs whose gateway has not said where they run (no migrations to or from it).
UNKNOWN_HOST = MIGRATION_UNKNOWN_HOST


@dataclass(frozen=True, slots=True)
class LiveLimits:
    """What the log does not say: the host's capacity for VMs and the VMs' minimum size.

    ``host_capacity_bytes`` None means "no limit": the sum of the VMs' maximum sizes.
    ``weights`` are Hyper-V memory weights by VM id (default 1.0).
    """

    host_capacity_bytes: int | None = None
    min_bytes: int = 512 << 20
    weights: tuple[tuple[str, float], ...] = ()


class FleetProjection:
    """Per-VM states folded from a log's events, caught up on demand."""

    def __init__(self, log: SqliteLog) -> None:
        self.log = log
        self.states: dict[str, VmState] = {}
        self._last_seq: dict[str, int] = {}
        self.events_folded = 0
        stored = log.get_meta("engine_config")
        self.config = EngineConfig.from_dict(json.loads(stored)) if stored else EngineConfig()
        for vm, seq, _pos, data in log.snapshots():
            self.states[vm] = VmState.from_snapshot(data)
            self._last_seq[vm] = seq

    def catch_up(self) -> int:
        """Fold every event recorded since the last call; returns how many."""
        folded = 0
        for vm in self.log.vms():
            state = self.states.get(vm)
            if state is None:
                state = self.states[vm] = initial_state(vm)
            for row in self.log.iter_events(vm, self._last_seq.get(vm, 0)):
                # A forgotten VM (VmForgotten) is back to its initial state: undescribed, closed.
                state = self.states[vm] = fold_recorded(state, event_from_dict(json.loads(row.record)))
                self._last_seq[vm] = row.seq
                folded += 1
        self.events_folded += folded
        return folded

    def last_tick(self) -> int:
        """The engine clock now: the service's ``last_tick`` meta, or the newest inbox record's tick."""
        meta = int(self.log.get_meta("last_tick") or 0)
        high = self.log.inbox_high_watermark()
        rows = self.log.read_inbox(high - 1, 1) if high else []
        return max(meta, rows[0].tick if rows else 0)

    def view(self, limits: LiveLimits) -> FleetView:
        """The ``FleetView`` of every described VM (one host: one embedded log serves one host)."""
        return build_view(self.states.values(), limits, now=self.last_tick() * self.config.tick_seconds)


def build_view(
    states: Iterable[VmState],
    limits: LiveLimits,
    *,
    now: float,
    host_of: Mapping[str, str] | None = None,
    host_capacity: Mapping[str, int] | None = None,
) -> FleetView:
    """The ``FleetView`` of every described VM among ``states``, the embedded and the Kafka loop's.

    Without ``host_of`` every VM is on one host of ``limits.host_capacity_bytes``. With it, each
    VM is on its named host; ``host_capacity`` (bytes by host) overrides the limit per host, and a
    host with neither has ``limits.host_capacity_bytes`` or no limit (the sum of its VMs' maximum
    sizes). VMs whose host is not known (a gateway without ``--host-name`` records, ``hvdm run
    --broker``) share the host ``UNKNOWN_HOST``: they are still re-targeted, as on one host, but
    migrations never start or end there (``migration.recommend``).
    """
    described = sorted((s for s in states if s.described), key=lambda s: s.vm_id)
    n = len(described)
    min_pages = limits.min_bytes // PAGE_SIZE
    weights = dict(limits.weights)
    boot = np.array([s.boot_pages for s in described], dtype=np.int64)
    current = np.array([s.current_pages for s in described], dtype=np.int64)
    ceiling = np.array([_growth_ceiling(s) for s in described], dtype=np.int64)
    minimum = np.array(
        [min(s.boot_pages, max(min_pages, s.caps.min_page_cnt if s.caps else 0)) for s in described], dtype=np.int64
    )
    demand = np.array(
        [-1 if s.status is None else max(0, s.status.committed_pages - s.ballooned_pages) for s in described],
        dtype=np.int64,
    )
    available = np.array([-1 if s.status is None else s.status.available_pages for s in described], dtype=np.int64)
    controllable = np.array([_controllable(s) for s in described], dtype=bool)
    maximum = np.maximum(ceiling, minimum)
    default_capacity = None if limits.host_capacity_bytes is None else limits.host_capacity_bytes // PAGE_SIZE
    if host_of is None:
        names: tuple[str, ...] = ()
        host = np.zeros(n, dtype=np.intp)
        capacity = np.array([int(ceiling.sum()) if default_capacity is None else default_capacity], dtype=np.int64)
    else:
        vm_hosts = [host_of.get(s.vm_id, UNKNOWN_HOST) for s in described]
        names = tuple(sorted(set(vm_hosts) | {h for h in (host_capacity or {}) if h != UNKNOWN_HOST}))
        index = {name: i for i, name in enumerate(names)}
        host = np.array([index[h] for h in vm_hosts], dtype=np.intp)
        unlimited = np.bincount(host, weights=maximum, minlength=len(names)).astype(np.int64)
        given = host_capacity or {}
        capacity = np.array(
            [
                given[name] // PAGE_SIZE
                if name in given and name != UNKNOWN_HOST
                else (int(unlimited[i]) if default_capacity is None else default_capacity)
                for i, name in enumerate(names)
            ],
            dtype=np.int64,
        )
    return FleetView(
        vm_ids=tuple(s.vm_id for s in described),
        now=now,
        host=host,
        host_capacity=capacity,
        boot=boot,
        min=minimum,
        max=maximum,
        current=current,
        target=np.array([NO_TARGET if s.target_pages is None else s.target_pages for s in described], dtype=np.int64),
        demand=demand,
        available=available,
        controllable=controllable & (demand >= 0),
        weight=np.array([weights.get(s.vm_id, 1.0) for s in described]),
        host_names=names,
    )


def _controllable(state: VmState) -> bool:
    """Negotiated, past the post-init wait, and able to balloon (or a QEMU-managed VM whose
    monitor is attached and which has a balloon device)."""
    if state.qemu is not None:
        return state.qemu.attached and state.qemu.device != "none"
    return (
        state.protocol in NEGOTIATED_STATES
        and state.protocol is not ProtocolState.POST_INIT_WAIT
        and state.caps is not None
        and state.caps.balloon
    )


def _growth_ceiling(state: VmState) -> int:
    """The most the VM can reach: its RAM plus what plugged vDIMMs can still hot-add, <= maxmem.

    The engine hot-adds only into plugged backends, so a target above this would stall.
    """
    if state.qemu is not None:
        return state.maxmem_pages  # boot memory, plus the hv-balloon memory backend QEMU can hot-add
    addable = 0
    if state.caps is not None and state.caps.hot_add:
        addable = sum(v.remaining_pages for v in state.layout.vdimms)
    return min(state.maxmem_pages, state.owned.page_count + addable)
