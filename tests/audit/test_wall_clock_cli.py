"""Wall-clock stamps on inbox records: audits and replays cut at an ISO 8601 time and show times.

The log stamps each record with the Unix time of its append; the test rewrites those stamps to known
values (one minute per tick from 2026-12-05T14:00:00Z), as if the records had been appended then,
so the cuts are exact. The stamps must never change what the engine decides: the audit still
replays byte for byte.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from services.event_log.sqlite_log import SqliteLog
from tests.audit.cli import hvdm, hvdm_json
from tests.audit.scripted_log import ScriptedLog, honest

START = dt.datetime(2026, 12, 5, 14, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture
def stamped_db(tmp_path: Path) -> Path:
    fleet = ScriptedLog()
    honest(fleet)
    db = fleet.write(tmp_path / "honest.db", restart_every=2)
    with sqlite3.connect(db) as con:
        stamps = con.execute("SELECT COUNT(*) FROM inbox WHERE wall IS NOT NULL").fetchone()[0]
        assert stamps == con.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]  # every append is stamped
        con.execute("UPDATE inbox SET wall = ? + tick * 60.0", (START,))
    return db


def at(minutes: float) -> str:
    return dt.datetime.fromtimestamp(START + minutes * 60, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def positions_up_to_tick(db: Path, tick: int) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute("SELECT COALESCE(MAX(pos), 0) FROM inbox WHERE tick <= ?", (tick,)).fetchone()[0])


def test_replay_until_a_time_is_replay_until_the_last_record_before_it(stamped_db: Path) -> None:
    with sqlite3.connect(stamped_db) as con:
        last_tick = con.execute("SELECT MAX(tick) FROM inbox").fetchone()[0]
    tick = last_tick // 2
    by_time = hvdm_json("replay", "--db", stamped_db, "--vm", "vm1", "--until", at(tick + 0.5))
    by_pos = hvdm_json(
        "replay", "--db", stamped_db, "--vm", "vm1", "--until", str(positions_up_to_tick(stamped_db, tick))
    )
    assert by_time["until_pos"] == by_pos["until_pos"] == positions_up_to_tick(stamped_db, tick)
    assert by_time["accounting"] == by_pos["accounting"]
    assert by_time["wall_time"] == at(tick).replace("Z", ".000Z")
    # An offset is honoured: 15:xx+01:00 is 14:xx UTC.
    local = dt.datetime.fromtimestamp(START + (tick + 0.5) * 60, tz=dt.timezone(dt.timedelta(hours=1))).isoformat()
    assert hvdm_json("replay", "--db", stamped_db, "--vm", "vm1", "--until", local)["until_pos"] == by_pos["until_pos"]
    text = hvdm("replay", "--db", stamped_db, "--vm", "vm1", "--until", at(tick + 0.5))
    assert text.returncode == 0 and f"appended at {at(tick).replace('Z', '.000Z')}" in text.stdout


def test_audit_from_a_time_judges_the_records_appended_since(stamped_db: Path) -> None:
    with sqlite3.connect(stamped_db) as con:
        ticks = [t for (t,) in con.execute("SELECT DISTINCT tick FROM inbox ORDER BY tick")]
    mid = ticks[len(ticks) // 2]
    doc = hvdm_json("audit", "--db", stamped_db, "--from", at(mid))
    assert doc["replay_matches"] is True  # the stamps never reach the engine
    assert 0 < doc["from_position"] == positions_up_to_tick(stamped_db, mid - 1) < doc["inbox_high_watermark"]
    assert doc["wall_clock"]["first"] == at(ticks[0]).replace("Z", ".000Z")
    assert doc["wall_clock"]["from"] == at(mid).replace("Z", ".000Z")
    same = hvdm_json("audit", "--db", stamped_db, "--from", str(positions_up_to_tick(stamped_db, mid - 1)))
    assert same["vms"] == doc["vms"]
    text = hvdm("audit", "--db", stamped_db, "--from", at(mid))
    assert f"wall clock     records appended from {at(ticks[0]).replace('Z', '.000Z')}" in text.stdout


def test_bad_times_and_unstamped_logs_are_one_line(stamped_db: Path, tmp_path: Path) -> None:
    bad = hvdm("replay", "--db", stamped_db, "--vm", "vm1", "--until", "half past two")
    assert bad.returncode == 2 and bad.stderr.startswith("hvdm: error: replay: argument --until: ")
    assert len(bad.stderr.splitlines()) == 1
    early = hvdm("replay", "--db", stamped_db, "--vm", "vm1", "--until", "2000-01-01T00:00:00Z")
    assert early.returncode == 1 and "no inbox record is stamped that early" in early.stderr
    with sqlite3.connect(stamped_db) as con:
        con.execute("UPDATE inbox SET wall = NULL")  # a log written before the stamps existed
    old = hvdm("audit", "--db", stamped_db, "--from", at(1))
    assert old.returncode == 1 and "records no wall-clock time" in old.stderr and len(old.stderr.splitlines()) == 1
    assert hvdm_json("audit", "--db", stamped_db)["wall_clock"] is None


def test_an_old_log_gains_the_column_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE inbox (pos INTEGER PRIMARY KEY, vm TEXT NOT NULL, tick INTEGER NOT NULL, "
                    "kind TEXT NOT NULL, record TEXT NOT NULL, decoded TEXT)")  # fmt: skip
        # The rest of an old log's tables (a file with only some of them is not taken for a log).
        con.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE events (id INTEGER PRIMARY KEY, vm TEXT NOT NULL, seq INTEGER NOT NULL,"
            " inbox_pos INTEGER NOT NULL, record TEXT NOT NULL, UNIQUE (vm, seq));"
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY, vm TEXT NOT NULL, seq INTEGER NOT NULL,"
            " event_seq INTEGER NOT NULL, message BLOB NOT NULL, UNIQUE (vm, seq));"
            "CREATE TABLE positions (name TEXT PRIMARY KEY, pos INTEGER NOT NULL);"
        )
    log = SqliteLog(db)
    log.close()
    with sqlite3.connect(db) as con:
        assert "wall" in {r[1] for r in con.execute("PRAGMA table_info(inbox)")}


def test_html_report_has_every_table_navigation_and_time_axis_charts(stamped_db: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    out = hvdm("audit", "--db", stamped_db, "--html", page)
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    assert "<script" not in html and "http" not in html  # self-contained
    assert html.count("data:image/png;base64,") == len(hvdm_json("audit", "--db", stamped_db)["vms"])
    for heading in ("Accounting (bytes)", "Balloon transactions", "Response latencies", "Status reports",
                    "Protocol over time", "TIME (UTC)"):  # fmt: skip
        assert heading in html, heading
    assert 'href="#vm-vm1"' in html and 'id="vm-vm1"' in html and 'href="#top"' in html
    assert "records stamped from 2026-12-05T14:" in html
