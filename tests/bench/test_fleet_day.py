"""``hvdm bench fleet_day`` on a tiny slice, through the real command line: the JSON report's
contract, a log that replays byte for byte, and a kept file that ``hvdm audit`` agrees with."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.audit.cli import hvdm, hvdm_json

TOP_KEYS = {
    "machine",
    "cores",
    "slice",
    "warmup",
    "workload",
    "events",
    "write",
    "size",
    "audit",
    "part_read",
    "replay_matches",
    "day",
    "fleet_day",
}
AUDIT_KEYS = {"jobs", "seconds", "events", "events_per_s", "speedup", "efficiency", "simulated", "replay_matches"}
DAY_KEYS = {"vms", "inputs", "events", "bytes", "json_bytes", "write_seconds", "realtime_ratio", "audit_seconds"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path, str]:
    tmp = tmp_path_factory.mktemp("fleet_day")
    db, out = tmp / "slice.db", tmp / "report.json"
    # 16 jobs: more than this machine's cores (two), so that count is simulated by parts.
    args = ["--vms", "12", "--seconds", "40", "--balloon-share", "3", "--jobs-list", "1", "2", "16"]
    result = hvdm("bench", "fleet_day", *args, "--db", db, "--json", out)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), db, result.stdout


def test_report_keys_and_replay(run: tuple[dict[str, object], Path, str]) -> None:
    r, _, text = run
    assert set(r) >= TOP_KEYS
    assert r["replay_matches"] is True
    w = r["workload"]
    assert isinstance(w, dict)
    assert w["status_reports"] == 12 * 40 and w["ticks"] == 40
    assert w["inputs"] == sum(w[k] for k in ("handshake", "ticks", "status_reports", "set_targets")) + (
        w["balloon_responses"] + w["unballoon_responses"]
    )
    # 3 re-targets per VM-minute: both directions happen, and the engine asked for each answer.
    assert w["set_targets"] == 24 and w["balloon_responses"] > 0 and w["unballoon_responses"] > 0
    assert w["balloon_requests"] > 0 and w["unballoon_requests"] >= w["unballoon_responses"]
    audits = r["audit"]
    assert isinstance(audits, list) and [a["jobs"] for a in audits] == [1, 2, 16]
    cores = len(os.sched_getaffinity(0))
    for a in audits:
        assert set(a) >= AUDIT_KEYS and a["replay_matches"] is True
        assert a["simulated"] == (a["jobs"] > cores)
        assert a["efficiency"] == pytest.approx(a["speedup"] / a["jobs"])
    assert len({a["events"] for a in audits}) == 1
    size = r["size"]
    assert isinstance(size, dict)
    assert 0 < size["bytes_per_input"] < size["json_bytes_per_input"]
    for key in ("day", "fleet_day"):
        day = r[key]
        assert isinstance(day, dict) and set(day) >= DAY_KEYS
        assert set(day["audit_seconds"]) == {"1", "2", "16"}
    fleet = r["fleet_day"]
    assert isinstance(fleet, dict) and fleet["vms"] == 10_000
    assert fleet["inputs"] == pytest.approx(w["inputs"] / 40 / 12 * 10_000 * 86_400, rel=1e-6)
    assert "replay_matches: True" in text and "machine:" in text and "x real time" in text


def test_kept_log_audits_the_same_through_the_cli(run: tuple[dict[str, object], Path, str]) -> None:
    r, db, _ = run
    doc = hvdm_json("audit", "--db", db, "--jobs", "2")
    assert doc["replay_matches"] is True
    audits = r["audit"]
    assert isinstance(audits, list)
    assert sum(v["events"] for v in doc["vms"].values()) == audits[0]["events"]


def test_an_existing_db_is_refused(run: tuple[dict[str, object], Path, str]) -> None:
    _, db, _ = run
    before = db.stat().st_size
    result = hvdm("bench", "fleet_day", "--vms", "2", "--seconds", "1", "--db", db)
    assert result.returncode == 2 and "exists" in result.stderr
    assert db.stat().st_size == before
