"""The oracle: perfect foresight under the same constraints, and the yardstick the report uses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.rebalancer import make_policy
from services.rebalancer.oracle import OraclePolicy, sliding_max
from services.rebalancer.simulation import SimConfig, simulate


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=40), st.integers(1, 45))
def test_sliding_max_is_the_window_maximum(values: list[int], width: int) -> None:
    row = np.array([values], dtype=np.int64)
    out = sliding_max(row, width)
    expected = [max(values[i : i + width]) for i in range(len(values) - width + 1)]
    assert out[0].tolist() == expected


def test_oracle_beats_every_policy_on_both_counts() -> None:
    """Perfect foresight: no pressure where capacity allows, and at least as much reclaimed."""
    result = simulate(SimConfig(vms=40, hours=0.75, seed=5), [make_policy(n) for n in ("hyperv", "hvdm", "oracle")])
    doc = result.to_dict()["policies"]
    oracle = doc["oracle"]
    assert oracle["overcommit_events"] == 0
    assert oracle["pressure_vm_minutes"] == 0.0
    for name in ("hyperv", "hvdm"):
        assert oracle["reclaimed_ratio"] > doc[name]["reclaimed_ratio"], name
        assert doc[name]["pressure_vm_minutes"] > 0.0, name  # bursts arrive unannounced for them
        assert 0.9 < doc[name]["reclaimed_fraction_of_oracle"] < 1.0
        assert doc[name]["pressure_fraction_of_oracle"] is None  # a fraction of zero is undefined


def test_oracle_keeps_the_hot_add_speed_limit() -> None:
    """A leak grows past boot: the oracle hot-adds early enough, never faster than the model allows."""
    config = SimConfig(vms=6, hours=1.0, seed=2, mix={"leak": 1.0})
    result = simulate(config, [make_policy("oracle")])
    run = result.runs["oracle"]
    assert run.fleet.counters.hot_add_ops > 0
    assert int(run.fleet.counters.pressure_seconds.sum()) == 0


def test_oracle_refuses_to_run_without_foresight() -> None:
    from tests.rebalancer.test_policies import view

    with pytest.raises(ValueError, match="cannot run live"):
        OraclePolicy().decide(view(demand=[1000]))
