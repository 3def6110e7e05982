"""The simulation's traces are the guest simulator's workloads, second for second."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.guest_sim.workload import WORKLOADS, make_workload
from services.rebalancer.traces import fleet_trace, trace


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(WORKLOADS)),
    boot_gib=st.sampled_from([1, 2, 4, 16]),
    seed=st.integers(0, 10_000),
    t0=st.integers(0, 40_000),
    length=st.integers(1, 400),
)
def test_trace_equals_committed_pages(name: str, boot_gib: int, seed: int, t0: int, length: int) -> None:
    workload = make_workload(name, boot_gib << 18, seed)
    got = trace(workload, t0, t0 + length).tolist()
    want = [workload.committed_pages(float(t)) for t in range(t0, t0 + length)]
    # numpy's and math's sine may round differently in the last bit: one page at most.
    slack = 1 if name == "diurnal" else 0
    assert all(abs(g - w) <= slack for g, w in zip(got, want, strict=True))


def test_bursty_spike_crossing_a_minute_and_a_chunk_boundary() -> None:
    """A spike drawn in one minute runs into the next; chunked traces must not lose it."""
    workload = make_workload("bursty", 1 << 20, 3)
    whole = trace(workload, 0, 3600)
    pieces = [trace(workload, t, t + 7) for t in range(0, 3600, 7)]
    joined = [v for piece in pieces for v in piece.tolist()][:3600]
    assert joined == whole.tolist()
    assert max(whole.tolist()) > min(whole.tolist())  # there are spikes


def test_fleet_trace_shape_and_empty_range() -> None:
    workloads = [make_workload(n, 1 << 18, i) for i, n in enumerate(sorted(WORKLOADS))]
    assert fleet_trace(workloads, 10, 70).shape == (len(workloads), 60)
    assert trace(workloads[0], 5, 5).shape == (0,)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_unknown_workload_type_falls_back_to_exact_calls(name: str) -> None:
    class Wrapped:
        def __init__(self) -> None:
            self.inner = make_workload(name, 1 << 18, 7)

        def committed_pages(self, t: float) -> int:
            return self.inner.committed_pages(t)

    w = Wrapped()
    assert trace(w, 100, 130).tolist() == [w.committed_pages(float(t)) for t in range(100, 130)]


@pytest.mark.parametrize(
    "name",
    [
        "services.rebalancer.traces",
        "services.rebalancer.fleet_view",
        "services.rebalancer.policy",
    ],
)
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
