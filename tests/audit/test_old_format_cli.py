"""Today's engine audits a log written in an older format: the raw guest bytes are decoded again,
missing fields take their defaults, the file is not touched, and where the old engine decided
differently the first divergence is named exactly."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from tests.audit.cli import hvdm, hvdm_json
from tests.audit.guest_fleet import story
from tests.audit.old_format import age


@pytest.fixture(scope="module")
def today(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("today") / "log.db"
    story(db, "not_owned").log.close()
    return db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_old_format_log_replays_exactly_with_todays_engine(today: Path, tmp_path: Path) -> None:
    old = age(today, tmp_path / "old.db")
    with sqlite3.connect(old) as con:
        opened = con.execute("SELECT record FROM inbox WHERE record LIKE '%ChannelOpened%'").fetchone()[0]
        assert "status_reports" not in opened  # really the old shape
    before = digest(old)
    doc = hvdm_json("audit", "--db", old)
    assert doc["replay_matches"] is True
    assert doc["events"] == doc["decided_events"] > 100
    assert doc["upcast_events"] == 0
    # The same findings as on today's log: the guest's lies are in the raw bytes.
    new = hvdm_json("audit", "--db", today)
    assert doc["vms"]["vm1"]["violations"] == new["vms"]["vm1"]["violations"] == {"PAGES_NOT_OWNED": 2}
    assert doc["vms"]["vm1"]["behaviour"]["violations"] == new["vms"]["vm1"]["behaviour"]["violations"]
    # Read-only: not one byte changed, no table added.
    assert digest(old) == before
    with sqlite3.connect(old) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "snapshots" not in tables
    # replay --until works on it too.
    point = hvdm_json("replay", "--db", old, "--vm", "vm1", "--until-tick", "60")
    assert point["protocol_state"] in ("IDLE", "BALLOON_REPLY_WAIT")


def test_non_canonical_old_records_are_upcast_not_divergent(today: Path, tmp_path: Path) -> None:
    old = age(today, tmp_path / "old.db", canonical_events=False)
    doc = hvdm_json("audit", "--db", old)
    assert doc["replay_matches"] is True
    assert doc["upcast_events"] == doc["events"]  # every row differed in bytes, none in facts


def test_an_old_engine_that_decided_differently_diverges_at_that_event(today: Path, tmp_path: Path) -> None:
    """The old engine recorded violations without their page ranges (as QEMU, which only warns)."""
    edited: list[int] = []

    def strip_ranges(seq: int, event: dict[str, object]) -> dict[str, object]:
        if event["type"] == "GuestViolation" and event["ranges"]:
            edited.append(seq)
            return {**event, "ranges": [], "pages": 0}
        return event

    old = age(today, tmp_path / "old.db", edit_event=strip_ranges)
    doc = hvdm_json("audit", "--db", old, code=2)
    div = doc["first_divergence"]
    assert (div["vm"], div["seq"], div["kind"]) == ("vm1", edited[0], "record_differs")
    assert json.loads(div["recorded"])["ranges"] == [] and json.loads(div["expected"])["ranges"]
    human = hvdm("audit", "--db", old)
    assert human.returncode == 2 and f"first at vm vm1 seq {edited[0]}" in human.stdout


def test_broker_without_a_kafka_reader_is_one_line(today: Path) -> None:
    result = hvdm("audit", "--broker", "kafka://127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "audit error" in result.stderr


def test_several_vms_selected(tmp_path: Path) -> None:
    from tests.embedded.fleet_scenario import build_fleet, run_story

    fleet = build_fleet(tmp_path / "three.db")
    run_story(fleet)
    fleet.log.close()
    doc = hvdm_json("audit", "--db", tmp_path / "three.db", "--vm", "vm1", "--vm", "vm3")
    assert sorted(doc["vms"]) == ["vm1", "vm3"] and doc["selected_vms"] == ["vm1", "vm3"]
    assert doc["replay_matches"] is True
    everyone = hvdm_json("audit", "--db", tmp_path / "three.db")
    assert doc["vms"]["vm3"] == everyone["vms"]["vm3"]
    bad = hvdm("audit", "--db", tmp_path / "three.db", "--vm", "vm1", "--vm", "nope")
    assert bad.returncode == 1 and "nope" in bad.stderr
