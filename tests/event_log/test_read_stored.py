"""Stored records read straight into objects: ``records.event_from_stored`` gives the same event (or
the same exception) as the JSON path, and ``replay.read_stored_input`` reads an inbox row as
``read_input`` reads the dict it stands for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.audit.replay import read_stored_input
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.records import (
    compact_event,
    event_from_dict,
    event_from_stored,
    event_json,
    loads,
    stored_event_json,
    stored_input,
    stored_input_dict,
    to_dict,
)
from services.dm_engine.step import read_input

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
NAMES: tuple[str, ...] = ("tick", "available_pages", "committed_pages", "page_file_size_pages", "zero_free_pages")
NAMES += ("page_file_writes", "io_diff")
DIGITS = st.text(alphabet="0123456789-,", max_size=60)


def slow(record: str | bytes) -> ev.Event | str:
    """What the JSON path makes of a stored record: the event, or the name of what it raised."""
    try:
        event: ev.Event = event_from_dict(loads(stored_event_json(record)))
        return event
    except Exception as exc:
        return type(exc).__name__


def fast(record: str | bytes) -> ev.Event | str:
    try:
        return event_from_stored(record)
    except Exception as exc:
        return type(exc).__name__


@given(st.tuples(*([INT64] * 7)))
def test_a_compact_event_reads_back_as_itself(values: tuple[int, ...]) -> None:
    event = ev.StatusReported(**dict(zip(NAMES, values, strict=True)))
    blob = compact_event(event)
    assert blob is not None
    assert event_from_stored(blob) == event == slow(blob)
    assert event_from_stored(event_json(event)) == event


@given(st.one_of(DIGITS.map(lambda t: b"\x01" + t.encode()), st.binary(max_size=50)))
def test_any_blob_reads_as_the_json_path_reads_it(blob: bytes) -> None:
    assert fast(blob) == slow(blob)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=2**63 - 1))
def test_an_inbox_blob_reads_as_its_dict(raw: bytes, tick: int) -> None:
    record = to_dict(inp.GuestMessage(tick=tick, raw=raw))
    stored = stored_input(record, tick)
    assert read_stored_input(stored, tick) == read_input(stored_input_dict(stored, tick))
    text = '{"tick":' + str(tick) + ',"type":"Tick"}'
    assert read_stored_input(text, tick) == read_input(loads(text)) == read_stored_input(loads(text), tick)
