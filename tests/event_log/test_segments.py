"""Archived history (compressed segments) reads back exactly as the live tables did: inbox, events,
recovery, audits (single and ``--jobs``); a damaged segment is a clean error; kill -9 while the
engine archives loses nothing."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.log_size import CONFIG, inbox_row, workload
from services.audit import audit, audit_text
from services.audit.jobs import audit_jobs
from services.audit.reader import SqliteReader
from services.dm_engine.records import stored_input_dict
from services.embedded.runner import EngineRunner
from services.event_log import segments
from services.event_log.segments import SegmentError, pack_events, pack_inbox, unpack_events, unpack_inbox
from services.event_log.sqlite_log import SqliteLog
from tests.audit.cli import hvdm

ROOT = Path(__file__).resolve().parents[2]


def build(path: Path, archive_every: int, vms: int = 17, ticks: int = 150) -> SqliteLog:
    log = SqliteLog(path)
    runner = EngineRunner(log, CONFIG, snapshot_every=60, archive_every=archive_every)
    for batch in workload("mix", vms, ticks):
        log.append_inputs(inbox_row(vm, tick, record) for vm, tick, record in batch)
        runner.run_until_idle(400)
    return log


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("segments")
    plain, archived = d / "plain.db", d / "archived.db"
    build(plain, 0).close()
    log = build(archived, 700)
    assert log.archived_until > 2000
    log.close()
    return plain, archived


def test_archived_history_reads_back_as_the_live_tables_did(pair: tuple[Path, Path]) -> None:
    plain, archived = (SqliteLog(p) for p in pair)
    try:
        assert archived.get_meta("log_format") == "3"
        assert [r for r in archived.iter_inbox()] == [r for r in plain.iter_inbox()]
        assert [r for r in archived.iter_events()] == [r for r in plain.iter_events()]
        for vm in ("vm00000", "vm00016"):
            assert list(archived.iter_events(vm, 5)) == list(plain.iter_events(vm, 5))
            assert archived.read_inbox(100, 50, vm) == plain.read_inbox(100, 50, vm)
        assert archived.read_inbox(0, 10) == plain.read_inbox(0, 10)
        cut = archived.archived_until
        for after in (cut - 2, cut - 1, cut, cut + 1):
            assert archived.read_inbox(after, 3) == plain.read_inbox(after, 3)
        # The engine's reader (stored forms, no dicts) sees the same rows across the cut.
        for after, limit in ((0, 10), (cut - 5, 3), (cut - 2, 7), (cut - 1, 1), (cut, 4), (cut + 1, 3)):
            stored = archived.read_inbox_stored(after, limit)
            assert stored == plain.read_inbox_stored(after, limit)
            assert [(p, v, t, stored_input_dict(r, t)) for p, v, t, r in stored] == [
                (r.pos, r.vm, r.tick, r.record) for r in plain.read_inbox(after, limit)
            ]
        assert archived.vms() == plain.vms()
        assert archived.event_count() == plain.event_count()
        assert archived.inbox_high_watermark() == plain.inbox_high_watermark()
        # A restart rebuilds the same states (from snapshots: no segment is read).
        states = {vm: s.to_snapshot() for vm, s in EngineRunner(plain, CONFIG).states.items()}
        assert {vm: s.to_snapshot() for vm, s in EngineRunner(archived, CONFIG).states.items()} == states
    finally:
        plain.close()
        archived.close()


def test_the_log_goes_on_after_archiving(tmp_path: Path) -> None:
    log = build(tmp_path / "a.db", 300, vms=5, ticks=80)
    before = log.event_count()
    runner = EngineRunner(log, CONFIG, archive_every=300)
    runner.archive()
    assert log.archived_until == log.consumed_position() == log.inbox_high_watermark()
    for batch in workload("status", 5, 3):
        log.append_inputs(inbox_row(vm, 500 + tick, record) for vm, tick, record in batch[1:] if tick)
    runner.run_until_idle()
    assert log.inbox_high_watermark() > log.archived_until  # positions did not restart
    seqs = [r.seq for r in log.iter_events("vm00001")]
    assert seqs == list(range(1, len(seqs) + 1)) and log.event_count() > before
    reader = SqliteReader(tmp_path / "a.db")
    try:
        assert audit(reader).replay_matches
    finally:
        reader.close()


def test_wall_clock_stamps_survive_archiving(pair: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with sqlite3.connect(pair[0]) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    log = SqliteLog(copy)
    assert EngineRunner(log, CONFIG).archive() > 0
    log.close()
    live, archived = SqliteReader(pair[0]), SqliteReader(copy)
    try:
        span = live.wall_span()
        assert span is not None and archived.wall_span() == span
        assert archived.wall_of_ticks() == live.wall_of_ticks()
        middle = (span[0] + span[1]) / 2
        for pos in (1, 500, 2000, 2761):
            assert archived.wall_of(pos) == live.wall_of(pos)
            assert archived.wall_after(pos) == live.wall_after(pos)
        for inclusive in (True, False):
            assert archived.last_pos_before_wall(middle, inclusive) == live.last_pos_before_wall(middle, inclusive)
    finally:
        live.close()
        archived.close()


def test_audits_of_an_archived_log_equal_those_of_the_live_one(pair: tuple[Path, Path]) -> None:
    docs = []
    for path in pair:
        reader = SqliteReader(path)
        try:
            single = audit(reader, from_tick=40)
            merged = audit_jobs(reader, 2, from_tick=40, min_records=0)
            assert merged.to_dict() == single.to_dict() and audit_text(merged) == audit_text(single)
            doc = single.to_dict()
            doc.pop("db")
            docs.append(doc)
        finally:
            reader.close()
    assert docs[0] == docs[1] and docs[0]["replay_matches"] is True


def test_archiving_makes_the_log_much_smaller(pair: tuple[Path, Path], tmp_path: Path) -> None:
    sizes = []
    for path in pair:
        copy = tmp_path / path.name
        with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        if path == pair[1]:
            log = SqliteLog(copy)
            assert EngineRunner(log, CONFIG).archive() > 0  # the live tail too
            log.close()
        con = sqlite3.connect(copy)
        con.execute("VACUUM")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        sizes.append(copy.stat().st_size)
    assert sizes[1] * 3 < sizes[0]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**62),
            st.text(max_size=8),
            st.integers(-(2**63), 2**63),
            st.text(max_size=5),
            st.one_of(st.text(max_size=20), st.binary(max_size=20)),
            st.one_of(st.none(), st.floats(0, 4e9)),
        ),
        max_size=20,
    )
)
def test_packing_round_trips(rows: list[tuple[int, str, int, str, str | bytes, float | None]]) -> None:
    assert unpack_inbox(pack_inbox(rows)) == rows
    events = [(i, vm, t, p, k, r) for i, (p, vm, t, k, r, _w) in enumerate(rows)]
    assert unpack_events(pack_events(events)) == events


ONE_ROW = {"format": 1, "pos": [1], "vm": ["a"], "tick": [1], "kind": ["k"], "text": ["{}"], "blob": [None]}


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not zlib",
        zlib.compress(b"[1,2]"),
        zlib.compress(orjson.dumps({"format": 99})),
        zlib.compress(orjson.dumps({"format": 1, "pos": [1], "vm": ["a"], "tick": [1], "kind": ["k"]})),
        zlib.compress(
            orjson.dumps(
                {"format": 1, "pos": ["x"], "vm": ["a"], "tick": [1], "kind": ["k"], "text": ["{}"], "blob": [None]}
            )
        ),
        zlib.compress(
            orjson.dumps(
                {"format": 1, "pos": [1], "vm": ["a"], "tick": [1], "kind": ["k"], "text": [None], "blob": ["zz"]}
            )
        ),
    ],
)
def test_a_damaged_segment_is_a_database_error(blob: bytes) -> None:
    with pytest.raises(SegmentError):
        unpack_inbox(blob)
    assert issubclass(SegmentError, sqlite3.DatabaseError)


def test_audit_of_a_damaged_segment_fails_cleanly(pair: tuple[Path, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.db"
    with sqlite3.connect(pair[1]) as src, sqlite3.connect(damaged) as dst:
        src.backup(dst)
    with sqlite3.connect(damaged) as con:
        con.execute("UPDATE segments SET inbox = ? WHERE first_pos = 1", (b"garbage",))
    result = hvdm("audit", "--db", damaged, "--jobs", "1")
    assert result.returncode == 1
    assert "segment does not unpack" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_kill_dash_nine_while_archiving(pair: tuple[Path, Path], tmp_path: Path) -> None:
    plain = SqliteLog(pair[0])
    db = tmp_path / "crashed.db"
    crashed = SqliteLog(db)
    crashed.set_meta("engine_config", plain.get_meta("engine_config") or "")
    crashed.append_inputs((r.vm, r.tick, r.record, None) for r in plain.iter_inbox())
    total = crashed.inbox_high_watermark()
    crashed.close()
    cmd = [sys.executable, "-m", "services", "engine", "--db", str(db), "--exit-when-idle"]
    cmd += ["--batch", "7", "--snapshot-every", "40", "--archive-every", "150"]
    watcher = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rng = random.Random(14)
    kills = 0
    for _ in range(200):
        row = watcher.execute("SELECT pos FROM positions WHERE name = 'engine'").fetchone()
        before = 0 if row is None else int(row[0])
        target = before + rng.randint(1, max(1, (total - before) // 4))
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None:
            row = watcher.execute("SELECT pos FROM positions WHERE name = 'engine'").fetchone()
            if row is not None and int(row[0]) >= target:
                break
            time.sleep(0.0005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""
        break
    watcher.close()
    assert kills >= 3
    log = SqliteLog(db)
    try:
        assert log.archived_until > 0 and segments.archived_until(log._db) == log.archived_until
        assert list(log.iter_events()) == list(plain.iter_events())
        states = {vm: s.to_snapshot() for vm, s in EngineRunner(plain, CONFIG).states.items()}
        assert {vm: s.to_snapshot() for vm, s in EngineRunner(log, CONFIG).states.items()} == states
    finally:
        log.close()
        plain.close()
