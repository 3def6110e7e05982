"""``hvdm run`` through the real CLI: simulated guests over the gateway socket, the demo story,
the JSON summary, and an audit of the log it leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def hvdm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def last_json(stdout: str) -> dict:  # type: ignore[type-arg]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_demo_scenario_runs_to_completion_and_audits_clean(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    run = hvdm(
        "run",
        "--db",
        str(db),
        "--socket",
        str(tmp_path / "gw.sock"),
        "--guests",
        "2",
        "--guest-memory",
        "2G",
        "--scenario",
        "demo",
        "--speed",
        "40",
        "--duration",
        "120",
        "--progress-interval",
        "0",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    report = last_json(run.stdout)
    assert report["scenario_completed"] is True
    for vm in ("vm1", "vm2"):
        v = report["vms"][vm]
        # grow again = boot + half of the 1 GiB backend
        assert v["current_bytes"] == 2 * GIB + GIB // 2
        assert v["hot_added_bytes"] == GIB // 2
        assert v["violations"] == {}
    audit = hvdm("audit", "--db", str(db), "--json")
    assert audit.returncode == 0, audit.stderr
    doc = json.loads(audit.stdout)
    assert doc["replay_matches"] is True
    assert doc["vms"]["vm1"]["current_bytes"] == 2 * GIB + GIB // 2


@pytest.mark.slow
def test_malicious_guests_are_flagged_and_accounting_stays_exact(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    run = hvdm(
        "run",
        "--db",
        str(db),
        "--socket",
        str(tmp_path / "gw.sock"),
        "--guests",
        "2",
        "--guest-memory",
        "2G",
        "--guest-profile",
        "malicious",
        "--scenario",
        "demo",
        "--speed",
        "40",
        "--duration",
        "60",
        "--progress-interval",
        "0",
        "--json",
    )
    report = last_json(run.stdout)
    # Exit 3 exactly when the story could not complete (a malicious guest may stall it), else 0.
    assert run.returncode == (0 if report["scenario_completed"] else 3), run.stderr
    for v in report["vms"].values():
        assert v["violations"], "a malicious guest must be flagged"
        assert v["current_bytes"] == v["boot_bytes"] + v["hot_added_bytes"] - v["ballooned_bytes"]
    audit = hvdm("audit", "--db", str(db), "--json")
    assert json.loads(audit.stdout)["replay_matches"] is True


def test_run_rejects_bad_sizes_without_a_traceback(tmp_path: Path) -> None:
    run = hvdm("run", "--db", str(tmp_path / "x.db"), "--guest-memory", "lots", timeout=60)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr


def test_json_writes_only_json_to_stdout_and_the_banner_names_metrics_and_qmp(tmp_path: Path) -> None:
    qmp_dir = tmp_path / "qmp"
    run = hvdm(
        "run",
        "--db",
        str(tmp_path / "hvdm.db"),
        "--socket",
        str(tmp_path / "gw.sock"),
        "--guests",
        "1",
        "--duration",
        "1.5",
        "--progress-interval",
        "0.2",
        "--metrics-port",
        "0",
        "--qmp-dir",
        str(qmp_dir),
        "--json",
    )
    assert run.returncode == 0, run.stderr
    (line,) = run.stdout.splitlines()  # the summary, and nothing else
    assert json.loads(line)["vms"]["vm1"]["boot_bytes"] == 4 * GIB
    # The banner and the progress tables went to stderr; the banner says where to look.
    assert "hvdm: embedded service on" in run.stderr and "(sizes in MiB)" in run.stderr
    assert "metrics http://127.0.0.1:" in run.stderr and "/metrics" in run.stderr
    assert f"QMP sockets in {qmp_dir}" in run.stderr
