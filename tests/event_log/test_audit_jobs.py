"""``hvdm audit --jobs N``: the merged report of N processes equals the single-process report,
on an honest log, a forged one, a VM selection and a window."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bench.log_size import CONFIG, inbox_row, workload
from services.audit import audit, audit_text
from services.audit.jobs import _vms_until, audit_jobs, split
from services.audit.reader import SqliteReader
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog
from tests.audit.cli import hvdm_json


@pytest.fixture(scope="module")
def mix_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobs") / "mix.db"
    log = SqliteLog(path)
    runner = EngineRunner(log, CONFIG, snapshot_every=50)
    for batch in workload("mix", 23, 120):
        log.append_inputs(inbox_row(vm, tick, record) for vm, tick, record in batch)
        runner.run_until_idle(700)
    log.close()
    return path


def both(db: Path, **kwargs: object) -> tuple[dict[str, object], dict[str, object], str, str]:
    reader = SqliteReader(db)
    try:
        single = audit(reader, **kwargs)  # type: ignore[arg-type]
        merged = audit_jobs(reader, 3, min_records=0, **kwargs)  # type: ignore[arg-type]
        return single.to_dict(), merged.to_dict(), audit_text(single), audit_text(merged)
    finally:
        reader.close()


def test_split_is_a_partition() -> None:
    vms = [f"vm{i}" for i in range(10)]
    parts = split(vms, 4)
    assert len(parts) == 4 and sorted(v for p in parts for v in p) == vms
    assert split(["a"], 4) == [["a"]]


def test_merged_report_equals_the_single_process_report(mix_db: Path) -> None:
    single, merged, single_text, merged_text = both(mix_db)
    assert single["replay_matches"] is True and len(single["vms"]) == 23  # type: ignore[arg-type]
    assert merged == single
    assert merged_text == single_text


@pytest.mark.parametrize(
    "kwargs", [{"vms": ["vm00003", "vm00010", "vm00017", "vm00020"]}, {"from_tick": 60}, {"from_pos": 1000}]
)
def test_selections_and_windows_merge_the_same(mix_db: Path, kwargs: dict[str, object]) -> None:
    single, merged, single_text, merged_text = both(mix_db, **kwargs)
    assert merged == single
    assert merged_text == single_text


def test_a_forged_log_diverges_the_same_way(mix_db: Path, tmp_path: Path) -> None:
    forged = tmp_path / "forged.db"
    with sqlite3.connect(mix_db) as src, sqlite3.connect(forged) as dst:
        src.backup(dst)
    with sqlite3.connect(forged) as con:
        for vm in ("vm00004", "vm00011"):
            nth = "SELECT id FROM events WHERE vm = ? AND kind = ? LIMIT 1 OFFSET 40"
            con.execute(
                f"UPDATE events SET record = ? WHERE id = ({nth})", (b"\x011,2,3,4,5,6,7", vm, "StatusReported")
            )
        con.execute(
            "INSERT INTO events (vm, seq, inbox_pos, kind, record) VALUES ('ghost', 1, 5, 'TargetSet', ?)",
            ('{"target_pages":1,"type":"TargetSet"}',),
        )
    single, merged, single_text, merged_text = both(forged)
    assert single["replay_matches"] is False
    assert "ghost" in single["vms"]  # type: ignore[operator]
    assert merged == single
    assert merged_text == single_text


def test_an_archived_log_is_split_too(mix_db: Path, tmp_path: Path) -> None:
    """Once history is in segments the live tables name almost no VM; the split must still see
    every VM (it used to fall back to one process), and merge to the single-process report."""
    archived = tmp_path / "archived.db"
    with sqlite3.connect(mix_db) as src, sqlite3.connect(archived) as dst:
        src.backup(dst)
    log = SqliteLog(archived)
    assert EngineRunner(log, CONFIG).archive() > 0
    log.close()
    reader = SqliteReader(archived)
    try:
        assert reader._db.execute("SELECT COUNT(DISTINCT vm) FROM events").fetchone()[0] == 0
        assert len(_vms_until(reader, reader.consumed_position())) == 23
    finally:
        reader.close()
    single, merged, single_text, merged_text = both(archived)
    assert single["replay_matches"] is True and len(single["vms"]) == 23  # type: ignore[arg-type]
    assert merged == single
    assert merged_text == single_text


def test_cli_jobs_flag(mix_db: Path) -> None:
    one = hvdm_json("audit", "--db", mix_db, "--jobs", "1")
    two = hvdm_json("audit", "--db", mix_db, "--jobs", "2")
    assert one == two and one["replay_matches"] is True
    assert json.dumps(one)
