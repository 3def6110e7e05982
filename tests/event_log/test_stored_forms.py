"""Log format 2: compact rows read back as exactly the canonical JSON they stand for, old JSON
rows still read, a damaged compact row is reported rather than crashing, and the log got smaller."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench.log_size import CONFIG, measure
from services.audit.reader import SqliteReader
from services.audit.report import audit
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.inputs import ALL_VMS
from services.dm_engine.records import (
    COMPACT_LAYOUTS,
    LOG_FORMAT,
    compact_event,
    event_json,
    stored_event_json,
    stored_input,
    stored_input_dict,
    to_dict,
)
from services.dm_engine.step import Unreadable, read_input, read_stored
from services.dm_protocol import CapabilitiesReport, StatusReport, VersionRequest, encode
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


@given(st.tuples(*([INT64] * 7)))
def test_a_compact_status_event_reads_back_as_its_canonical_json(values: tuple[int, ...]) -> None:
    names: tuple[str, ...] = ("tick", "available_pages", "committed_pages", "page_file_size_pages")
    names += ("zero_free_pages", "page_file_writes", "io_diff")
    event = ev.StatusReported(**dict(zip(names, values, strict=True)))
    blob = compact_event(event)
    assert blob is not None and len(blob) < len(event_json(event))
    assert stored_event_json(blob) == event_json(event)


def test_compact_layouts_match_the_event_classes() -> None:
    """A compacted class changed its fields: give it a new code in ``COMPACT_LAYOUTS`` (keep the old
    one, old logs hold it), or it silently goes back to JSON and the log grows sevenfold."""
    for kind, names in COMPACT_LAYOUTS.values():
        cls = ev.EVENT_TYPES[kind]
        assert tuple(sorted(f.name for f in fields(cls))) == names or any(
            k == kind and tuple(sorted(f.name for f in fields(cls))) == n for k, n in COMPACT_LAYOUTS.values()
        )
    assert compact_event(_status(1, 2, 3, 4, 5, 6, 7)) is not None


def _status(*values: int) -> ev.StatusReported:
    names: tuple[str, ...] = ("tick", "available_pages", "committed_pages", "page_file_size_pages")
    names += ("zero_free_pages", "page_file_writes", "io_diff")
    return ev.StatusReported(**dict(zip(names, values, strict=True)))


def test_only_listed_all_integer_events_are_compacted() -> None:
    assert compact_event(ev.TargetSet(target_pages=4096)) is None
    odd = ev.StatusReported(
        tick=1,
        available_pages=True,
        committed_pages=3,
        page_file_size_pages=4,
        zero_free_pages=5,
        page_file_writes=6,
        io_diff=7,
    )
    assert compact_event(odd) is None  # a bool where an int is declared keeps its JSON


@given(st.binary(max_size=40))
def test_a_damaged_compact_row_is_not_json_and_never_raises(body: bytes) -> None:
    blob = b"\x01" + body
    text = stored_event_json(blob)
    if not text.startswith("!invalid"):
        # Only a well-formed body of seven integers is expanded, into valid canonical JSON.
        assert json.loads(text)["type"] == "StatusReported"
    assert stored_event_json(b"\xff1,2").startswith("!invalid")
    assert stored_event_json(b"").startswith("!invalid")


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=2**40))
def test_a_guest_message_is_stored_as_its_raw_bytes(raw: bytes, tick: int) -> None:
    record = to_dict(inp.GuestMessage(tick=tick, raw=raw))
    stored = stored_input(record, tick)
    assert stored == raw
    assert stored_input_dict(stored, tick) == json.loads(json.dumps(record, sort_keys=True))


def _read_same(stored: str | bytes, tick: int) -> None:
    fast = read_stored(stored, tick)
    slow = read_input(stored_input_dict(stored, tick))
    if isinstance(slow, Unreadable):
        assert isinstance(fast, Unreadable)
        assert (fast.input_type, fast.tick, type(fast.error), str(fast.error)) == (
            slow.input_type,
            slow.tick,
            type(slow.error),
            str(slow.error),
        )
    else:
        assert fast == slow


@given(st.binary(max_size=64), INT64)
def test_the_runner_reads_a_stored_guest_message_as_a_reader_does(raw: bytes, tick: int) -> None:
    """``step.read_stored`` (the runner's path, no dict, no hex) gives what ``read_input`` gives
    on the reader's dict, for every tick a row may hold (beyond 64 bits signed: unreadable)."""
    _read_same(raw, tick)


@given(
    st.one_of(
        st.builds(lambda t, b: to_dict(inp.SetTarget(tick=t, target_bytes=b)), INT64, INT64),
        st.builds(lambda t: to_dict(inp.Tick(tick=t)), INT64),
        st.dictionaries(st.sampled_from(["type", "tick", "raw", "x"]), st.one_of(st.integers(), st.text())),
    ),
    INT64,
)
def test_the_runner_reads_a_stored_json_input_as_a_reader_does(record: dict[str, object], tick: int) -> None:
    _read_same(json.dumps(record, sort_keys=True, separators=(",", ":")), tick)


def test_records_that_would_not_round_trip_stay_json() -> None:
    upper = {"raw": "AB", "tick": 1, "type": "GuestMessage"}
    assert stored_input(upper, 1) == '{"raw":"AB","tick":1,"type":"GuestMessage"}'
    assert isinstance(stored_input({"raw": "ab", "tick": 2, "type": "GuestMessage"}, 1), str)  # other tick
    assert isinstance(stored_input({"raw": "zz", "tick": 1, "type": "GuestMessage"}, 1), str)  # not hex
    assert isinstance(stored_input({"raw": "ab", "tick": 1, "type": "GuestMessage", "x": 1}, 1), str)
    assert isinstance(stored_input(to_dict(inp.Tick(tick=1)), 1), str)


def _status_log(path: Path, old_rows: bool) -> None:
    """A log whose first half was written as format 1 (JSON rows, as older versions did)."""
    log = SqliteLog(path)
    runner = EngineRunner(log, CONFIG)
    rows: list[tuple[str, int, dict[str, object], None]] = []
    for vm in ("a", "b"):
        rows.append((vm, 0, to_dict(inp.ChannelOpened(tick=0, boot_bytes=4 << 30, maxmem_bytes=8 << 30)), None))
        rows.append(
            (vm, 0, to_dict(inp.GuestMessage(tick=0, raw=encode(VersionRequest(trans_id=1, version=0x20000)))), None)
        )
        caps = CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7)
        rows.append((vm, 0, to_dict(inp.GuestMessage(tick=0, raw=encode(caps))), None))
    log.append_inputs(rows)
    runner.run_until_idle()
    for tick in range(1, 21):
        batch: list[tuple[str, int, dict[str, object], None]] = [(ALL_VMS, tick, to_dict(inp.Tick(tick=tick)), None)]
        for v, vm in enumerate(("a", "b")):
            raw = encode(StatusReport(trans_id=3 + tick, num_avail=1000 * v + tick, num_committed=500 + tick))
            batch.append((vm, tick, to_dict(inp.GuestMessage(tick=tick, raw=raw)), None))
        log.append_inputs(batch)
        runner.run_until_idle()
        if old_rows and tick == 10:
            # Rewrite everything so far the way format 1 stored it.
            db = log._db
            for pos, tk, rec in db.execute("SELECT pos, tick, record FROM inbox").fetchall():
                db.execute("UPDATE inbox SET record = ? WHERE pos = ?", (json.dumps(stored_input_dict(rec, tk)), pos))
            for id_, rec in db.execute("SELECT id, record FROM events").fetchall():
                db.execute("UPDATE events SET record = ? WHERE id = ?", (stored_event_json(rec), id_))
            db.execute("DELETE FROM meta WHERE key = 'log_format'")
            log.close()
            log = SqliteLog(path)
            runner = EngineRunner(log, CONFIG)
    log.close()


def test_a_format_1_log_goes_on_in_format_2_and_audits_byte_for_byte(tmp_path: Path) -> None:
    mixed, fresh = tmp_path / "mixed.db", tmp_path / "fresh.db"
    _status_log(mixed, old_rows=True)
    _status_log(fresh, old_rows=False)
    with sqlite3.connect(mixed) as con:
        kinds = {
            str(t) for (t,) in con.execute("SELECT DISTINCT typeof(record) FROM events WHERE kind = 'StatusReported'")
        }
        assert kinds == {"text", "blob"}
        assert con.execute("SELECT value FROM meta WHERE key = 'log_format'").fetchone()[0] == str(LOG_FORMAT)
    readers = [SqliteReader(mixed), SqliteReader(fresh)]
    try:
        # Both forms read back as the same records, and the audit re-decides them byte for byte.
        assert [r.record for r in readers[0].iter_events()] == [r.record for r in readers[1].iter_events()]
        assert [r.record for r in readers[0].iter_inbox()] == [r.record for r in readers[1].iter_inbox()]
        for reader in readers:
            report = audit(reader)
            assert report.replay_matches and report.events > 40
    finally:
        for reader in readers:
            reader.close()


def test_a_forged_compact_row_is_a_divergence(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    _status_log(db, old_rows=False)
    with sqlite3.connect(db) as con:
        con.execute(
            "UPDATE events SET record = ? WHERE id = (SELECT MAX(id) FROM events WHERE kind = 'StatusReported')",
            (b"\x01" + b"1,2,3,4,5,6,7",),
        )
    reader = SqliteReader(db)
    try:
        assert audit(reader).replay_matches is False
    finally:
        reader.close()


def test_status_reports_take_under_half_the_json_baseline(tmp_path: Path) -> None:
    """Format 1 took 1.4x the JSON baseline here (the decoded copy, hex in JSON, JSON events)."""
    size = measure("status", 50, 40, str(tmp_path))
    rows = size.tables["inbox"] + size.tables["events"]
    assert rows < size.json_bytes / 2
