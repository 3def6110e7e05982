"""The effectively-once rules of one partition, without a broker: dedupe by inbox position, the
sequence rule on recovery, the partition clock. A worker that dies at any record and a new owner
that replays from any earlier committed offset must end with the same records and state."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dm_engine import decider, decisions
from services.dm_engine import events as ev
from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import ChannelOpened, GuestMessage, SetTarget
from services.dm_engine.records import to_dict
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, CapabilitiesReport, StatusReport, VersionRequest, encode
from services.kafka_engine import envelope
from services.kafka_engine.envelope import EventsRecord
from services.kafka_engine.partition import PartitionClock, PartitionEngine

CONFIG = EngineConfig(post_init_wait_ticks=2)
GIB = 1 << 30


def inbox() -> list[dict[str, Any]]:
    """Two VMs in one partition: handshake, ticks, status reports, a balloon round."""
    out: list[dict[str, Any]] = []

    def put(vm: str, record: Any) -> None:
        out.append({"vm": vm, "record": to_dict(record)})

    for vm in ("a", "b"):
        put(vm, ChannelOpened(boot_bytes=4 * GIB, maxmem_bytes=8 * GIB))
        put(vm, GuestMessage(raw=encode(VersionRequest(trans_id=1, version=0x20000))))
        put(
            vm,
            GuestMessage(raw=encode(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))),
        )
    for tick in range(1, 8):
        out.append({"vm": "*", "record": {"type": "Tick", "tick": tick}})
        for vm in ("a", "b"):
            put(vm, GuestMessage(raw=encode(StatusReport(trans_id=2 + tick, num_avail=900_000, num_committed=100_000))))
        if tick == 4:
            put("a", SetTarget(target_bytes=3 * GIB))
        if tick == 5:
            put("a", GuestMessage(raw=encode(BalloonResponse(more_pages=False, ranges=((4096, 1 << 18),)))))
    out.append({"vm": "*", "record": {"type": "Tick", "tick": 3}})  # a stale tick from an old owner
    return out


def run(records: list[dict[str, Any]], engine: PartitionEngine, start: int = 0) -> list[Any]:
    written: list[Any] = []
    if engine.clock is None:
        last = None
        for value in records[:start]:
            if envelope.is_tick(value):
                last = value["record"]["tick"]
        engine.set_clock(last)
    for offset in range(start, len(records)):
        for d in engine.decide(offset, records[offset]):
            written.append((d.events_record, d.outbox))
    return written


def recover(written: list[EventsRecord]) -> PartitionEngine:
    engine = PartitionEngine(0, CONFIG)
    for record in written:
        engine.replay(EventsRecord.from_value(envelope.decode(envelope.encode(record.to_value()))))
    return engine


def test_clock_moves_only_forward() -> None:
    clock = PartitionClock(None)
    assert clock.now == 0
    assert clock.on_tick(3) and clock.now == 3
    assert not clock.on_tick(3)
    assert not clock.on_tick(2) and clock.now == 2  # the stamp follows the record, the fan-out does not
    assert clock.on_tick(4)


def test_the_reference_run_balloons_and_stamps_ticks() -> None:
    written = run(inbox(), PartitionEngine(0, CONFIG))
    kinds = [e["type"] for r, _ in written for e in r.events]
    assert "BalloonRequested" in kinds and "PagesBallooned" in kinds
    ticks = {r.tick for r, _ in written if r.vm == "a"}
    assert ticks == set(range(0, 8))
    outbox_seqs = [m[0] for _, o in written if o and o["vm"] == "a" for m in o["messages"]]
    assert outbox_seqs == list(range(1, len(outbox_seqs) + 1))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_crash_anywhere_then_replay_from_an_earlier_offset_gives_the_same_log(data: st.DataObject) -> None:
    records = inbox()
    reference = run(records, PartitionEngine(0, CONFIG))
    ref_events = [r for r, _ in reference]
    # The dead worker wrote a prefix of its records, possibly losing one in the middle (a failed
    # send followed by a successful one), and had committed some offset at or before its progress.
    crash_at = data.draw(st.integers(0, len(ref_events)))
    durable = list(ref_events[:crash_at])
    lose_one: bool = data.draw(st.booleans())
    if durable and lose_one:
        lost = data.draw(st.integers(0, len(durable) - 1))
        durable = durable[:lost] + durable[lost + 1 :]
    progress = max((r.offset for r in durable), default=-1)
    committed = data.draw(st.integers(0, max(0, progress)))
    if durable and durable != ref_events[: len(durable)]:
        # With a lost record nothing after it was acknowledged: the commit is before it.
        first_missing = next(i for i, r in enumerate(durable) if r != ref_events[i])
        committed = min(committed, ref_events[first_missing].offset)
    engine = recover(durable)
    rewritten = [r for r, _ in run(records, engine, committed)]
    log = recover(durable + rewritten)
    fresh = recover(ref_events)
    assert log.fingerprint() == fresh.fingerprint()
    # Read with the sequence rule, the topic holds exactly the reference records.
    accepted: dict[str, int] = {}
    seen = []
    for r in durable + rewritten:
        if r.seq == accepted.get(r.vm, 0) + 1:
            accepted[r.vm] = r.last_seq
            seen.append(r)
    assert sorted(seen, key=lambda r: (r.vm, r.seq)) == sorted(ref_events, key=lambda r: (r.vm, r.seq))


def test_a_redelivered_record_in_one_process_is_ignored() -> None:
    records = inbox()
    engine = PartitionEngine(0, CONFIG)
    first = run(records, engine)
    assert first
    assert run(records, engine, 0) == []


@pytest.mark.parametrize("seed", range(3))
def test_duplicates_and_orphans_are_ignored_by_replay(seed: int) -> None:
    ref = [r for r, _ in run(inbox(), PartitionEngine(0, CONFIG))]
    noisy = list(ref)
    rng = random.Random(seed)
    for _ in range(5):
        noisy.insert(rng.randrange(len(noisy) + 1), rng.choice(ref))
    assert recover(noisy).fingerprint() == recover(ref).fingerprint()


# VM ids are matched against ``limits.VM_ID`` (an envelope with any other id is skipped), so
# the second id uses every punctuation character an id may hold.
@pytest.mark.parametrize("vm", ["a", "V.m_1-x"])
def test_the_fast_events_encoding_is_the_canonical_one(vm: str) -> None:
    """The worker writes ``Decision.events_value`` (event_json spliced into the envelope); it must
    be byte for byte what the generic canonical encoder makes of the same record."""
    records = [{"vm": vm if r["vm"] == "a" else r["vm"], "record": r["record"]} for r in inbox()]
    engine = PartitionEngine(3, CONFIG)
    engine.set_clock(None)
    decisions = [d for offset, value in enumerate(records) for d in engine.decide(offset, value)]
    assert len(decisions) > 20
    for d in decisions:
        assert d.events_value() == envelope.encode(d.events_record.to_value())
        assert EventsRecord.from_value(envelope.decode(d.events_value())) == d.events_record


def test_an_input_that_raises_is_rejected_for_its_vm_and_the_partition_carries_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step's safety net in the Kafka engine: a fault inside decide (for "a"'s SetTarget) and
    one after part of an input was folded (advance, for "b") each become one InputRejected; the
    state is rebuilt from the cursor's base, and a new owner recovering from the records agrees."""
    records = inbox()
    at = next(i for i, r in enumerate(records) if r["record"]["type"] == "SetTarget")
    records.insert(at + 1, {"vm": "b", "record": to_dict(SetTarget(target_bytes=2 * GIB))})
    original_set_target = decisions._INPUT_HANDLERS[SetTarget]
    original_advance = decider.advance

    def set_target(state: VmState, i: SetTarget, config: EngineConfig) -> list[ev.Event]:
        if state.vm_id == "a":
            raise ValueError("injected fault in decide")
        return original_set_target(state, i, config)

    def advance(state: VmState, now: int, config: EngineConfig = CONFIG) -> list[ev.Event]:
        if state.vm_id == "b" and state.target_pending:
            raise OverflowError("injected fault in advance")
        return original_advance(state, now, config)

    monkeypatch.setitem(decisions._INPUT_HANDLERS, SetTarget, set_target)
    monkeypatch.setattr(decider, "advance", advance)
    engine = PartitionEngine(0, CONFIG)
    engine.take_snapshots()  # a checkpoint mid-history: rebuilds start from a snapshot, not from zero
    written = run(records[:10], engine)
    engine.take_snapshots()
    written += run(records, engine, 10)
    rejected = {r.vm: r for r, _ in written if r.events[0]["type"] == "InputRejected"}
    assert set(rejected) == {"a", "b"}
    for vm, error_class in (("a", "ValueError"), ("b", "OverflowError")):
        assert len(rejected[vm].events) == 1
        assert rejected[vm].events[0]["error_class"] == error_class
        assert rejected[vm].events[0]["inbox_pos"] == rejected[vm].offset
        state = engine.vms[vm].state
        assert state.needs_attention and state.target_pages is None  # no trace of the rejected input
    # Both VMs kept going: later ticks and status reports were decided for them.
    for vm in ("a", "b"):
        later = [r for r, _ in written if r.vm == vm and r.offset > rejected[vm].offset]
        assert any(e["type"] == "StatusReported" for r in later for e in r.events)
    # The balloon answer nobody asked for (the target was rejected) is a violation, not a crash.
    assert any(e["type"] == "GuestViolation" for r, _ in written if r.vm == "a" for e in r.events)
    assert recover([r for r, _ in written]).fingerprint() == engine.fingerprint()
