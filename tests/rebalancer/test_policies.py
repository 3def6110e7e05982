"""The three policies on hand-built fleet views: the numbers of references.md, and our rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.guest_sim import balloon_floor
from services.rebalancer import NO_TARGET, FleetView, make_policy
from services.rebalancer.fleet_view import GIB_PAGES, balloon_floor_pages
from services.rebalancer.forecast import HvdmPolicy
from services.rebalancer.hyperv import HyperVParams, HyperVPolicy
from services.rebalancer.mom import MomPolicy
from services.rebalancer.policy import guest_floor_size, size_for

GIB = GIB_PAGES


def view(n: int = 1, now: float = 100.0, capacity: int | list[int] = 1000 * GIB, **per_vm: Any) -> FleetView:
    """A one-host view of ``n`` VMs; keyword arrays override the defaults (pages)."""
    base: dict[str, Any] = {
        "boot": [4 * GIB] * n,
        "min": [GIB // 2] * n,
        "max": [16 * GIB] * n,
        "current": [4 * GIB] * n,
        "target": [NO_TARGET] * n,
        "demand": [GIB] * n,
        "available": [3 * GIB] * n,
        "controllable": [True] * n,
        "weight": [1.0] * n,
        "host": [0] * n,
    }
    base.update(per_vm)
    return FleetView(
        vm_ids=tuple(f"vm{i}" for i in range(n)),
        now=now,
        host=np.array(base["host"], dtype=np.intp),
        host_capacity=np.array(capacity if isinstance(capacity, list) else [capacity], dtype=np.int64),
        boot=np.array(base["boot"], dtype=np.int64),
        min=np.array(base["min"], dtype=np.int64),
        max=np.array(base["max"], dtype=np.int64),
        current=np.array(base["current"], dtype=np.int64),
        target=np.array(base["target"], dtype=np.int64),
        demand=np.array(base["demand"], dtype=np.int64),
        available=np.array(base["available"], dtype=np.int64),
        controllable=np.array(base["controllable"], dtype=bool),
        weight=np.array(base["weight"], dtype=np.float64),
    )


def test_floor_table_matches_the_guest_simulator() -> None:
    sizes = [1, 1000, 40_000, 200_000, 1 << 20, 3 << 20, 1 << 24]
    assert balloon_floor_pages(np.array(sizes)).tolist() == [balloon_floor(s) for s in sizes]


def test_size_for_leaves_room_for_the_floor_at_that_size() -> None:
    used = np.array([0, 1000, GIB // 4, GIB, 6 * GIB, 100 * GIB])
    size = size_for(used)
    spare = size - used - balloon_floor_pages(size)
    assert (spare >= 0).all() and (spare <= 2).all()  # enough, and no more than rounding


def test_hyperv_target_is_demand_plus_20_percent_buffer() -> None:
    """references.md 1.1: 1000 MB committed, 20 % buffer -> 1200 MB (in 2 MiB units)."""
    demand = 1000 * 256  # 1000 MiB
    out = HyperVPolicy().decide(view(demand=[demand]))
    assert out.tolist() == [1200 * 256]


def test_hyperv_buffer_is_configurable_and_validated() -> None:
    out = make_policy("hyperv", {"buffer": "0.5"}).decide(view(demand=[1000 * 256]))
    assert out.tolist() == [1500 * 256]
    with pytest.raises(ValueError, match="buffer"):
        HyperVParams(buffer=0.01)
    with pytest.raises(ValueError, match="unknown parameter"):
        make_policy("hyperv", {"bogus": "1"})


def test_hyperv_clamps_to_min_and_max() -> None:
    out = HyperVPolicy().decide(view(n=2, demand=[GIB // 16, 20 * GIB], current=[4 * GIB, 4 * GIB]))
    low, high = out.tolist()
    assert low >= GIB // 2  # the minimum
    assert high == 16 * GIB  # the maximum


def test_hyperv_leaves_uncontrollable_and_unknown_vms_alone() -> None:
    out = HyperVPolicy().decide(view(n=2, controllable=[False, True], demand=[GIB, -1]))
    assert out.tolist() == [NO_TARGET, NO_TARGET]


def test_hyperv_host_short_drops_the_buffer_first() -> None:
    # Two VMs of demand 4 GiB; 9 GiB of host: each keeps its demand, buffers share the rest.
    v = view(n=2, capacity=9 * GIB, demand=[4 * GIB, 4 * GIB], current=[4 * GIB, 4 * GIB], available=[0, 0])
    out = HyperVPolicy().decide(v)
    assert sum(out.tolist()) <= 9 * GIB
    assert all(t >= 4 * GIB for t in out.tolist())


def test_hyperv_host_short_of_demand_serves_higher_weight_first() -> None:
    # Both guests want 6 GiB and have 3; the host has 10: 4 GiB to share, the heavier first.
    v = view(
        n=2,
        capacity=10 * GIB,
        demand=[6 * GIB, 6 * GIB],
        current=[3 * GIB, 3 * GIB],
        available=[0, 0],
        weight=[2.0, 1.0],
    )
    high, low = HyperVPolicy().decide(v).tolist()
    need = int(guest_floor_size(v)[0])
    assert need - 1024 <= high <= need  # the heavier VM gets its whole need
    assert 3 * GIB < low < high and high + low <= 10 * GIB


def test_hysteresis_ignores_small_shrinks_but_not_growth_under_pressure() -> None:
    policy = HyperVPolicy()
    # Target already 1200 MiB; demand moved a little: no new target.
    same = policy.decide(view(demand=[990 * 256], current=[1200 * 256], target=[1200 * 256]))
    assert same.tolist() == [NO_TARGET]
    # The guest is under pressure (demand > current): grow now, whatever the deadband.
    grow = policy.decide(view(demand=[1210 * 256], current=[1200 * 256], target=[1200 * 256]))
    assert grow.tolist()[0] > 1200 * 256


def test_mom_grows_by_5_percent_when_the_host_is_not_under_pressure() -> None:
    cur = 4 * GIB
    # 25 % of the host free: not under pressure; the guest has more than used + 25 % free.
    v = view(capacity=cur * 4 // 3, current=[cur], available=[cur - GIB], demand=[GIB + GIB // 4])
    assert MomPolicy().decide(v).tolist() == [int(cur * 1.05)]


def test_mom_guest_free_target_scales_with_host_free_memory() -> None:
    """``guest_free = 0.20 x host_free / 0.20``: on a 60 % free host a guest with little free
    memory grows at once to used + 60 % of its size, not by 5 %."""
    cur = 4 * GIB
    v = view(capacity=cur * 10 // 4, current=[cur], available=[GIB // 4], demand=[4 * GIB])
    used = cur - GIB // 4
    assert MomPolicy().decide(v).tolist() == [min(16 * GIB, int(used + 0.6 * cur))]


def test_mom_shrinks_by_at_most_5_percent_under_host_pressure() -> None:
    cur = 4 * GIB
    # Host of 4.5 GiB holding 4 GiB: 11 % free, under the 20 % threshold.
    out = MomPolicy().decide(view(capacity=4 * GIB + GIB // 2, current=[cur], available=[3 * GIB], demand=[GIB]))
    assert out.tolist() == [int(cur * 0.95)]


def test_mom_skips_changes_under_a_quarter_percent() -> None:
    cur = 16 * GIB
    out = MomPolicy().decide(view(current=[cur], max=[cur + 100], available=[8 * GIB], demand=[8 * GIB]))
    assert out.tolist() == [NO_TARGET]


def test_mom_critical_pressure_forces_below_used_plus_free() -> None:
    cur = 4 * GIB
    # 2 % free: critical; guest free target = 0.02 - 0.05 < 0: shrink by the full 5 % step.
    out = MomPolicy().decide(view(capacity=int(cur / 0.98), current=[cur], available=[GIB // 8], demand=[GIB]))
    assert out.tolist() == [int(cur * 0.95)]


def test_mom_qos_restores_the_guaranteed_minimum() -> None:
    out = MomPolicy().decide(view(capacity=GIB, current=[GIB // 4], available=[0], demand=[GIB // 8]))
    assert out.tolist() == [GIB // 2]


def test_hvdm_remembers_repeated_bursts_and_shrinks_after_the_window() -> None:
    policy = HvdmPolicy()
    cur = 4 * GIB
    floor = int(balloon_floor_pages(np.array([cur]))[0])
    quiet, burst = GIB // 2, 3 * GIB
    # One burst in two minutes for 20 minutes: the bursts are the guest's normal behaviour.
    for minute in range(20):
        used = burst if minute % 2 == 0 else quiet
        policy.decide(view(now=60.0 * minute, current=[cur], target=[cur], demand=[used + floor]))
    held = policy.decide(view(now=1200.0, current=[cur], target=[cur], demand=[quiet + floor])).tolist()[0]
    assert held >= size_for(np.array([burst]))[0]  # room for the next burst is kept
    # Then quiet for longer than the window: the VM shrinks toward its quiet use.
    targets = []
    for minute in range(21, 60):
        out = policy.decide(view(now=60.0 * minute, current=[cur], target=[cur], demand=[quiet + floor]))
        targets.append(out.tolist()[0])
    shrunk = [x for x in targets if x != NO_TARGET]
    assert shrunk and shrunk[-1] < 2 * GIB


def test_hvdm_does_not_hold_room_for_a_one_off_spike() -> None:
    policy = HvdmPolicy()
    cur = 4 * GIB
    floor = int(balloon_floor_pages(np.array([cur]))[0])
    policy.decide(view(now=0.0, current=[cur], demand=[3 * GIB + floor]))
    for minute in range(1, 11):
        out = policy.decide(view(now=60.0 * minute, current=[cur], target=[cur], demand=[GIB // 2 + floor]))
    assert out.tolist()[0] < 2 * GIB


def test_hvdm_sizes_a_leak_ahead_of_its_trend() -> None:
    policy = HvdmPolicy()
    cur = 8 * GIB
    floor = int(balloon_floor_pages(np.array([cur]))[0])
    rate = GIB // 10  # pages of use added per minute
    out = np.array([NO_TARGET])
    for minute in range(12):
        used = GIB + rate * minute
        out = policy.decide(view(now=60.0 * minute + 1, current=[cur], max=[32 * GIB], demand=[used + floor]))
    used_now = GIB + rate * 11
    # lead 60 s along the trend: about one minute of growth above the current use.
    assert out.tolist()[0] >= size_for(np.array([used_now + rate]))[0]


def test_hvdm_buffer_is_small_for_a_stable_guest() -> None:
    policy = HvdmPolicy()
    v = view(current=[8 * GIB], demand=[4 * GIB])
    hv = HyperVPolicy().decide(v).tolist()[0]
    ours = policy.decide(v).tolist()[0]
    assert guest_floor_size(v)[0] <= ours < hv


def test_policies_follow_vms_that_come_and_go() -> None:
    policy = HvdmPolicy()
    policy.decide(view(n=2))
    v = view(n=3)
    assert policy.decide(v).shape == (3,)
    mom = MomPolicy()
    mom.decide(view(n=3))
    assert mom.decide(view(n=1)).shape == (1,)


def test_hvdm_short_host_meets_whole_needs_smallest_shortfall_first() -> None:
    """Three guests each 1 GiB short, one 6 GiB short; 3 GiB to give: the three get theirs."""
    from services.rebalancer.policy import fit_hosts

    v = view(
        n=4,
        capacity=4 * 3 * GIB + 3 * GIB,
        current=[3 * GIB] * 4,
        demand=[4 * GIB, 4 * GIB, 4 * GIB, 9 * GIB],
        available=[0] * 4,
    )
    need = np.array([4 * GIB, 4 * GIB, 4 * GIB, 9 * GIB])
    movable = np.ones(4, dtype=bool)
    whole = fit_hosts(need, need, v, movable, fewest_short=True).tolist()
    assert whole[:3] == [4 * GIB] * 3 and whole[3] == 3 * GIB
    shared = fit_hosts(need, need, v, movable).tolist()  # Hyper-V-like: everyone a little short
    assert all(3 * GIB < x < 4 * GIB for x in shared[:3]) and sum(shared) <= 15 * GIB


def test_deadband_never_breaks_the_host_fit() -> None:
    """A shrink inside the deadband is still written when the host needs the memory."""
    policy = HyperVPolicy()
    # Two guests: A holds 5 GiB but needs ~4.1; B is under pressure. Host 10 GiB.
    v = view(
        n=2,
        capacity=10 * GIB,
        current=[5 * GIB, 5 * GIB],
        target=[5 * GIB, 5 * GIB],
        demand=[int(4.1 * GIB), int(5.6 * GIB)],
        available=[GIB, 0],
    )
    out = policy.decide(v).tolist()
    pursued = [t if t != NO_TARGET else c for t, c in zip(out, v.current.tolist(), strict=True)]
    assert sum(pursued) <= 10 * GIB
