"""``hvdm rebalance --simulate``: the policies on the same simulated fleet, one after another.

The fleet: ``vms`` guests with workloads from the guest simulator (idle, steady, diurnal, bursty,
leak; by default an equal mix), boot sizes of 2 / 4 / 8 / 16 GiB (30 / 40 / 20 / 10 %), a
maximum of ``max_ratio`` x boot (default 4: Startup 2 GiB, Maximum 8 GiB is a common Dynamic
Memory setting, and it keeps every workload's peak -- the leak's 2 x boot -- within reach, so
pressure measures the policy and not an impossible demand) and a minimum of 512 MiB (Hyper-V's
default Minimum RAM). Guests are packed first-fit onto hosts of ``host_capacity`` so that every
host can hold its guests' boot memory, the condition for starting them. Every VM boots at t=0.

Each policy runs on the light model (``model.py``) with the *same* traces: the time loop goes
chunk by chunk (an hour of traces for every VM), and every policy's fleet advances through the
chunk before the next is generated. Policies decide every ``interval_s`` (default 5 s, the same
for all three, so the comparison is about what they decide, not how often).

Metrics per policy:

* ``reclaimed_ratio``: 1 - (time-averaged assigned memory) / (sum of maximum sizes): the memory
  freed versus allocating every VM statically at its maximum;
* ``pressure_vm_minutes``: VM-minutes with demand > assigned (Hyper-V pressure > 100 %),
  also by workload;
* ``operations``: DM requests (balloon + unballoon + hot-add chunks), and each kind;
* ``overcommit_events``: times a host crossed into assigning more than its capacity, and
  ``overcommit_host_minutes``;
* with the ``oracle`` in the run (perfect foresight, ``oracle.py``): ``reclaimed_fraction_of_oracle``,
  ``pressure_fraction_of_oracle`` (None when the oracle has no pressure) and
  ``pressure_vm_minutes_above_oracle``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import numpy as np

from ..guest_sim.workload import WORKLOADS, make_workload
from ..units import GIB, PAGE_SIZE
from .fleet_view import GIB_PAGES, balloon_floor_pages
from .migration import host_name, recommend
from .model import LightFleet, ModelTiming
from .oracle import OraclePolicy
from .policy import Policy
from .traces import fleet_trace

#: Boot sizes (GiB) and their shares in the simulated fleet.
BOOT_SIZES: Final = ((2, 0.3), (4, 0.4), (8, 0.2), (16, 0.1))
DEFAULT_MIX: Final = {name: 1.0 for name in WORKLOADS}


@dataclass(frozen=True, slots=True)
class SimConfig:
    vms: int = 100
    hours: float = 2.0
    seed: int = 1
    host_capacity_bytes: int = 256 * GIB
    interval_s: int = 5
    max_ratio: float = 4.0
    min_bytes: int = 512 << 20
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    #: Seconds between the points of the fleet-memory time series (the plot).
    sample_s: int = 60
    chunk_s: int = 3600
    #: Every VM on the first host runs this workload (e.g. ``leak``): one host oversubscribed by
    #: demand, the case migrations are for. None: the mix everywhere.
    hot_host_workload: str | None = None
    #: Apply migration recommendations (the VM moves to the recommended host at once).
    migrate: bool = False
    #: Seconds between migration checks, and how long a moved VM stays where it was put.
    migration_interval_s: int = 60
    migration_cooldown_s: int = 1800

    def __post_init__(self) -> None:
        if self.vms < 1 or self.hours <= 0 or self.interval_s < 1:
            raise ValueError("need at least one VM, a positive duration and an interval >= 1 s")
        unknown = set(self.mix) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workloads in the mix: {', '.join(sorted(unknown))}")
        if not any(w > 0 for w in self.mix.values()):
            raise ValueError("the workload mix needs a positive weight")
        if self.hot_host_workload is not None and self.hot_host_workload not in WORKLOADS:
            raise ValueError(f"unknown workload for the hot host: {self.hot_host_workload}")
        if self.migration_interval_s < 1:
            raise ValueError("the migration interval is at least 1 s")

    @property
    def seconds(self) -> int:
        return round(self.hours * 3600)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """The simulated fleet: per VM its workload, sizes (pages) and host."""

    vm_ids: tuple[str, ...]
    workloads: tuple[str, ...]
    seeds: tuple[int, ...]
    boot: tuple[int, ...]
    max: tuple[int, ...]
    min: tuple[int, ...]
    host: tuple[int, ...]
    host_capacity: tuple[int, ...]

    def light_fleet(self, timing: ModelTiming | None = None) -> LightFleet:
        return LightFleet(
            vm_ids=self.vm_ids,
            host=np.array(self.host, dtype=np.intp),
            host_capacity=np.array(self.host_capacity, dtype=np.int64),
            boot=np.array(self.boot, dtype=np.int64),
            min=np.array(self.min, dtype=np.int64),
            max=np.array(self.max, dtype=np.int64),
            weight=np.ones(len(self.vm_ids)),
            timing=timing or ModelTiming(),
        )


def build_fleet(config: SimConfig) -> FleetSpec:
    """Draw the fleet from ``config.seed``: the same seed gives the same fleet and traces."""
    rng = random.Random(f"fleet:{config.seed}")
    names = [n for n, w in config.mix.items() if w > 0]
    weights = [config.mix[n] for n in names]
    sizes = [size for size, _ in BOOT_SIZES]
    shares = [share for _, share in BOOT_SIZES]
    capacity = config.host_capacity_bytes // PAGE_SIZE
    ids: list[str] = []
    workloads: list[str] = []
    seeds: list[int] = []
    boots: list[int] = []
    maxes: list[int] = []
    mins: list[int] = []
    hosts: list[int] = []
    used: list[int] = []
    for i in range(config.vms):
        boot = rng.choices(sizes, shares)[0] * GIB_PAGES
        if boot > capacity:
            raise ValueError(f"host capacity {config.host_capacity_bytes} B cannot hold a {boot * PAGE_SIZE} B VM")
        # First fit: the first host with room for the VM's boot memory, else a new host.
        host = next((h for h, u in enumerate(used) if u + boot <= capacity), len(used))
        if host == len(used):
            used.append(0)
        used[host] += boot
        ids.append(f"vm{i:04d}")
        workload = rng.choices(names, weights)[0]
        workloads.append(config.hot_host_workload if host == 0 and config.hot_host_workload else workload)
        seeds.append(rng.randrange(1 << 30))
        boots.append(boot)
        maxes.append(int(boot * config.max_ratio))
        mins.append(min(boot, config.min_bytes // PAGE_SIZE))
        hosts.append(host)
    return FleetSpec(
        tuple(ids),
        tuple(workloads),
        tuple(seeds),
        tuple(boots),
        tuple(maxes),
        tuple(mins),
        tuple(hosts),
        tuple([capacity] * len(used)),
    )


@dataclass(slots=True)
class Series:
    """Fleet totals every ``sample_s`` seconds, for the plot (bytes, counts)."""

    t: list[float] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    demand: list[int] = field(default_factory=list)
    #: Mean number of VMs under pressure over the sample interval.
    under_pressure: list[float] = field(default_factory=list)


@dataclass(slots=True)
class MigrationCounts:
    #: Distinct (VM, from, to) recommendations made.
    recommended: int = 0
    applied: int = 0
    moved_bytes: int = 0
    expected_pressure_saved_bytes: int = 0
    seen: set[tuple[str, str, str]] = field(default_factory=set)


@dataclass(slots=True)
class PolicyRun:
    policy: Policy
    fleet: LightFleet
    series: Series = field(default_factory=Series)
    cpu_seconds: float = 0.0
    migrations: MigrationCounts = field(default_factory=MigrationCounts)
    _pressure_mark: int = 0
    _moved_at: dict[int, int] = field(default_factory=dict)

    def check_migrations(self, t: int, config: SimConfig) -> None:
        """Recommend (and with ``config.migrate`` apply) moves off hosts short after reclaiming."""
        fleet, m = self.fleet, self.migrations
        view = fleet.view(float(t))
        movable = np.ones(view.size, dtype=bool)
        for i, when in self._moved_at.items():
            movable[i] = t - when >= config.migration_cooldown_s
        index = {vm: i for i, vm in enumerate(view.vm_ids)}
        hosts = {host_name(view, h): h for h in range(view.hosts)}
        for rec in recommend(view, movable=movable & view.controllable):
            key = (rec.vm, rec.from_host, rec.to_host)
            if key not in m.seen:
                m.seen.add(key)
                m.recommended += 1
                m.expected_pressure_saved_bytes += rec.expected_pressure_saved_bytes
            if config.migrate:
                i = index[rec.vm]
                fleet.host[i] = hosts[rec.to_host]
                self._moved_at[i] = t
                m.applied += 1
                m.moved_bytes += int(fleet.current[i]) * PAGE_SIZE

    def advance(self, t0: int, committed: np.ndarray[Any, np.dtype[np.int64]], config: SimConfig) -> None:
        started = time.perf_counter()
        fleet, policy = self.fleet, self.policy
        interval, sample = config.interval_s, config.sample_s
        counters = fleet.counters
        for k in range(committed.shape[1]):
            t = t0 + k
            column = committed[:, k]
            if t % interval == 0 and t >= fleet.timing.post_init_s:
                if t % config.migration_interval_s == 0 and len(fleet.host_capacity) > 1:
                    self.check_migrations(t, config)
                fleet.set_targets(policy.decide(fleet.view(float(t))))
            fleet.step(t, column)
            if t % sample == 0:
                cur = fleet.current
                self.series.t.append(t / 3600.0)
                self.series.assigned.append(int(cur.sum()) * PAGE_SIZE)
                self.series.demand.append(int((column + balloon_floor_pages(cur)).sum()) * PAGE_SIZE)
                total = int(counters.pressure_seconds.sum())
                self.series.under_pressure.append((total - self._pressure_mark) / sample)
                self._pressure_mark = total
        self.cpu_seconds += time.perf_counter() - started

    def report(self, spec: FleetSpec) -> dict[str, Any]:
        c = self.fleet.counters
        static = sum(spec.max)
        mean_assigned = c.assigned_page_seconds / max(c.seconds, 1)
        by_workload: dict[str, float] = {}
        assigned_by_workload: dict[str, int] = {}
        rows = zip(spec.workloads, c.pressure_seconds.tolist(), c.assigned_vm_page_seconds.tolist(), strict=True)
        for name, seconds, page_seconds in rows:
            by_workload[name] = by_workload.get(name, 0.0) + seconds / 60.0
            assigned_by_workload[name] = assigned_by_workload.get(name, 0) + int(page_seconds / max(c.seconds, 1))
        return {
            "reclaimed_ratio": 1.0 - mean_assigned / static,
            "pressure_vm_minutes": float(c.pressure_seconds.sum()) / 60.0,
            "operations": c.balloon_ops + c.unballoon_ops + c.hot_add_ops,
            "overcommit_events": c.overcommit_events,
            "balloon_operations": c.balloon_ops,
            "unballoon_operations": c.unballoon_ops,
            "hot_add_operations": c.hot_add_ops,
            "refused_balloon_requests": c.refused_balloons,
            "set_targets": c.set_targets,
            "pressure_events": c.pressure_events,
            "pressure_vm_minutes_by_workload": dict(sorted(by_workload.items())),
            "mean_assigned_bytes_by_workload": {k: v * PAGE_SIZE for k, v in sorted(assigned_by_workload.items())},
            "overcommit_host_minutes": c.overcommit_host_seconds / 60.0,
            "mean_assigned_bytes": int(mean_assigned) * PAGE_SIZE,
            "static_max_bytes": static * PAGE_SIZE,
            "peak_assigned_bytes": max(self.series.assigned, default=0),
            "migration_recommendations": self.migrations.recommended,
            "migrations_applied": self.migrations.applied,
            "migrated_bytes": self.migrations.moved_bytes,
            "migration_expected_pressure_saved_bytes": self.migrations.expected_pressure_saved_bytes,
            "pressure_vm_minutes_by_host": _by_host(c.pressure_seconds, self.fleet.host, len(spec.host_capacity)),
            "parameters": self.policy.parameters(),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


@dataclass(slots=True)
class SimResult:
    config: SimConfig
    spec: FleetSpec
    runs: dict[str, PolicyRun]
    wall_seconds: float
    trace_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: ``{"policies": {name: {...}}, ...}`` (key names: a contract)."""
        cfg = asdict(self.config)
        cfg["mix"] = dict(self.config.mix)
        counts: dict[str, int] = {}
        for name in self.spec.workloads:
            counts[name] = counts.get(name, 0) + 1
        policies = {name: run.report(self.spec) for name, run in self.runs.items()}
        oracle = policies.get("oracle")
        if oracle is not None:
            for report in policies.values():
                report.update(versus_oracle(report, oracle))
        return {
            "policies": policies,
            "fleet": {
                "vms": len(self.spec.vm_ids),
                "hosts": len(self.spec.host_capacity),
                "host_capacity_bytes": self.spec.host_capacity[0] * PAGE_SIZE,
                "boot_bytes": sum(self.spec.boot) * PAGE_SIZE,
                "static_max_bytes": sum(self.spec.max) * PAGE_SIZE,
                "workloads": dict(sorted(counts.items())),
            },
            "config": cfg,
            "wall_seconds": round(self.wall_seconds, 3),
            "trace_seconds": round(self.trace_seconds, 3),
        }

    def series(self) -> dict[str, Series]:
        return {name: run.series for name, run in self.runs.items()}


def _by_host(pressure_seconds: Any, host: Any, hosts: int) -> list[float]:
    """VM-minutes of pressure per host, charged to the host each VM is on at the end."""
    totals = np.bincount(host, weights=pressure_seconds, minlength=hosts) / 60.0
    return [round(float(x), 3) for x in totals]


def versus_oracle(report: Mapping[str, Any], oracle: Mapping[str, Any]) -> dict[str, Any]:
    """A policy's reclaim and pressure as fractions of the oracle's (JSON keys: a contract).

    The oracle usually has no pressure at all (it sees bursts coming); a fraction of zero is
    undefined, so ``pressure_fraction_of_oracle`` is then None and the difference,
    ``pressure_vm_minutes_above_oracle``, says how far the policy is from it.
    """
    reclaimed, pressure = oracle["reclaimed_ratio"], oracle["pressure_vm_minutes"]
    return {
        "reclaimed_fraction_of_oracle": report["reclaimed_ratio"] / reclaimed if reclaimed > 0 else None,
        "pressure_fraction_of_oracle": report["pressure_vm_minutes"] / pressure if pressure > 0 else None,
        "pressure_vm_minutes_above_oracle": report["pressure_vm_minutes"] - pressure,
    }


Progress = Callable[[float], None]


def simulate(
    config: SimConfig, policies: Sequence[Policy], progress: Progress | None = None, timing: ModelTiming | None = None
) -> SimResult:
    """Run every policy over the same fleet and traces; ``progress`` gets the fraction done."""
    started = time.perf_counter()
    spec = build_fleet(config)
    workloads = [make_workload(w, b, s) for w, b, s in zip(spec.workloads, spec.boot, spec.seeds, strict=True)]
    runs = {p.name: PolicyRun(p, spec.light_fleet(timing)) for p in policies}
    trace_seconds = 0.0
    oracles = [run.policy for run in runs.values() if isinstance(run.policy, OraclePolicy)]
    for run in runs.values():
        if isinstance(run.policy, OraclePolicy):
            run.policy.attach(run.fleet, config.interval_s)
    ahead = max((o.lookahead_s for o in oracles), default=0)
    total = config.seconds
    for t0 in range(0, total, config.chunk_s):
        t1 = min(total, t0 + config.chunk_s)
        before = time.perf_counter()
        # The oracle reads ahead; the others get exactly the chunk (the same seconds either way).
        future = fleet_trace(workloads, t0, t1 + ahead)
        committed = future[:, : t1 - t0]
        trace_seconds += time.perf_counter() - before
        for oracle in oracles:
            oracle.foresee(t0, future)
        for run in runs.values():
            run.advance(t0, committed, config)
        if progress is not None:
            progress(t1 / total)
    return SimResult(config, spec, runs, time.perf_counter() - started, trace_seconds)
