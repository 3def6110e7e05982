"""``hvdm rebalance --simulate`` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.audit.cli import hvdm, hvdm_json

KEYS = {"reclaimed_ratio", "pressure_vm_minutes", "operations", "overcommit_events"}
ORACLE_KEYS = {"reclaimed_fraction_of_oracle", "pressure_fraction_of_oracle", "pressure_vm_minutes_above_oracle"}


def test_simulate_all_policies_json_contract(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    doc = hvdm_json("rebalance", "--simulate", "--vms", "20", "--hours", "0.25", "--policy", "all", "--report", report)
    assert list(doc["policies"]) == ["hyperv", "mom", "hvdm", "oracle"]
    oracle = doc["policies"]["oracle"]
    for name, p in doc["policies"].items():
        assert set(p) >= KEYS | ORACLE_KEYS, name
        assert p["reclaimed_fraction_of_oracle"] == pytest.approx(p["reclaimed_ratio"] / oracle["reclaimed_ratio"])
        assert p["pressure_vm_minutes_above_oracle"] == pytest.approx(
            p["pressure_vm_minutes"] - oracle["pressure_vm_minutes"]
        )
        assert 0.0 < p["reclaimed_ratio"] < 1.0
        assert p["pressure_vm_minutes"] >= 0.0
        assert p["operations"] == p["balloon_operations"] + p["unballoon_operations"] + p["hot_add_operations"]
        assert p["operations"] > 0
    assert doc["fleet"]["vms"] == 20
    assert json.loads(report.read_text()) == doc


def test_same_seed_same_numbers_other_seed_other_fleet() -> None:
    args = ("rebalance", "--simulate", "--vms", "15", "--hours", "0.2", "--policy", "hyperv")
    a = hvdm_json(*args, "--seed", "3")
    b = hvdm_json(*args, "--seed", "3")
    c = hvdm_json(*args, "--seed", "4")
    strip = ("cpu_seconds",)
    pa = {k: v for k, v in a["policies"]["hyperv"].items() if k not in strip}
    pb = {k: v for k, v in b["policies"]["hyperv"].items() if k not in strip}
    pc = {k: v for k, v in c["policies"]["hyperv"].items() if k not in strip}
    assert pa == pb
    assert pa != pc


def test_one_policy_with_parameters() -> None:
    base = hvdm_json("rebalance", "--simulate", "--vms", "10", "--hours", "0.2", "--policy", "hyperv")
    wide = hvdm_json(
        "rebalance", "--simulate", "--vms", "10", "--hours", "0.2", "--policy", "hyperv", "--param", "buffer=1.0"
    )
    assert list(wide["policies"]) == ["hyperv"]
    assert wide["policies"]["hyperv"]["parameters"]["buffer"] == 1.0
    # A 100 % buffer holds more memory: less is reclaimed.
    assert wide["policies"]["hyperv"]["reclaimed_ratio"] < base["policies"]["hyperv"]["reclaimed_ratio"]


def test_plot_is_a_png(tmp_path: Path) -> None:
    png = tmp_path / "fleet.png"
    result = hvdm("rebalance", "--simulate", "--vms", "10", "--hours", "0.2", "--policy", "all", "--plot", png)
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hvdm" in result.stdout and "RECLAIMED" in result.stdout and "RECLAIM/ORACLE" in result.stdout


def test_oracle_is_simulation_only(tmp_path: Path) -> None:
    bad = hvdm("rebalance", "--db", tmp_path / "log.db", "--policy", "oracle", "--once")
    assert bad.returncode == 1 and "needs the future traces" in bad.stderr


def test_bad_arguments_are_one_line_errors() -> None:
    bad = hvdm("rebalance", "--simulate", "--vms", "5", "--hours", "0.1", "--policy", "hyperv", "--param", "nope=1")
    assert bad.returncode == 1 and bad.stderr.startswith("hvdm: rebalance error: unknown parameter")
    usage = hvdm("rebalance", "--simulate", "--vms", "0")
    assert usage.returncode == 2
    nothing = hvdm("rebalance")
    assert nothing.returncode == 1 and "--db" in nothing.stderr


@pytest.mark.slow
def test_hvdm_beats_hyperv_on_a_mixed_fleet() -> None:
    """The issue's target on a fleet small enough for a test (the 1,000-VM case is the bench)."""
    doc = hvdm_json("rebalance", "--simulate", "--vms", "150", "--hours", "2", "--policy", "all", "--seed", "2")
    hyperv, ours = doc["policies"]["hyperv"], doc["policies"]["hvdm"]
    assert ours["reclaimed_ratio"] >= hyperv["reclaimed_ratio"]
    # Issue 15's goal: within 10 % of the oracle's reclaim, at most half hyperv's pressure.
    assert ours["reclaimed_fraction_of_oracle"] >= 0.90
    assert ours["pressure_vm_minutes"] <= 0.5 * hyperv["pressure_vm_minutes"]
    assert ours["operations"] < hyperv["operations"]
    assert ours["overcommit_events"] <= hyperv["overcommit_events"]
