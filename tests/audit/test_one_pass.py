"""The audit's one pass (fold the decided events while the recorded rows match them) reports exactly
what the two-pass audit (replay and compare, then read and fold every recorded row) reports: on
honest logs of every scenario and guest profile, and on logs forged in each way an audit detects."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.audit import audit, audit_text
from services.audit import report as report_module
from services.audit.reader import SqliteReader
from services.dm_engine.records import stored_event_json
from services.dm_protocol import StatusReport
from services.guest_sim.profiles import PROFILES
from tests.audit.guest_fleet import story
from tests.audit.scripted_log import ScriptedLog, every_scenario, handshake


def reports(db: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    reader = SqliteReader(db)
    try:
        one = audit(reader, **kwargs)
        with monkeypatch.context() as m:
            m.setattr(report_module, "ONE_PASS", False)
            two = audit(reader, **kwargs)
        assert audit_text(one) == audit_text(two)
        return one.to_dict(), two.to_dict()
    finally:
        reader.close()


@pytest.fixture(scope="module")
def scripted_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fleet = ScriptedLog()
    every_scenario(fleet)
    fleet.advance_ticks(5)
    return fleet.write(tmp_path_factory.mktemp("one_pass") / "scripted.db")


def test_every_scripted_scenario_reports_the_same(scripted_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = reports(scripted_db, monkeypatch)
    assert one["replay_matches"] is True and len(one["vms"]) == 4
    assert any(vm["violations"] for vm in one["vms"].values())  # the malicious guest was flagged
    assert one == two


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_guest_profile_reports_the_same(profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "story.db"
    story(db, profile).log.close()
    one, two = reports(db, monkeypatch)
    assert one["events"] > 0
    assert one == two


def _forge_compact(con: sqlite3.Connection) -> None:
    nth = "SELECT id FROM events WHERE vm = 'vm1' AND kind = 'StatusReported' LIMIT 1 OFFSET 3"
    con.execute(f"UPDATE events SET record = ? WHERE id = ({nth})", (b"\x011,2,3,4,5,6,7",))


def _forge_text(con: sqlite3.Connection) -> None:
    nth = "SELECT id FROM events WHERE vm = 'vm2' AND kind = 'TargetSet' LIMIT 1"
    con.execute(f'UPDATE events SET record = \'{{"target_pages":1,"type":"TargetSet"}}\' WHERE id = ({nth})')


def _delete_row(con: sqlite3.Connection) -> None:
    con.execute("DELETE FROM events WHERE id = (SELECT id FROM events WHERE vm = 'vm3' LIMIT 1 OFFSET 5)")


def _ghost_vm(con: sqlite3.Connection) -> None:
    con.execute(
        "INSERT INTO events (vm, seq, inbox_pos, kind, record) VALUES ('ghost', 1, 5, 'TargetSet', ?)",
        ('{"target_pages":1,"type":"TargetSet"}',),
    )


def _extra_row(con: sqlite3.Connection) -> None:
    seq, pos = con.execute("SELECT MAX(seq), MAX(inbox_pos) FROM events WHERE vm = 'vm4'").fetchone()
    con.execute(
        "INSERT INTO events (vm, seq, inbox_pos, kind, record) VALUES ('vm4', ?, ?, 'TargetSet', ?)",
        (seq + 1, pos, '{"target_pages":1,"type":"TargetSet"}'),
    )


def _blob_as_text(con: sqlite3.Connection) -> None:
    """The same record stored as canonical text instead of its compact form: not a divergence."""
    for id_, record in con.execute("SELECT id, record FROM events WHERE vm = 'vm1' AND typeof(record) = 'blob'"):
        con.execute("UPDATE events SET record = ? WHERE id = ?", (stored_event_json(record), id_))


@pytest.mark.parametrize(
    "forge", [_forge_compact, _forge_text, _delete_row, _ghost_vm, _extra_row, _blob_as_text], ids=lambda f: f.__name__
)
def test_a_forged_log_reports_the_same(
    forge: Callable[[sqlite3.Connection], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = ScriptedLog()
    harnesses = [fleet.vm(vm) for vm in ("vm1", "vm2", "vm3", "vm4")]
    for h in harnesses:
        handshake(h)
        h.set_target_pages(h.state.current_pages - 1000)
    for tick in range(20):
        for h in harnesses:
            h.guest(StatusReport(num_avail=700_000 + tick, num_committed=300_000))
        fleet.advance_ticks(1)
    db = fleet.write(tmp_path / "forged.db")
    with sqlite3.connect(db) as con:
        forge(con)
    con.close()
    one, two = reports(db, monkeypatch)
    assert one == two
    assert one["replay_matches"] is (forge is _blob_as_text)
