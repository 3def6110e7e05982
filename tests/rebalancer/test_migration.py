"""Migration recommendations: only when reclaiming everything cannot help, and to a host with room."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.rebalancer import make_policy
from services.rebalancer.fleet_view import GIB_PAGES, FleetView, balloon_floor_pages
from services.rebalancer.migration import host_shortfalls, needs, recommend
from services.rebalancer.simulation import SimConfig, simulate
from services.units import PAGE_SIZE
from tests.rebalancer.test_policies import view

GIB = GIB_PAGES


def demand_for(used_gib: list[float], current_gib: list[float]) -> list[int]:
    """The view's demand (used + floor at the current size) for these uses and sizes."""
    current = np.array([int(c * GIB) for c in current_gib], dtype=np.int64)
    used = np.array([int(u * GIB) for u in used_gib], dtype=np.int64)
    return (used + balloon_floor_pages(current)).tolist()


def two_hosts(used_gib: list[float], hosts: list[int], capacity_gib: list[int]) -> FleetView:
    n = len(used_gib)
    return dataclasses.replace(
        view(
            n,
            capacity=[c * GIB for c in capacity_gib],
            demand=demand_for(used_gib, [4.0] * n),
            host=hosts,
        ),
        host_names=tuple(f"h{i}" for i in range(len(capacity_gib))),
    )


def test_no_recommendation_while_reclaiming_is_enough() -> None:
    # 3 x 4 GiB VMs using 1 GiB each on a 8 GiB host: over boot, but balloonable to fit.
    v = two_hosts([1.0, 1.0, 1.0], [0, 0, 0], [8, 64])
    assert host_shortfalls(v).tolist() == [0, 0]
    assert recommend(v) == []


def test_short_host_moves_the_smallest_vm_that_covers_the_shortfall() -> None:
    # Host h0 (10 GiB) holds VMs using 6, 3 and 2 GiB: short even at their floors.
    v = two_hosts([6.0, 3.0, 2.0, 1.0], [0, 0, 0, 1], [10, 64])
    need = needs(v)
    short = int(need[:3].sum()) - 10 * GIB
    assert host_shortfalls(v).tolist()[0] == short
    (rec,) = recommend(v)
    covering = [i for i in range(3) if need[i] >= short]
    expected = min(covering, key=lambda i: int(need[i]))
    assert rec.vm == f"vm{expected}" and rec.from_host == "h0" and rec.to_host == "h1"
    assert rec.expected_pressure_saved_bytes == short * PAGE_SIZE
    assert rec.host_shortfall_bytes == short * PAGE_SIZE
    assert "more than its capacity" in rec.reason
    assert set(rec.to_dict()) == {
        "vm",
        "from_host",
        "to_host",
        "reason",
        "vm_need_bytes",
        "host_shortfall_bytes",
        "expected_pressure_saved_bytes",
        "destination_spare_bytes",
    }


def test_no_destination_with_room_means_no_recommendation() -> None:
    v = two_hosts([6.0, 3.0, 2.0, 7.0], [0, 0, 0, 1], [10, 8])
    assert recommend(v) == []


def test_vms_the_caller_excludes_are_not_moved() -> None:
    v = two_hosts([6.0, 3.0, 2.0, 1.0], [0, 0, 0, 1], [10, 64])
    everything_but_vm0 = np.array([False, True, True, True])
    recs = recommend(v, movable=everything_but_vm0)
    assert recs and all(r.vm != "vm0" for r in recs)


def test_applied_recommendations_cut_the_oversubscribed_hosts_pressure() -> None:
    """The issue's multi-host case: one host full of leaks, room elsewhere; with and without moves."""
    config = SimConfig(vms=60, hours=1.5, seed=1, host_capacity_bytes=64 << 30, hot_host_workload="leak")
    off = simulate(config, [make_policy("hvdm")]).to_dict()["policies"]["hvdm"]
    on = simulate(dataclasses.replace(config, migrate=True), [make_policy("hvdm")]).to_dict()["policies"]["hvdm"]
    assert off["migration_recommendations"] > 0 and off["migrations_applied"] == 0
    assert on["migrations_applied"] > 0
    assert off["pressure_vm_minutes_by_host"][0] == max(off["pressure_vm_minutes_by_host"])
    assert on["pressure_vm_minutes"] < 0.5 * off["pressure_vm_minutes"]
