"""``hvdm audit`` on logs produced by the real EngineRunner: honest, tampered, malicious, broken."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from services.dm_engine import events as ev
from services.dm_engine.records import stored_event_json
from services.event_log.sqlite_log import SqliteLog
from tests.audit.cli import hvdm, hvdm_json
from tests.audit.scripted_log import PAGE, ScriptedLog, honest, malicious, stalled_hot_add
from tests.dm_engine.harness import FAST, GIB_PAGES

GIB = 1 << 30
#: Half-second ticks, so the throughput numbers prove the tick -> seconds conversion.
HALF_SECOND = replace(FAST, tick_seconds=0.5, balloon_timeout_ticks=15, hot_add_timeout_ticks=20)


@pytest.fixture
def honest_fleet() -> ScriptedLog:
    fleet = ScriptedLog(config=HALF_SECOND)
    honest(fleet)
    return fleet


@pytest.fixture
def honest_db(tmp_path: Path, honest_fleet: ScriptedLog) -> Path:
    return honest_fleet.write(tmp_path / "honest.db")


def recorded_events(db: Path, vm: str) -> list[tuple[int, int, str, str]]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT seq, inbox_pos, kind, record FROM events WHERE vm = ? ORDER BY seq", (vm,))
        return [(int(s), int(p), str(k), stored_event_json(r)) for s, p, k, r in rows]


def test_the_runner_recorded_what_the_scripted_harness_decided(honest_fleet: ScriptedLog, tmp_path: Path) -> None:
    """The fixture's premise: a log built this way holds exactly the scripted engine's events."""
    db = honest_fleet.write(tmp_path / "log.db", batch=3, restart_every=2)
    assert [r for _, _, _, r in recorded_events(db, "vm1")] == honest_fleet.recorded_by_harness("vm1")


def test_honest_run_replays_exactly_with_exact_accounting(honest_db: Path, honest_fleet: ScriptedLog) -> None:
    doc = hvdm_json("audit", "--db", honest_db)
    assert doc["replay_matches"] is True
    assert doc["first_divergence"] is None
    assert doc["inbox_records"] == len(honest_fleet.rows)
    assert doc["events"] == doc["decided_events"] == len(honest_fleet.recorded_by_harness("vm1"))
    assert doc["engine_config"]["tick_seconds"] == 0.5 and doc["engine_config_source"] == "meta"
    vm = doc["vms"]["vm1"]
    boot = 4 * GIB
    assert vm["boot_bytes"] == boot
    assert vm["hot_added_bytes"] == GIB
    assert vm["ballooned_bytes"] == 1024 * PAGE
    assert vm["current_bytes"] == boot + GIB - 1024 * PAGE
    assert vm["target_bytes"] == boot + GIB - 1024 * PAGE
    assert vm["violations"] == {}
    assert vm["replay_matches"] is True
    assert vm["protocol_state"] == "IDLE"
    assert vm["protocol_version"] == "2.0"
    [balloon] = vm["balloon_transactions"]
    assert balloon["outcome"] == "complete"
    assert (balloon["requested_pages"], balloon["pages"], balloon["bytes"]) == (2048, 2048, 2048 * PAGE)
    assert balloon["ticks"] == 3 and balloon["seconds"] == 1.5 and balloon["instant"] is False
    assert balloon["gb_per_min"] == pytest.approx(2048 * PAGE / 1e9 / (1.5 / 60))
    assert balloon["gb_per_min_is_lower_bound"] is False
    [unballoon] = vm["unballoon_transactions"]
    assert unballoon["outcome"] == "complete" and unballoon["pages"] == 1024
    assert unballoon["instant"] is True and unballoon["ticks"] == 0
    # Within one tick: the rate is computed over a whole tick, a lower bound, and says so.
    assert unballoon["gb_per_min"] == pytest.approx(1024 * PAGE / 1e9 / (0.5 / 60))
    assert unballoon["gb_per_min_is_lower_bound"] is True


def test_honest_run_human_output(honest_db: Path) -> None:
    result = hvdm("audit", "--db", honest_db)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "MATCHES" in out
    assert "4,294,967,296" in out and "1,073,741,824" in out  # boot and hot-added, in bytes
    assert "vm1 balloon transactions" in out and "complete" in out
    assert ">= " in out and "lower bound" in out  # the instant unballoon


def test_tampered_event_row_diverges_at_that_seq(honest_db: Path) -> None:
    events = recorded_events(honest_db, "vm1")
    seq, pos, _, original = next(e for e in events if e[2] == "PagesBallooned")
    forged = original.replace('"pages":1024', '"pages":1')
    assert forged != original
    with sqlite3.connect(honest_db) as con:
        con.execute("UPDATE events SET record = ? WHERE vm = 'vm1' AND seq = ?", (forged, seq))
    doc = hvdm_json("audit", "--db", honest_db, code=2)
    assert doc["replay_matches"] is False
    div = doc["first_divergence"]
    assert (div["vm"], div["seq"], div["inbox_pos"], div["kind"]) == ("vm1", seq, pos, "record_differs")
    assert div["expected"] == original and div["recorded"] == forged
    assert doc["vms"]["vm1"]["replay_matches"] is False
    assert doc["vms"]["vm1"]["first_divergence"] == div
    human = hvdm("audit", "--db", honest_db)
    assert human.returncode == 2
    assert f"DIVERGES: first at vm vm1 seq {seq} (inbox pos {pos}" in human.stdout
    assert forged in human.stdout


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("UPDATE events SET inbox_pos = inbox_pos + 1 WHERE vm = 'vm1' AND seq = {seq}", "inbox_pos_differs"),
        ("DELETE FROM events WHERE vm = 'vm1' AND seq = {seq}", "seq_gap"),
        ("UPDATE events SET record = 'not json' WHERE vm = 'vm1' AND seq = {seq}", "record_differs"),
    ],
)
def test_other_tampering_is_named(honest_db: Path, sql: str, kind: str) -> None:
    seq = 5
    with sqlite3.connect(honest_db) as con:
        con.execute(sql.format(seq=seq))
    doc = hvdm_json("audit", "--db", honest_db, code=2)
    div = doc["first_divergence"]
    assert (div["vm"], div["seq"], div["kind"]) == ("vm1", seq, kind)


def test_a_garbage_row_is_reported_not_a_traceback(honest_db: Path) -> None:
    with sqlite3.connect(honest_db) as con:
        con.execute("UPDATE events SET record = '{\"type\": \"Nope\"}' WHERE vm = 'vm1' AND seq = 3")
    doc = hvdm_json("audit", "--db", honest_db, code=2)
    assert doc["vms"]["vm1"]["fold_error"].startswith("seq 3:")
    human = hvdm("audit", "--db", honest_db)
    assert human.returncode == 2 and "Traceback" not in human.stderr
    assert "could not all be folded" in human.stdout


def test_events_the_inbox_does_not_explain_are_found(honest_db: Path) -> None:
    last = recorded_events(honest_db, "vm1")[-1]
    with sqlite3.connect(honest_db) as con:
        con.execute(
            "INSERT INTO events (vm, seq, inbox_pos, kind, record) VALUES ('vm1', ?, ?, 'TargetSet', ?)",
            (last[0] + 1, last[1], '{"target_pages":1,"type":"TargetSet"}'),
        )
        con.execute(
            "INSERT INTO events (vm, seq, inbox_pos, kind, record) VALUES ('ghost', 1, 1, 'TargetSet', ?)",
            ('{"target_pages":1,"type":"TargetSet"}',),
        )
    doc = hvdm_json("audit", "--db", honest_db, code=2)
    assert doc["vms"]["vm1"]["first_divergence"]["kind"] == "unexpected_event"
    assert doc["vms"]["vm1"]["first_divergence"]["seq"] == last[0] + 1
    ghost = doc["vms"]["ghost"]["first_divergence"]
    assert (ghost["kind"], ghost["seq"], ghost["expected"]) == ("unexpected_event", 1, None)
    assert doc["first_divergence"]["vm"] == "ghost"  # inbox position 1: the earliest in history


def test_malicious_run_counts_violations_by_reason(tmp_path: Path) -> None:
    fleet = ScriptedLog(config=HALF_SECOND)
    honest(fleet)
    malicious(fleet)
    db = fleet.write(tmp_path / "malicious.db", restart_every=3)
    doc = hvdm_json("audit", "--db", db)
    assert doc["replay_matches"] is True
    vm2 = doc["vms"]["vm2"]
    assert vm2["violations"] == {
        "DOUBLE_FREE": 2,
        "MALFORMED_FRAME": 1,
        "PAGES_NOT_OWNED": 1,
        "TIMEOUT": 1,
        "UNEXPECTED_MESSAGE": 1,
        "UNKNOWN_TYPE": 1,
        "WRONG_DIRECTION": 1,
    }
    expected = [e.reason for e in fleet.vms["vm2"].events if isinstance(e, ev.GuestViolation)]
    assert sum(vm2["violations"].values()) == len(expected)
    ticks = vm2["violation_ticks"]["DOUBLE_FREE"]
    assert ticks["last_tick"] == ticks["first_tick"] + 1  # the second one came a tick later
    timeout_tick = ticks["last_tick"] + HALF_SECOND.balloon_timeout_ticks
    assert vm2["violation_ticks"]["TIMEOUT"] == {"first_tick": timeout_tick, "last_tick": timeout_tick}
    # Only pages that were really the guest's, once, were accounted.
    assert vm2["ballooned_bytes"] == (10 + 5 + 8) * PAGE
    [balloon] = vm2["balloon_transactions"]
    assert (balloon["outcome"], balloon["pages"]) == ("timeout", 23)
    assert doc["vms"]["vm1"]["violations"] == {}
    text = hvdm("audit", "--db", db).stdout
    assert "vm2 violations" in text and "PAGES_NOT_OWNED" in text


def test_one_vm_only(tmp_path: Path) -> None:
    fleet = ScriptedLog(config=HALF_SECOND)
    honest(fleet)
    stalled_hot_add(fleet)
    db = fleet.write(tmp_path / "two.db")
    doc = hvdm_json("audit", "--db", db, "--vm", "vm4")
    assert list(doc["vms"]) == ["vm4"]
    assert doc["events"] == len(fleet.recorded_by_harness("vm4"))
    assert doc["vms"]["vm4"]["violations"] == {"TIMEOUT": 1}
    assert doc["vms"]["vm4"]["hot_added_bytes"] == 0
    assert hvdm_json("audit", "--db", db)["vms"].keys() == {"vm1", "vm4"}


def test_only_consumed_records_are_replayed(honest_db: Path, honest_fleet: ScriptedLog) -> None:
    log = SqliteLog(honest_db)
    log.append_input("vm1", 999, {"type": "SetTarget", "tick": 999, "target_bytes": GIB_PAGES * PAGE})
    log.close()
    # The replay matches up to the consumed position, but the audit says (exit 3) that the engine
    # never processed the record behind it.
    doc = hvdm_json("audit", "--db", honest_db, code=3)
    assert doc["replay_matches"] is True
    assert doc["inbox_records"] == len(honest_fleet.rows) == doc["consumed_position"]
    assert doc["inbox_high_watermark"] == len(honest_fleet.rows) + 1
    assert doc["consumed_behind_inbox"] is True and doc["unconsumed_inputs"] == 1


def test_missing_db_is_one_line_on_stderr(tmp_path: Path) -> None:
    result = hvdm("audit", "--db", tmp_path / "nope.db")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("hvdm: audit error:")
    assert not (tmp_path / "nope.db").exists()


def test_other_files_are_refused_and_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    result = hvdm("audit", "--db", other)
    assert result.returncode == 1 and "not an hvdm log" in result.stderr
    with sqlite3.connect(other) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["t"]
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all" * 10)
    result = hvdm("audit", "--db", text)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_unknown_vm_is_an_error(honest_db: Path) -> None:
    result = hvdm("audit", "--db", honest_db, "--vm", "vm9")
    assert result.returncode == 1 and "vm9" in result.stderr and result.stderr.count("\n") == 1


def test_fail_on_violations_is_a_ci_gate(tmp_path: Path, honest_db: Path) -> None:
    fleet = ScriptedLog(config=HALF_SECOND)
    honest(fleet)
    malicious(fleet)
    db = fleet.write(tmp_path / "malicious.db")
    assert hvdm("audit", "--db", db).returncode == 0  # without the flag, violations are reported only
    gated = hvdm("audit", "--db", db, "--fail-on-violations")
    assert gated.returncode == 4, gated.stderr
    assert "vm2 violations" in gated.stdout
    doc = hvdm_json("audit", "--db", db, "--fail-on-violations", code=4)
    assert doc["replay_matches"] is True and sum(doc["vms"]["vm2"]["violations"].values()) > 0
    # A log whose guests behaved passes the gate.
    assert hvdm("audit", "--db", honest_db, "--fail-on-violations").returncode == 0
    # Only the judged VMs count: the gate follows --vm.
    assert hvdm("audit", "--db", db, "--vm", "vm1", "--fail-on-violations").returncode == 0
