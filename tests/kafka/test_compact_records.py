"""The compact inbox and events records (``envelope``), without a broker: each reads back as exactly
the record its JSON envelope holds, a partition decided from compact inbox records writes the same
events as from envelopes, and no byte string a hostile producer can write raises anything but
``EnvelopeError`` from the readers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dm_engine.records import COMPACT_LAYOUTS
from services.kafka_engine import envelope
from services.kafka_engine.envelope import EnvelopeError, EventsRecord
from services.kafka_engine.partition import PartitionEngine
from tests.kafka.test_partition_engine import CONFIG, inbox


def decided(values: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    """(key, stored events value, JSON events value) of every decision, feeding the partition
    ``(key, inbox value)`` records the way the worker does."""
    engine = PartitionEngine(2, CONFIG)
    engine.set_clock(None)
    out = []
    for offset, (key, raw) in enumerate(values):
        for d in engine.decide(offset, envelope.decode_inbox(key, raw)):
            out.append((d.vm.encode(), d.stored_value(), d.events_value()))
    return out


def published(compact: bool) -> list[tuple[bytes, bytes]]:
    out = []
    for value in inbox():
        vm, record = value["vm"], value["record"]
        raw = envelope.tick_value(record["tick"]) if vm == "*" else envelope.publish_value(vm, record, compact=compact)
        out.append((vm.encode(), raw))
    return out


def test_compact_inbox_records_decide_exactly_what_envelopes_decide() -> None:
    compact, plain = published(True), published(False)
    guest = [raw for _, raw in compact if raw[0] == envelope.COMPACT_GUEST_MESSAGE]
    assert len(guest) > 15 and all(len(raw) < 60 for raw in guest)  # a status report: 1 + 48 bytes
    assert [raw for _, raw in plain if raw[0] != ord("{")] == []
    from_compact, from_plain = decided(compact), decided(plain)
    assert len(from_compact) > 20
    assert [(k, j) for k, _, j in from_compact] == [(k, j) for k, _, j in from_plain]


def test_compact_events_records_read_back_as_their_envelopes() -> None:
    records = decided(published(True))
    compact_status = 0
    for key, stored, as_json in records:
        assert stored[0] == envelope.COMPACT_EVENTS
        record = envelope.decode_events(key, stored)
        assert record == envelope.decode_events(key, as_json) == EventsRecord.from_value(envelope.decode(as_json))
        # The audit compares canonical JSON: the events expand to exactly the envelope's bytes.
        assert envelope.encode(record.to_value()) == as_json
        compact_status += stored.count(b"\n\x01")
        assert len(stored) < len(as_json)
    assert compact_status > 10


def test_no_compact_code_can_be_taken_for_a_separator_or_an_envelope() -> None:
    assert not set(COMPACT_LAYOUTS) & {ord("\n"), ord("{")}


def test_the_records_setting_keeps_guest_messages_json_when_asked() -> None:
    record = {"type": "GuestMessage", "tick": 4, "raw": "0500"}
    assert envelope.publish_value("a", record, compact=False) == envelope.inbox_value("a", record)
    assert envelope.publish_value("a", record) == b"\x01\x05\x00"
    # Not exactly {type, tick, raw} in canonical hex: kept as the envelope, which says all of it.
    for odd in ({**record, "raw": "05A0"}, {**record, "extra": 1}, {**record, "raw": "050"}):
        assert envelope.publish_value("a", odd)[:1] == b"{"


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        (None, b"\x01\x05\x00"),
        (b"\xff", b"\x01\x05\x00"),
        (b"a\n", b"\x01\x05\x00"),
        (b"a", b"\x02"),
        (b"a", b"\x021,2,3,4"),
        (b"a", b"\x021,2,3,4,-5"),
        (b"a", b"\x02 1,2,3,4,5"),
        (b"a", b"\x0299999999999999999999,2,3,4,5"),
        (b"a", b"\x021,2,3,4,5\n"),
        (b"a", b"\x021,2,3,4,5\n\x01nope"),
        (b"a", b"\x021,2,3,4,5\n\x09" + b"1," * 6 + b"1"),
        (b"a", b"\x021,2,3,4,5\n[]"),
        (b"a", b"\x021,2,3,4,5\n{\xff}"),
    ],
)
def test_broken_compact_records_are_envelope_errors(key: bytes | None, raw: bytes) -> None:
    def read() -> object:
        if raw[0] == envelope.COMPACT_GUEST_MESSAGE:
            return envelope.inbox_entry(envelope.decode_inbox(key, raw))
        return envelope.decode_events(key, raw)

    with pytest.raises(EnvelopeError):
        read()


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=8)), body=st.binary(max_size=64), kind=st.sampled_from([1, 2]))
def test_any_bytes_read_as_a_record_or_an_envelope_error(key: bytes | None, body: bytes, kind: int) -> None:
    raw = bytes((kind,)) + body
    try:
        if kind == envelope.COMPACT_GUEST_MESSAGE:
            vm, record = envelope.inbox_entry(envelope.decode_inbox(key, raw))
            assert record == {"type": "GuestMessage", "tick": 0, "raw": body.hex()} and key == vm.encode()
        else:
            rec = envelope.decode_events(key, raw)
            assert all(isinstance(e, dict) for e in rec.events)
    except EnvelopeError:
        pass


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=300), tick=st.integers(0, 2**40), vm=st.sampled_from(["a", "V.m_1-x"]))
def test_guest_bytes_round_trip_through_the_compact_inbox_record(raw: bytes, tick: int, vm: str) -> None:
    record: dict[str, Any] = {"type": "GuestMessage", "tick": tick, "raw": raw.hex()}
    value = envelope.decode_inbox(vm.encode(), envelope.publish_value(vm, record))
    assert value == {"vm": vm, "record": {**record, "tick": 0}}
