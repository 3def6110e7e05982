"""Issue 9 section 1: a record with an out-of-range or wrong-typed number, read back from a log or
a Kafka topic, is refused with one error type and skipped and counted; it never crashes a worker.

orjson (the record reader) returns integers above 2**64 as floats, so a hostile number turns into
a float on the way back: ``input_from_dict`` refuses it with ``RecordError``, the Kafka envelope
decoder with ``EnvelopeError``, and the partition engine skips the record and counts it, deciding
every other record exactly as if the hostile one had never been published.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_engine.limits import MAX_RECORD_INT, MIN_RECORD_INT, PAGE_LIMIT
from services.dm_engine.records import RecordError, input_from_dict, loads
from services.embedded.service import EmbeddedService
from services.kafka_engine import envelope
from services.kafka_engine.envelope import EnvelopeError
from services.kafka_engine.partition import PartitionEngine
from services.units import PAGE_SHIFT
from tests.kafka.test_partition_engine import CONFIG, inbox
from tests.metrics.guest_driver import GuestDriver

HOSTILE_NUMBERS: list[Any] = [2**64, 10**23, -(2**63) - 1, 1e30, 4096.0, float("nan"), True, "4096", None, [1]]


@pytest.mark.parametrize("value", HOSTILE_NUMBERS, ids=repr)
@pytest.mark.parametrize(
    ("kind", "field", "base"),
    [
        ("SetTarget", "target_bytes", {}),
        ("AddBackend", "size_bytes", {"backend_id": "m"}),
        ("ChannelOpened", "boot_bytes", {"maxmem_bytes": 1 << 33}),
        ("ChannelOpened", "maxmem_bytes", {"boot_bytes": 1 << 32}),
        ("Tick", "tick", {}),
    ],
)
def test_a_stored_input_with_a_hostile_number_is_a_record_error(
    kind: str, field: str, base: dict[str, Any], value: Any
) -> None:
    stored = json.dumps({"type": kind, "tick": 1, **base, field: value})
    # orjson refuses NaN itself; Python's reader (used by older tools) returns it as a float.
    data = json.loads(stored) if value != value else loads(stored)
    with pytest.raises(RecordError):
        input_from_dict(data)


def test_a_stored_hot_add_window_beyond_page_2_40_is_a_record_error() -> None:
    record = {"type": "ChannelOpened", "tick": 0, "boot_bytes": 4 << 30, "maxmem_bytes": 8 << 30}
    assert input_from_dict({**record, "hot_add_base_page": PAGE_LIMIT - (1 << 20)}) is not None
    for base in (PAGE_LIMIT - (1 << 20) + 1, PAGE_LIMIT, 2**64 - 1):
        with pytest.raises(RecordError, match="hot_add_base_page"):
            input_from_dict({**record, "hot_add_base_page": base})


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([MAX_RECORD_INT, MAX_RECORD_INT + 1, MIN_RECORD_INT, MIN_RECORD_INT - 1, 2**64]),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(sorted(inp.INPUT_TYPES)),
    fields=st.dictionaries(
        st.sampled_from(
            [
                *("tick", "boot_bytes", "maxmem_bytes", "hot_add_base_page", "status_reports", "reason", "raw"),
                *("target_bytes", "backend_id", "size_bytes", "extra"),
            ]
        ),
        JSON_VALUES,
        max_size=6,
    ),
)
def test_input_decoding_returns_an_input_in_bounds_or_a_record_error(kind: str, fields: dict[str, Any]) -> None:
    data = json.loads(json.dumps({"type": kind, **fields}))  # keeps big ints and inf, unlike orjson
    try:
        record = input_from_dict(data)
    except RecordError:
        return
    assert type(record) is inp.INPUT_TYPES[kind]
    for name in record.__dataclass_fields__:
        value = getattr(record, name)
        if type(value) is int:
            assert MIN_RECORD_INT <= value <= MAX_RECORD_INT
        assert type(value) is not float
    if isinstance(record, inp.ChannelOpened):
        # What the decider will compute must be nameable on the wire.
        assert record.maxmem_bytes >> PAGE_SHIFT <= PAGE_LIMIT


# ------------------------------------------------------------------------------- Kafka envelopes
def _raw(vm: str, record: str) -> bytes:
    return f'{{"vm": "{vm}", "record": {record}}}'.encode()


#: Inbox topic values a hostile or broken producer could publish (raw bytes, as the worker reads them).
HOSTILE_ENVELOPES: list[bytes] = [
    _raw("a", '{"type": "SetTarget", "tick": 0, "target_bytes": 100000000000000000000000}'),
    _raw("a", '{"type": "SetTarget", "tick": 0, "target_bytes": 1.5}'),
    _raw("a", '{"type": "AddBackend", "tick": 0, "backend_id": "m", "size_bytes": true}'),
    _raw("c", '{"type": "ChannelOpened", "tick": 0, "boot_bytes": 4096, "maxmem_bytes": 18446744073709551616}'),
    _raw(
        "c", '{"type": "ChannelOpened", "tick": 0, "boot_bytes": 4096, "maxmem_bytes": 8192, "hot_add_base_page": 2}'
    ).replace(b"2}", str(2**40).encode() + b"}"),
    _raw("c", '{"type": "ChannelOpened", "tick": 0, "boot_bytes": 4096, "maxmem_bytes": 0, "hot_add_base_page": 1e12}'),
    _raw("*", '{"type": "Tick", "tick": 1e30}'),
    _raw("*", '{"type": "Tick", "tick": 99999999999999999999999}'),
    _raw("*", '{"type": "Tick", "tick": "5"}'),
    _raw("a\\n", '{"type": "Tick", "tick": 0}'),
    _raw("a", "[" * 100_000 + "]" * 100_000),
    b'{"vm": "a", "record": ' + b"[" * 100_000,
    b"\xff\xfe",
    b"[]",
]


def test_hostile_inbox_envelopes_are_skipped_and_counted_and_change_nothing_else() -> None:
    clean = [envelope.inbox_value(v["vm"], v["record"]) for v in inbox()]
    noisy: list[bytes] = []
    for i, raw in enumerate(clean):
        noisy.append(raw)
        if i % 3 == 1:
            noisy.extend(HOSTILE_ENVELOPES)

    def run(values: list[bytes]) -> tuple[PartitionEngine, list[tuple[str, int, tuple[dict[str, Any], ...]]]]:
        engine = PartitionEngine(0, CONFIG)
        engine.set_clock(None)
        out = []
        for offset, raw in enumerate(values):
            try:
                value = envelope.decode(raw)
            except EnvelopeError:
                engine.ignored_records += 1  # what the worker does with an undecodable value
                continue
            for d in engine.decide(offset, value):
                out.append((d.vm, d.events_record.tick, d.events_record.events))
        return engine, out

    reference, expected = run(clean)
    engine, got = run(noisy)
    hostile = len(noisy) - len(clean)
    assert engine.ignored_records == reference.ignored_records + hostile
    assert got == expected  # same events, same ticks, for every VM
    assert "c" not in engine.vms
    assert {vm: c.state.to_snapshot() for vm, c in engine.vms.items()} == {
        vm: c.state.to_snapshot() for vm, c in reference.vms.items()
    }


@pytest.mark.parametrize(
    "value",
    [
        {"vm": "a", "inbox": [0, 1], "seq": 1e30, "tick": 0, "outbox_seq": 0, "events": []},
        {"vm": "a", "inbox": [0, 1.0], "seq": 1, "tick": 0, "outbox_seq": 0, "events": []},
        {"vm": "a", "inbox": [0, 1], "seq": 1, "tick": True, "outbox_seq": 0, "events": []},
        {"vm": "a\n", "inbox": [0, 1], "seq": 1, "tick": 0, "outbox_seq": 0, "events": []},
        {"vm": "a", "inbox": [0, 1], "seq": 1, "tick": 0, "outbox_seq": -1, "events": []},
    ],
)
def test_an_events_record_with_a_hostile_number_is_an_envelope_error(value: dict[str, Any]) -> None:
    with pytest.raises(EnvelopeError):
        envelope.EventsRecord.from_value(value)


def test_an_outbox_record_with_a_hostile_number_is_an_envelope_error() -> None:
    assert envelope.outbox_messages_of({"messages": [[1, 2, "00"]]})[0].seq == 1
    for messages in ([[1e30, 2, "00"]], [[1, 2**64, "00"]], [[True, 2, "00"]], [[1, 2, 3]]):
        with pytest.raises(EnvelopeError):
            envelope.outbox_messages_of({"messages": messages})


# ------------------------------------------------------------------------------- the embedded log
def test_a_stored_hostile_record_is_rejected_for_its_vm_and_the_others_carry_on(tmp_path: Path) -> None:
    """A log written before the edges refused these numbers (or edited by hand): the engine's
    step turns each ``RecordError`` into an ``InputRejected`` event and every other VM, and every
    later input, is processed as usual."""

    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=1e-9, config=EngineConfig(post_init_wait_ticks=1))
        await service.start()
        try:
            good = GuestDriver(service, "good")
            await good.handshake()
            await good.tick(2)
            raw = [
                ("bad", '{"type": "ChannelOpened", "tick": 0, "boot_bytes": 4294967296, "maxmem_bytes": 1e30}'),
                ("bad", '{"type": "SetTarget", "tick": 0, "target_bytes": 100000000000000000000000}'),
                ("good", '{"type": "SetTarget", "tick": 0, "target_bytes": 1.5}'),
            ]
            for vm, text in raw:
                # orjson is how every log reader parses: the huge integer arrives as a float.
                pos = service.log.append_input(vm, service.now_tick(), loads(text))
            await service.wait_processed(pos)
            assert await good.put(inp.SetTarget(target_bytes=3 << 30)) > pos
            await good.answer()
            assert service.runner.states["good"].current_pages == (3 << 30) >> PAGE_SHIFT
            rejected = [
                (row.vm, json.loads(row.record))
                for vm in ("bad", "good")
                for row in service.log.iter_events(vm)
                if '"InputRejected"' in row.record
            ]
            assert [(vm, e["input_type"], e["error_class"]) for vm, e in rejected] == [
                ("bad", "ChannelOpened", "RecordError"),
                ("bad", "SetTarget", "RecordError"),
                ("good", "SetTarget", "RecordError"),
            ]
        finally:
            await service.stop()

    asyncio.run(scenario())
