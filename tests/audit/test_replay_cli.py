"""``hvdm replay``: one VM's state at an inbox position or a tick, for incident analysis."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.audit.cli import hvdm, hvdm_json
from tests.audit.scripted_log import PAGE, ScriptedLog, honest
from tests.dm_engine.harness import GIB_PAGES


@pytest.fixture
def honest_db(tmp_path: Path) -> Path:
    fleet = ScriptedLog()
    honest(fleet)
    return fleet.write(tmp_path / "honest.db", restart_every=2)


def event_position(db: Path, kind: str) -> tuple[int, int]:
    """(inbox_pos, tick) of vm1's first event of ``kind``."""
    with sqlite3.connect(db) as con:
        pos = con.execute(
            "SELECT inbox_pos FROM events WHERE vm = 'vm1' AND kind = ? ORDER BY seq LIMIT 1", (kind,)
        ).fetchone()[0]
        tick = con.execute("SELECT tick FROM inbox WHERE pos = ?", (pos,)).fetchone()[0]
    return int(pos), int(tick)


def replay(db: Path, *args: str | int) -> dict[str, Any]:
    return hvdm_json("replay", "--db", db, "--vm", "vm1", *map(str, args))


def test_state_before_during_and_after_a_balloon_transaction(honest_db: Path) -> None:
    start, _ = event_position(honest_db, "BalloonRequested")
    end, _ = event_position(honest_db, "BalloonTransactionEnded")
    assert start < end

    before = replay(honest_db, "--until", start - 1)
    assert before["until_pos"] == start - 1
    assert before["protocol_state"] == "IDLE"
    assert before["state"]["txn"] is None
    assert before["accounting"]["ballooned_pages"] == 0
    assert before["state"]["ballooned"] == []
    boot = before["accounting"]["boot_pages"]
    assert before["accounting"]["current_pages"] == boot + GIB_PAGES

    during = replay(honest_db, "--until", start)
    assert during["protocol_state"] == "BALLOON_REPLY_WAIT"
    assert during["state"]["txn"]["kind"] == "balloon"
    assert during["state"]["txn"]["requested_pages"] == 2048
    assert during["accounting"]["target_pages"] == boot + GIB_PAGES - 2048

    after = replay(honest_db, "--until", end)
    assert after["protocol_state"] == "IDLE"
    assert after["state"]["txn"] is None
    assert after["state"]["ballooned"] == [[0x10000, 1024], [0x20000, 1024]]  # [start, count] lists
    assert after["accounting"]["ballooned_bytes"] == 2048 * PAGE
    assert after["state"]["counters"]["balloon_out_pages_total"] == 2048
    assert after["state"]["layout"]["vdimms"][0]["backend_id"] == "mem1"
    assert after["events"] > during["events"] > before["events"]


def test_until_tick_cuts_the_inbox_at_that_tick(honest_db: Path) -> None:
    start, start_tick = event_position(honest_db, "BalloonRequested")
    doc = replay(honest_db, "--until-tick", start_tick)
    assert doc["tick"] == start_tick and doc["until_pos"] >= start
    assert doc["protocol_state"] == "BALLOON_REPLY_WAIT"
    assert replay(honest_db, "--until-tick", start_tick - 1)["state"]["txn"] is None


def test_events_and_inbox_sources_agree_on_an_honest_log(honest_db: Path) -> None:
    for until in (5, 20, 10_000):
        folded = replay(honest_db, "--until", until)
        decided = replay(honest_db, "--until", until, "--from-inbox")
        assert (folded["source"], decided["source"]) == ("events", "inbox")
        assert folded["state"] == decided["state"]
        assert folded["until_pos"] == decided["until_pos"]


def test_default_is_the_end_and_human_output(honest_db: Path) -> None:
    end = replay(honest_db)
    with sqlite3.connect(honest_db) as con:
        consumed = con.execute("SELECT pos FROM positions WHERE name = 'engine'").fetchone()[0]
    assert end["until_pos"] == consumed
    start, _ = event_position(honest_db, "BalloonRequested")
    result = hvdm("replay", "--db", honest_db, "--vm", "vm1", "--until", str(start))
    assert result.returncode == 0, result.stderr
    assert f"vm1 after inbox position {start}" in result.stdout
    assert "transaction in flight: balloon" in result.stdout
    assert "vDIMMs" in result.stdout and "mem1" in result.stdout


def test_errors(honest_db: Path, tmp_path: Path) -> None:
    unknown = hvdm("replay", "--db", honest_db, "--vm", "vm9")
    assert unknown.returncode == 1 and "vm9" in unknown.stderr
    missing = hvdm("replay", "--db", tmp_path / "none.db", "--vm", "vm1")
    assert missing.returncode == 1 and missing.stderr.startswith("hvdm: replay error:")
    both = hvdm("replay", "--db", honest_db, "--vm", "vm1", "--until", "3", "--until-tick", "3")
    assert both.returncode == 2  # argparse: mutually exclusive
