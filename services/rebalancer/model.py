"""The light VM memory model the fleet simulation runs policies against.

Why not the engine and simulated guests: a 1,000-VM fleet over 8 hours is ~30 million guest
seconds; through the wire protocol that is hours of CPU. The policies only see a ``FleetView``, so
the simulation replaces what produces it with a model that keeps what matters for sizing, with
the engine's and the Linux guest's numbers (host-behaviour.md, guest-behaviour.md, EngineConfig):

* **committed** (``Committed_AS``) is the guest simulator's workload trace, second by second
  (``traces.py``), so the same shapes drive this model and ``services.guest_sim``;
* **assigned** = boot + hot-added - ballooned, what ``VmState.current_pages`` is in the engine;
* **status reports** every second, the first 45 s after boot (Linux ``pressure_report_delay``);
  the policy sees the report of the previous second: ``demand`` = committed + balloon floor at
  the current size (what Linux reports, minus the ballooned pages the host knows), ``available``
  = assigned - committed (MemAvailable, no page cache);
* **no request in the first 50 s** (the engine's post-init wait, QEMU's and Hyper-V's);
* **one transaction at a time**, the engine's rule. Growth unballoons first (Linux answers at
  once), then hot-adds in chunks of at most 2 GiB (QEMU's ``HV_BALLOON_HA_CHUNK_SIZE``) at
  128 MiB per 0.5 s (a memory block onlined, the guest simulator's default), never past maximum;
  memory backends are assumed plugged up to the maximum. Shrinking balloons (Linux has no
  hot-remove) in requests of at most 585,728 pages (``BALLOON_REQUEST_MAX_PAGES``) at 230 GB/min,
  and the guest gives at most MemAvailable - floor, Linux's clamp. A partial answer makes the
  engine give up on that target until a new one is set (``_give_up_on_target``);
* each DM request (balloon, unballoon, hot-add chunk) counts as one **operation**.

Not modelled: reboots, timeouts (honest guests answer), page cache, the time a target spends in
the inbox (the engine consumes it within the same second on a healthy log).

Accounting, per simulated second: a VM is **under pressure** when demand > assigned (Hyper-V's
pressure > 100 %); a host is **overcommitted** when its VMs' assigned memory exceeds its capacity
(an *event* is each time a host crosses into that state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dm_engine.config import BALLOON_REQUEST_MAX_PAGES
from ..units import PAGE_SIZE
from .fleet_view import NO_TARGET, Flags, FleetView, Floats, Index, Pages, balloon_floor_pages


@dataclass(frozen=True, slots=True)
class ModelTiming:
    """Delays and rates of the model; defaults from the spec and the engine config."""

    first_status_s: int = 45
    post_init_s: int = 50
    hot_add_chunk_pages: int = (2 << 30) // PAGE_SIZE
    hot_add_pages_per_s: int = (128 << 20) // PAGE_SIZE * 2
    balloon_request_max_pages: int = BALLOON_REQUEST_MAX_PAGES
    balloon_pages_per_s: int = 230 * 10**9 // PAGE_SIZE // 60


@dataclass(slots=True)
class Counters:
    pressure_seconds: Pages
    #: Per VM: assigned pages summed over the seconds (for per-workload means).
    assigned_vm_page_seconds: Floats
    pressure_events: int = 0
    balloon_ops: int = 0
    unballoon_ops: int = 0
    hot_add_ops: int = 0
    refused_balloons: int = 0
    set_targets: int = 0
    overcommit_events: int = 0
    overcommit_host_seconds: int = 0
    assigned_page_seconds: float = 0.0
    seconds: int = 0


@dataclass(slots=True)
class LightFleet:
    """Every VM's memory as a handful of arrays (pages), advanced one simulated second at a time."""

    vm_ids: tuple[str, ...]
    host: Index
    host_capacity: Pages
    boot: Pages
    min: Pages
    max: Pages
    weight: Floats
    timing: ModelTiming = field(default_factory=ModelTiming)
    ballooned: Pages = field(init=False)
    hot_added: Pages = field(init=False)
    target: Pages = field(init=False)
    pending: Flags = field(init=False)
    chunk_left: Pages = field(init=False)
    reported_demand: Pages = field(init=False)
    reported_available: Pages = field(init=False)
    under_pressure: Flags = field(init=False)
    overcommitted: Flags = field(init=False)
    counters: Counters = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.vm_ids)
        zeros = np.zeros(n, dtype=np.int64)
        self.ballooned = zeros.copy()
        self.hot_added = zeros.copy()
        self.target = np.full(n, NO_TARGET, dtype=np.int64)
        self.pending = np.zeros(n, dtype=bool)
        self.chunk_left = zeros.copy()
        self.reported_demand = np.full(n, -1, dtype=np.int64)
        self.reported_available = np.full(n, -1, dtype=np.int64)
        self.under_pressure = np.zeros(n, dtype=bool)
        self.overcommitted = np.zeros(len(self.host_capacity), dtype=bool)
        self.counters = Counters(pressure_seconds=zeros.copy(), assigned_vm_page_seconds=np.zeros(n))

    @property
    def current(self) -> Pages:
        return self.boot + self.hot_added - self.ballooned

    def view(self, now: float) -> FleetView:
        ready = now >= self.timing.post_init_s
        return FleetView(
            vm_ids=self.vm_ids,
            now=now,
            host=self.host,
            host_capacity=self.host_capacity,
            boot=self.boot,
            min=self.min,
            max=self.max,
            current=self.current,
            target=self.target,
            demand=self.reported_demand,
            available=self.reported_available,
            controllable=(self.reported_demand >= 0) & ready,
            weight=self.weight,
        )

    def set_targets(self, targets: Pages) -> int:
        """Apply a policy's decision (``SetTarget`` for every VM not ``NO_TARGET``)."""
        change = targets != NO_TARGET
        self.target = np.where(change, targets, self.target)
        self.pending |= change
        count = int(change.sum())
        self.counters.set_targets += count
        return count

    def step(self, t: int, committed: Pages) -> None:
        """Second ``t`` (since boot) with the guests' ``Committed_AS``: move, then account."""
        timing, c = self.timing, self.counters
        cur = self.current
        if t >= timing.post_init_s:
            cur = self._move(cur, committed)
        floor = balloon_floor_pages(cur)
        demand = committed + floor
        pressure = demand > cur
        c.pressure_seconds += pressure
        c.pressure_events += int((pressure & ~self.under_pressure).sum())
        self.under_pressure = pressure
        per_host = np.bincount(self.host, weights=cur, minlength=len(self.host_capacity))
        over = per_host > self.host_capacity
        c.overcommit_host_seconds += int(over.sum())
        c.overcommit_events += int((over & ~self.overcommitted).sum())
        self.overcommitted = over
        c.assigned_page_seconds += float(cur.sum())
        c.assigned_vm_page_seconds += cur
        c.seconds += 1
        if t >= timing.first_status_s:
            self.reported_demand = demand
            self.reported_available = np.maximum(cur - committed, 0)

    def _move(self, cur: Pages, committed: Pages) -> Pages:
        timing, c = self.timing, self.counters
        target, pending = self.target, self.pending
        # Growth: unballoon at once (Linux answers unballoon synchronously).
        grow = pending & (target > cur) & (self.chunk_left == 0)
        unballoon = np.where(grow, np.minimum(target - cur, self.ballooned), 0)
        c.unballoon_ops += int((unballoon > 0).sum())
        self.ballooned -= unballoon
        cur = cur + unballoon
        # Then hot-add, one chunk per transaction, at the onlining rate.
        room = self.max - self.boot - self.hot_added
        start = pending & (target > cur) & (self.chunk_left == 0) & (room > 0)
        if start.any():
            chunk = np.minimum(np.minimum(target - cur, timing.hot_add_chunk_pages), room)
            self.chunk_left = np.where(start, chunk, self.chunk_left)
            c.hot_add_ops += int(start.sum())
        busy = self.chunk_left > 0
        if busy.any():
            added = np.minimum(self.chunk_left, timing.hot_add_pages_per_s)
            self.hot_added += added
            self.chunk_left -= added
            cur = cur + added
        # Shrink: balloon, clamped by the guest to MemAvailable - floor.
        shrink = pending & (target < cur) & ~busy
        if shrink.any():
            want = np.minimum(cur - target, timing.balloon_request_max_pages)
            floor = balloon_floor_pages(cur)
            can = np.clip(cur - committed - floor, 0, None)
            give = np.where(shrink, np.minimum(np.minimum(want, can), timing.balloon_pages_per_s), 0)
            c.balloon_ops += int(shrink.sum())
            refused = shrink & (give < want)
            c.refused_balloons += int(refused.sum())
            self.pending &= ~refused
            self.ballooned += give
            cur = cur - give
        done = pending & (cur == target)
        self.pending &= ~done
        return cur
