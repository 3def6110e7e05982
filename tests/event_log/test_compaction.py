"""``hvdm compact``: history before a cut becomes snapshots plus summaries the audit still reports.

Through the real CLI (subprocesses) and the API: the file shrinks, the audit on the compacted log
replays byte for byte from the cut and reports summaries equal to what the whole history says,
``replay --until`` before the cut is a clear error, the refusals (service running, unconsumed
inputs), compacting twice, the service going on (``hvdm run``) on a compacted log, and ``kill -9``
at every stage of a compaction leaving the old log or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.log_size import CONFIG, inbox_row, workload
from services.audit import audit, audit_text, state_at
from services.audit.html import audit_html
from services.audit.jobs import audit_jobs
from services.audit.reader import SqliteReader
from services.audit.wall_clock import iso
from services.dm_engine.records import event_from_dict, loads
from services.embedded.runner import EngineRunner
from services.event_log import sqlite_log
from services.event_log.compaction import CompactionError, compact, file_bytes
from services.event_log.sqlite_log import SqliteLog
from services.event_log.summaries import HistorySummary
from services.event_log.writer_lock import WriterLock
from tests.audit.cli import REPO, hvdm, hvdm_json
from tests.faults.disk import small_tmpfs

HOUR = 3600.0
#: The fake clock's start: the log's first record is this many hours old.
HOURS = 300


class FakeClock:
    """``time`` for ``sqlite_log``: each workload batch is stamped one hour after the previous."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()


def build(
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    vms: int = 12,
    ticks: int = HOURS,
    archive_every: int = 0,
    start: float | None = None,
) -> float:
    """A ``mix`` log (status every tick, balloon rounds, violations) whose batch ``t`` was appended
    ``ticks - t`` hours ago (or hours after ``start``); returns the wall time of its first batch."""
    clock = FakeClock(time.time() - (ticks + 1) * HOUR if start is None else start)
    start = clock.now
    with monkeypatch.context() as m:
        m.setattr(sqlite_log, "time", clock)
        log = SqliteLog(path)
        runner = EngineRunner(log, CONFIG, snapshot_every=50, archive_every=archive_every)
        for batch in workload("mix", vms, ticks):
            log.append_inputs(inbox_row(vm, tick, record) for vm, tick, record in batch)
            runner.run_until_idle(500)
            clock.now += HOUR
        log.close()
    return start


def full_summaries(path: Path) -> dict[str, dict[str, Any]]:
    """Every VM's summary of its whole history, folded in one go from an uncompacted log."""
    reader = SqliteReader(path)
    ticks = {row.pos: row.tick for row in reader.iter_inbox()}
    out: dict[str, HistorySummary] = {}
    for row in reader.iter_events():
        out.setdefault(row.vm, HistorySummary(row.vm)).apply(
            event_from_dict(loads(row.record)), row.inbox_pos, ticks[row.inbox_pos]
        )
    docs = {vm: s.resolve_walls(reader.wall_of).to_dict(CONFIG.tick_seconds) for vm, s in out.items()}
    reader.close()
    return docs


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compaction") / "original.db"
    with pytest.MonkeyPatch.context() as m:
        build(path, m)
    return path


def copy(original: Path, tmp_path: Path, name: str = "log.db") -> Path:
    target = tmp_path / name
    shutil.copy(original, target)
    return target


def test_compact_shrinks_the_log_and_the_audit_reports_the_dropped_history(original: Path, tmp_path: Path) -> None:
    db = copy(original, tmp_path)
    before = hvdm_json("audit", "--db", db)
    whole = full_summaries(db)
    size_before = file_bytes(db)

    doc = hvdm_json("compact", "--db", db, "--older-than-days", "5")
    cut = doc["cut"]
    assert doc["compacted"] and doc["vms"] == 12
    # Batches are an hour apart: the last one older than 5 days is batch ~180 of 300.
    assert 0.5 < cut["position"] / before["consumed_position"] < 0.7
    assert cut["inbox_rows_removed"] > 0.5 * before["inbox_records"] and cut["event_rows_removed"] > 0
    assert cut["version"] and cut["compacted_at"] > cut["wall"]
    assert doc["bytes_after"] == file_bytes(db) < 0.6 * size_before

    after = hvdm_json("audit", "--db", db)
    assert after["replay_matches"] is True and after["unconsumed_inputs"] == 0
    assert after["compaction"]["cut"]["position"] == cut["position"]
    assert after["inbox_records"] == before["inbox_records"] - cut["position"]
    assert set(after["vms"]) == set(before["vms"])
    for vm, v in after["vms"].items():
        history = v["history"]
        total = {k: history["total"][k] for k in whole[vm]}
        assert total == whole[vm]  # the merge of stored and folded = one fold of everything
        # ... and that is what the audit of the whole log reported.
        full = before["vms"][vm]
        assert {r: c["count"] for r, c in total["violations"].items()} == full["violations"]
        assert total["status_reports"]["count"] == full["behaviour"]["status_reports"]["count"]
        moved = full["behaviour"]["throughput"].get("balloon", {}).get("pages", 0)
        assert total["throughput"]["balloon"]["pages"] == moved
        assert history["compacted"]["last_pos"] <= cut["position"] < history["after_cut"]["first_pos"]
        # Accounting at the end is untouched.
        for key in ("current_bytes", "ballooned_bytes", "hot_added_bytes", "target_bytes", "protocol_state"):
            assert v[key] == full[key]
    assert any(whole[vm]["violations"] for vm in whole)

    text = hvdm("audit", "--db", db)
    assert text.returncode == 0, text.stderr
    assert f"compacted      history up to inbox position {cut['position']:,}" in text.stdout
    assert "history summaries" in text.stdout
    html = tmp_path / "report.html"
    assert hvdm("audit", "--db", db, "--html", html).returncode == 0
    page = html.read_text()
    assert "Compacted history" in page and str(iso(cut["wall"])) in page


def test_audit_in_jobs_and_for_some_vms_on_a_compacted_log(original: Path, tmp_path: Path) -> None:
    db = copy(original, tmp_path)
    compact(db, time.time() - 4 * 86_400)
    reader = SqliteReader(db)
    one = audit(reader)
    jobs = audit_jobs(reader, 3, min_records=0)
    assert one.replay_matches and jobs.replay_matches
    assert jobs.to_dict() == one.to_dict()
    some = audit(reader, vms=["vm00003"])
    assert some.replay_matches and some.to_dict()["vms"]["vm00003"] == one.to_dict()["vms"]["vm00003"]
    assert "compacted" in audit_text(one) and "Compacted history" in audit_html(one, reader)
    reader.close()


def test_replay_until_before_the_cut_is_a_clear_error(original: Path, tmp_path: Path) -> None:
    db = copy(original, tmp_path)
    reference = SqliteReader(original)
    cut = hvdm_json("compact", "--db", db, "--older-than-days", "5")["cut"]
    for until in ("5", str(cut["position"] - 1), iso(cut["wall"] - 3 * HOUR) or ""):
        result = hvdm("replay", "--db", db, "--vm", "vm00001", "--until", until)
        assert result.returncode == 1 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and "before the compaction cut" in result.stderr, result.stderr
    tick = hvdm("replay", "--db", db, "--vm", "vm00001", "--until-tick", "3")
    assert tick.returncode == 1 and "before the compaction cut" in tick.stderr
    # At and after the cut, the state is the one the whole log gives.
    for until in (cut["position"], cut["position"] + 200):
        point = hvdm_json("replay", "--db", db, "--vm", "vm00001", "--until", str(until))
        expected = state_at(reference, "vm00001", until_pos=until)
        assert point["state"] == expected.state.to_snapshot() and point["last_seq"] == expected.last_seq
        inbox = hvdm_json("replay", "--db", db, "--vm", "vm00001", "--until", str(until), "--from-inbox")
        assert inbox["state"] == expected.state.to_snapshot()
    reference.close()


def test_dry_run_changes_nothing(original: Path, tmp_path: Path) -> None:
    db = copy(original, tmp_path)
    content = db.read_bytes()
    doc = hvdm_json("compact", "--db", db, "--older-than-days", "5", "--dry-run")
    assert doc["dry_run"] and not doc["compacted"] and doc["cut"]["position"] > 0 and doc["bytes_after"] is None
    assert db.read_bytes() == content
    assert len(doc["summaries"]) == 12
    nothing = hvdm_json("compact", "--db", db, "--older-than-days", "365")
    assert nothing["cut"] is None and not nothing["compacted"]
    assert db.read_bytes() == content


def test_refused_while_a_service_holds_the_log(original: Path, tmp_path: Path) -> None:
    db = copy(original, tmp_path)
    content = db.read_bytes()
    with WriterLock.acquire(db):
        result = hvdm("compact", "--db", db, "--older-than-days", "5")
    assert result.returncode == 1 and result.stdout == ""
    assert f"in use by pid {os.getpid()}" in result.stderr and "stop the service" in result.stderr
    assert db.read_bytes() == content
    assert hvdm("compact", "--db", db, "--older-than-days", "5").returncode == 0


def test_refused_with_unconsumed_inputs_before_the_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "behind.db"
    clock = FakeClock(time.time() - 10 * 86_400)
    monkeypatch.setattr(sqlite_log, "time", clock)
    log = SqliteLog(db)
    runner = EngineRunner(log, CONFIG)
    batches = list(workload("status", 3, 40))
    for i, batch in enumerate(batches):
        log.append_inputs(inbox_row(vm, tick, record) for vm, tick, record in batch)
        if i < 20:
            runner.run_until_idle()
    consumed = log.consumed_position()
    log.close()
    monkeypatch.undo()
    content = db.read_bytes()
    result = hvdm("compact", "--db", db, "--older-than-days", "1")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert f"consumed only up to {consumed}" in result.stderr and "unconsumed before the cut" in result.stderr
    assert db.read_bytes() == content
    with pytest.raises(CompactionError, match="unconsumed"):
        compact(db, time.time(), dry_run=True)


def test_not_a_log_and_bad_flags_are_one_line(tmp_path: Path) -> None:
    missing = hvdm("compact", "--db", tmp_path / "none.db", "--older-than-days", "1")
    assert missing.returncode == 1 and "no log there" in missing.stderr
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.commit()
    foreign = hvdm("compact", "--db", other, "--older-than-days", "1")
    assert foreign.returncode == 1 and "not an hvdm log" in foreign.stderr
    for flags in (["--older-than-days", "-1"], ["--before", "yesterday"], []):
        bad = hvdm("compact", "--db", other, *flags)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr


def test_compacting_twice_merges_the_summaries(original: Path, tmp_path: Path) -> None:
    once, twice = copy(original, tmp_path, "once.db"), copy(original, tmp_path, "twice.db")
    whole = full_summaries(original)
    now = time.time()
    hvdm_json("compact", "--db", twice, "--before", iso(now - 9 * 86_400) or "")
    first = hvdm_json("audit", "--db", twice)
    assert first["replay_matches"]
    second = hvdm_json("compact", "--db", twice, "--before", iso(now - 3 * 86_400) or "")
    assert second["previous_cut_position"] == first["compaction"]["cut"]["position"] < second["cut"]["position"]
    hvdm_json("compact", "--db", once, "--before", iso(now - 3 * 86_400) or "")
    a, b = hvdm_json("audit", "--db", once), hvdm_json("audit", "--db", twice)
    assert a["replay_matches"] and b["replay_matches"]
    assert [c["position"] for c in b["compaction"]["cuts"]] == [
        first["compaction"]["cut"]["position"],
        a["compaction"]["cut"]["position"],
    ]
    for vm in whole:
        assert a["vms"][vm]["history"] == b["vms"][vm]["history"]
        assert {k: b["vms"][vm]["history"]["total"][k] for k in whole[vm]} == whole[vm]
    again = hvdm_json("compact", "--db", twice, "--before", iso(now - 3 * 86_400) or "")
    assert again["cut"] is None  # nothing older than the limit beyond the cut


def test_compacting_archived_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain, archived = tmp_path / "plain.db", tmp_path / "archived.db"
    start = build(plain, monkeypatch, vms=6, ticks=120)
    build(archived, monkeypatch, vms=6, ticks=120, archive_every=250, start=start)
    limit = time.time() - 50 * HOUR
    results = [compact(p, limit) for p in (plain, archived)]
    assert results[1].segments_removed > 0 and results[1].segments_split == 1
    assert results[0].cut is not None and results[1].cut is not None
    assert results[0].cut.pos == results[1].cut.pos
    reports = [audit(SqliteReader(p)).to_dict() for p in (plain, archived)]
    assert reports[0]["replay_matches"] and reports[1]["replay_matches"]
    for key in ("vms", "events", "inbox_records", "decided_events"):
        assert reports[0][key] == reports[1][key]


def test_the_service_goes_on_on_a_compacted_log(tmp_path: Path) -> None:
    db, sock = tmp_path / "run.db", tmp_path / "run.sock"
    run: list[str | Path] = ["run", "--db", db, "--socket", sock, "--qmp-dir", "", "--progress-interval", "0", "--json"]
    first = hvdm(*run, "--guests", "3", "--scenario", "demo", "--duration", "20")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["scenario_completed"]
    cut = hvdm_json("compact", "--db", db, "--older-than-days", "0")["cut"]
    assert cut["position"] > 100
    # Recovery from the cut's snapshots alone; the guests come back and the story goes on.
    second = hvdm(*run, "--guests", "3", "--duration", "3", "--speed", "20")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout.splitlines()[-1])
    assert summary["vms"]["vm1"]["boot_bytes"] == 4 << 30
    report = hvdm_json("audit", "--db", db)
    assert report["replay_matches"] and report["consumed_position"] > cut["position"] + 10
    assert all(v["history"]["after_cut"]["events"] > 0 for v in report["vms"].values())
    assert all(v["history"]["compacted"]["events"] > 0 for v in report["vms"].values())


STAGES = ("fold", "write", "delete", "commit", "vacuum", "done")


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_during_compaction_leaves_the_old_log_or_the_new(
    stage: str, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    big = tmp_path_factory.getbasetemp() / "big.db"
    if not big.exists():
        with pytest.MonkeyPatch.context() as m:
            build(big, m, vms=60, ticks=HOURS)
    db = copy(big, tmp_path)
    old_events = SqliteLog(db).event_count()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services", "compact", "--db", str(db), "--older-than-days", "5", "--progress"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.strip() == f"compact: {stage}":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    reader = SqliteReader(db)
    base = reader.compaction_base()
    report = audit(reader)
    assert report.replay_matches and not report.consumed_behind_inbox
    if base is None:  # the old log, whole
        assert stage in ("fold", "write", "delete", "commit")
        assert report.events == old_events
    else:  # the new one, whole
        assert stage not in ("fold", "write")  # nothing is committed before the deletes
        assert report.events == old_events - base.cut.event_rows
        assert all(v.history is not None for v in report.vms.values())
    reader.close()
    # Either way the service recovers from it and a later compaction completes.
    log = SqliteLog(db)
    assert EngineRunner(log, CONFIG).states
    log.close()
    assert compact(db, time.time() - 5 * 86_400).cut is not None or base is not None


# ---------------------------------------------------------------------- the summary monoid
def _events(original: Path, vm: str) -> list[tuple[Any, int, int]]:
    reader = SqliteReader(original)
    ticks = {row.pos: row.tick for row in reader.iter_inbox()}
    out = [(event_from_dict(loads(r.record)), r.inbox_pos, ticks[r.inbox_pos]) for r in reader.iter_events(vm)]
    reader.close()
    return out


@pytest.fixture(scope="module")
def stories(original: Path) -> dict[str, list[tuple[Any, int, int]]]:
    return {vm: _events(original, vm) for vm in ("vm00000", "vm00003", "vm00010")}


def _fold(vm: str, events: list[tuple[Any, int, int]]) -> HistorySummary:
    s = HistorySummary(vm)
    for event, pos, tick in events:
        s.apply(event, pos, tick)
    return s


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_summary_of_summaries_is_the_summary_of_everything(
    stories: dict[str, list[tuple[Any, int, int]]], data: st.DataObject
) -> None:
    vm = data.draw(st.sampled_from(sorted(stories)))
    events = stories[vm]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    pieces = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    merged = HistorySummary(vm)
    for piece in pieces:
        merged = merged.merged(_fold(vm, piece))
    assert merged.to_dict() == _fold(vm, events).to_dict()
    assert HistorySummary.from_dict(merged.to_dict()).to_dict() == merged.to_dict()


def test_a_damaged_summary_is_a_clean_error(original: Path, tmp_path: Path) -> None:
    db = copy(original, tmp_path)
    compact(db, time.time() - 5 * 86_400)
    con = sqlite3.connect(db)
    con.execute("UPDATE compacted SET summary = '{\"format\": 1, \"vm\": 3}' WHERE vm = 'vm00002'")
    con.commit()
    con.close()
    result = hvdm("audit", "--db", db)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert "vm00002" in result.stderr and "does not read" in result.stderr
    con = sqlite3.connect(db)
    con.execute("DELETE FROM compacted WHERE vm = 'vm00002'")
    con.execute("UPDATE compactions SET cut_tick = 'soon'")
    con.commit()
    con.close()
    commands: list[list[str | Path]] = [["audit", "--db", db], ["compact", "--db", db, "--older-than-days", "1"]]
    for command in commands:
        result = hvdm(*command)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "compactions row" in result.stderr and "does not read" in result.stderr


def test_a_full_disk_at_any_point_leaves_the_old_log_or_the_new(original: Path, tmp_path: Path) -> None:
    """On a real tmpfs with little room: the transaction fails (old log) or commits; VACUUM, which
    needs room for a copy of the log in the WAL, may then fail without undoing the compaction."""
    old_events = SqliteLog(copy(original, tmp_path, "probe.db")).event_count()
    size = file_bytes(original)
    outcomes = set()
    with small_tmpfs(tmp_path / "small", "8m") as small:
        for free in (size // 8, size * 3 // 4, size * 9 // 10, size, size * 5 // 4, size * 3):
            for leftover in small.iterdir():
                leftover.unlink()
            db = copy(original, small)
            filler = small / "filler"
            available = shutil.disk_usage(small).free
            with filler.open("wb") as f:
                f.truncate(0)
                os.posix_fallocate(f.fileno(), 0, max(0, available - free))
            result = hvdm("compact", "--db", db, "--older-than-days", "5", "--json")
            filler.unlink()
            reader = SqliteReader(db)
            base = reader.compaction_base()
            report = audit(reader)
            reader.close()
            assert report.replay_matches
            if base is None:
                assert result.returncode == 1 and "full" in result.stderr and report.events == old_events
                outcomes.add("old")
            else:
                assert result.returncode == 0, result.stderr
                doc = json.loads(result.stdout)
                assert doc["compacted"] and report.events == old_events - base.cut.event_rows
                outcomes.add("new, not vacuumed" if doc["vacuum_error"] else "new")
    assert "new" in outcomes  # with room enough, it all goes through
