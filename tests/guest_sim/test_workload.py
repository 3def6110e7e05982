"""Workloads and determinism: same seed, same bytes; the memory follows Committed_AS."""

from __future__ import annotations

from typing import Any

import pytest

from services.dm_protocol import BalloonRequest, HotAddRequest, StatusReport, UnballoonRequest, encode
from services.guest_sim import WORKLOADS, GuestConfig, SimulatedGuest
from services.guest_sim.workload import make_workload
from tests.guest_sim.host_script import dec, only, ready_guest

BOOT = 1 << 20


def _run(**config: Any) -> list[bytes]:
    g = ready_guest(**config)
    out: list[bytes] = []
    out += g.receive(encode(BalloonRequest(num_pages=100_000)), 10.0)
    out += g.receive(encode(HotAddRequest(range=(0x100000, 32768))), 20.0)
    for t in range(30, 600, 7):
        out += g.poll(float(t))
    out += g.receive(encode(UnballoonRequest(more_pages=False, ranges=((0xF0000, 512),))), 600.0)
    return out


def test_workload_names() -> None:
    assert set(WORKLOADS) == {"idle", "steady", "diurnal", "bursty", "leak"}
    assert all(WORKLOADS.values())


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_same_seed_same_bytes(workload: str) -> None:
    assert _run(workload=workload, seed=5) == _run(workload=workload, seed=5)


@pytest.mark.parametrize("workload", ["steady", "bursty", "diurnal", "leak"])
def test_other_seed_other_bytes(workload: str) -> None:
    assert _run(workload=workload, seed=5) != _run(workload=workload, seed=6)


def test_idle_is_constant_and_steady_stays_near_40_percent() -> None:
    idle = make_workload("idle", BOOT, 1)
    assert {idle.committed_pages(t) for t in range(0, 10_000, 100)} == {int(BOOT * 0.08)}
    steady = make_workload("steady", BOOT, 1)
    values = [steady.committed_pages(t) for t in range(0, 10_000, 5)]
    assert all(0.38 * BOOT <= v <= 0.42 * BOOT for v in values) and len(set(values)) > 100


def test_diurnal_has_a_24_h_period() -> None:
    w = make_workload("diurnal", BOOT, 2)
    values = [w.committed_pages(h * 3600) for h in range(24)]
    assert max(values) - min(values) > 0.35 * BOOT
    assert all(abs(w.committed_pages(t) - w.committed_pages(t + 86_400)) <= 1 for t in range(0, 86_400, 3600))


def test_bursty_has_spikes() -> None:
    w = make_workload("bursty", BOOT, 3)
    values = [w.committed_pages(t) for t in range(0, 3600)]
    assert min(values) == int(BOOT * 0.20) and max(values) >= int(BOOT * 0.50)


def test_leak_grows_until_the_guest_is_under_pressure() -> None:
    g = ready_guest(workload="leak", seed=4)
    early = only(dec(g.poll(60.0)), StatusReport)[-1]
    late = only(dec(g.poll(4 * 3600.0)), StatusReport)[-1]
    assert late.num_committed > early.num_committed
    snap = g.snapshot()
    assert snap["committed_pages"] == 2 * BOOT  # capped at twice the boot RAM
    assert snap["available_pages"] == 0  # nothing left: the host must add memory
    assert g.memory.problems() == []


def test_memory_follows_the_workload_and_page_cache_counts_as_available() -> None:
    g = SimulatedGuest(GuestConfig(workload="steady", page_cache_fraction=0.5, seed=1))
    g.connect(0.0)
    g.poll(100.0)
    snap = g.snapshot()
    assert snap["used_pages"] == snap["committed_pages"] + snap["cache_pages"]
    assert snap["available_pages"] == snap["free_pages"] + snap["cache_pages"]
    assert snap["cache_pages"] == (snap["free_pages"] + snap["cache_pages"]) // 2
    assert g.memory.problems() == []


def test_unknown_names_are_configuration_errors() -> None:
    with pytest.raises(ValueError):
        GuestConfig(workload="nope")
    with pytest.raises(ValueError):
        GuestConfig(profile="nope")
    with pytest.raises(ValueError):
        GuestConfig(boot_bytes=(1 << 30) + 4096)
    with pytest.raises(ValueError):
        GuestConfig(hot_add_alignment=12)
