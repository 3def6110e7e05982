"""Turn a log of today's engine into a log as an older hvdm wrote it, to audit with today's engine.

What differs in the "old format" (schema 0), each a thing a newer reader must tolerate:

* tables: no ``snapshots``; ``inbox`` without ``kind`` / ``decoded`` (no pre-decoded JSON: the
  audit can only decode the raw guest bytes again); ``events`` without ``kind``;
* inbox records: ``ChannelOpened`` without ``hot_add_base_page`` / ``status_reports`` (fields added
  later, with defaults), written with ``json.dumps`` defaults (spaces, insertion order);
* ``meta.engine_config`` without the knobs added later (``max_status_reports_per_tick``,
  ``use_hot_remove``, ``suppress_status_reports``), which then take their defaults;
* optionally, events written non-canonically (``canonical_events=False``): same facts, other bytes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from services.dm_engine.records import stored_event_json, stored_input_dict

SCHEMA_0 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE inbox (pos INTEGER PRIMARY KEY, vm TEXT NOT NULL, tick INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY, vm TEXT NOT NULL, seq INTEGER NOT NULL,
                     inbox_pos INTEGER NOT NULL, record TEXT NOT NULL, UNIQUE (vm, seq));
CREATE TABLE outbox (id INTEGER PRIMARY KEY, vm TEXT NOT NULL, seq INTEGER NOT NULL,
                     event_seq INTEGER NOT NULL, message BLOB NOT NULL, UNIQUE (vm, seq));
CREATE TABLE positions (name TEXT PRIMARY KEY, pos INTEGER NOT NULL);
"""
NEWER_INPUT_FIELDS = {"ChannelOpened": ("hot_add_base_page", "status_reports")}
NEWER_CONFIG_KEYS = ("max_status_reports_per_tick", "use_hot_remove", "suppress_status_reports")

EventEdit = Callable[[int, dict[str, object]], dict[str, object]]


def age(
    source: Path,
    target: Path,
    *,
    canonical_events: bool = True,
    edit_event: EventEdit | None = None,
) -> Path:
    """Write ``target``: ``source``'s log in schema 0. ``edit_event(seq, event)`` may change what
    the "old engine" recorded (to model an engine that decided differently)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        dst.executescript(SCHEMA_0)
        for key, value in src.execute("SELECT key, value FROM meta"):
            if key == "engine_config":
                config = json.loads(value)
                for newer in NEWER_CONFIG_KEYS:
                    config.pop(newer, None)
                value = json.dumps(config)
            dst.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
        for pos, vm, tick, record in src.execute("SELECT pos, vm, tick, record FROM inbox ORDER BY pos"):
            data = stored_input_dict(record, tick)  # schema 0 had JSON rows only
            for newer in NEWER_INPUT_FIELDS.get(data["type"], ()):
                data.pop(newer, None)
            dst.execute("INSERT INTO inbox VALUES (?, ?, ?, ?)", (pos, vm, tick, json.dumps(data)))
        for id_, vm, seq, pos, record in src.execute("SELECT id, vm, seq, inbox_pos, record FROM events ORDER BY id"):
            data = json.loads(stored_event_json(record))
            if edit_event is not None:
                data = edit_event(seq, data)
            text = json.dumps(data, sort_keys=True, separators=(",", ":")) if canonical_events else json.dumps(data)
            dst.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (id_, vm, seq, pos, text))
        dst.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
            src.execute("SELECT id, vm, seq, event_seq, message FROM outbox ORDER BY id").fetchall(),
        )
        dst.executemany(
            "INSERT INTO positions VALUES (?, ?)", src.execute("SELECT name, pos FROM positions").fetchall()
        )
    return target
