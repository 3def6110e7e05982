"""The Kafka audit reader: re-deciding its inbox rows with the engine gives the recorded events
byte for byte, with per-partition ticks, stale ticks, skipped records, duplicate and orphan
events records -- from synthetic topics, and from a real broker after a SIGKILL fail-over."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from services.dm_engine.config import EngineConfig
from services.dm_engine.decider import initial_state, process
from services.dm_engine.inputs import ChannelOpened, GuestMessage
from services.dm_engine.records import event_json, input_from_dict, to_dict
from services.dm_engine.state import VmState
from services.dm_protocol import CapabilitiesReport, StatusReport, VersionRequest, encode
from services.kafka_engine import envelope
from services.kafka_engine.audit_reader import (
    NOT_A_TICK,
    NOT_AN_ENVELOPE,
    NOT_AN_INPUT,
    KafkaLogReader,
    fold,
    open_audit_reader,
)
from services.kafka_engine.partition import PartitionEngine
from services.kafka_engine.tansu import LocalBroker
from tests.kafka.harness import Engines, KafkaLockstep, describe_logs, lockstep_settings

CONFIG = EngineConfig(post_init_wait_ticks=2)
GIB = 1 << 30


def redecide(
    reader: KafkaLogReader, config: EngineConfig, until: int | None = None
) -> dict[str, list[tuple[int, str]]]:
    """(inbox position, canonical JSON) per VM, deciding the reader's rows up to ``until`` (default:
    the consumed position) with the engine alone."""
    states: dict[str, VmState] = {}
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in reader.iter_inbox(0, reader.consumed_position() if until is None else until):
        state = states.get(row.vm)
        if state is None:
            state = states[row.vm] = initial_state(row.vm)
        assert row.record["tick"] == row.tick
        for event in process(state, input_from_dict(row.record), config):
            out[row.vm].append((row.pos, event_json(event)))
    return dict(out)


def recorded(reader: KafkaLogReader) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in reader.iter_events():
        assert row.seq == len(out[row.vm]) + 1, f"{row.vm}: seq {row.seq} out of order"
        out[row.vm].append((row.inbox_pos, row.record))
    return dict(out)


# ---------------------------------------------------------------------------------------- synthetic topics
def partition_inbox(vms: tuple[str, ...], first_tick: int) -> list[dict[str, Any]]:
    """One partition: handshakes, ticks numbered from ``first_tick`` (each partition has its own
    clock), status reports, a stale tick, and records the worker skips."""
    out: list[dict[str, Any]] = []

    def put(vm: str, record: Any) -> None:
        out.append({"vm": vm, "record": to_dict(record)})

    for i, vm in enumerate(vms):
        put(vm, ChannelOpened(boot_bytes=4 * GIB, maxmem_bytes=8 * GIB))
        put(vm, GuestMessage(raw=encode(VersionRequest(trans_id=1, version=0x20000))))
        put(
            vm,
            GuestMessage(raw=encode(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))),
        )
        if i == 0:  # the partition's first tick comes before the other VMs appear
            out.append({"vm": "*", "record": {"type": "Tick", "tick": first_tick}})
    for n in range(first_tick + 1, first_tick + 6):
        out.append({"vm": "*", "record": {"type": "Tick", "tick": n}})
        for vm in vms:
            put(vm, GuestMessage(raw=encode(StatusReport(trans_id=2 + n, num_avail=9 * n, num_committed=100))))
        if n == first_tick + 3:
            out.append({"vm": "*", "record": {"type": "Tick", "tick": n}})  # repeated: decides nothing
            out.append({"vm": "*", "record": {"type": "Status"}})  # a "*" record that is no Tick
            out.append({"vm": vms[0], "record": {"type": "NoSuchInput"}})
    return out


def run_partition(partition: int, records: list[dict[str, Any]]) -> list[bytes]:
    engine = PartitionEngine(partition, CONFIG)
    engine.set_clock(None)
    return [d.events_value() for offset, value in enumerate(records) for d in engine.decide(offset, value)]


def test_synthetic_topics_redecide_to_the_recorded_events() -> None:
    parts = {0: partition_inbox(("a", "c"), first_tick=1), 1: partition_inbox(("b",), first_tick=40)}
    events = {p: run_partition(p, records) for p, records in parts.items()}
    # A worker that died wrote a duplicate of one record and an orphan (a record written after a
    # lost one) before the next owner wrote them again, in order.
    noisy = [*events[0][:5], events[0][3], events[0][6], *events[0][5:]]
    inbox = [(p, o, envelope.encode(v)) for p, records in parts.items() for o, v in enumerate(records)]
    inbox.append((1, len(parts[1]), b"not json"))
    committed = {0: len(parts[0]) - 4, 1: len(parts[1]) + 1}  # partition 1: all, the bad record too
    reader = fold(committed, noisy + events[1], inbox)
    try:
        assert reader.cut.ignored_events_records == 2
        # The last 4 records of partition 0 are not consumed yet (their events were written):
        # they come after the consumed position, and re-deciding up to it gives a prefix.
        consumed = reader.consumed_position()
        assert consumed == sum(committed.values())
        assert reader.inbox_high_watermark() == len(inbox)
        log = recorded(reader)
        assert redecide(reader, CONFIG, reader.inbox_high_watermark()) == log
        prefix = {vm: [(pos, r) for pos, r in rows if pos <= consumed] for vm, rows in log.items()}
        assert redecide(reader, CONFIG) == prefix
        late = [pos for rows in log.values() for pos, _ in rows if pos > consumed]
        assert late and all(reader.locate(pos)[0] == 0 for pos in late)  # type: ignore[index]
        # Ticks reach only their partition's VMs, with their partition's numbers.
        ticks: dict[str, set[int]] = defaultdict(set)
        for row in reader.iter_inbox():
            if row.record["type"] == "Tick":
                ticks[row.vm].add(row.tick)
        assert ticks["a"] == set(range(1, 7)) and ticks["b"] == set(range(40, 46))
        assert ticks["c"] == set(range(2, 7))  # c appeared after tick 1
        # Positions: dense, each partition in offset order, and every one translates back.
        seen: dict[int, int] = {}
        for pos in range(1, reader.inbox_high_watermark() + 1):
            located = reader.locate(pos)
            assert located is not None and reader.position_of(*located) == pos
            p, o = located
            if p in seen and pos <= consumed:
                assert o > seen[p]
            seen[p] = o
        reasons = sorted(r for _, _, _, r in reader.ignored_inputs())
        assert reasons == sorted([NOT_A_TICK, NOT_A_TICK, NOT_AN_INPUT, NOT_AN_INPUT, NOT_AN_ENVELOPE])
        assert reader.vms() == ["a", "b", "c"]
    finally:
        reader.close()


# ---------------------------------------------------------------------------------------- a real broker
@pytest.mark.kafka
@pytest.mark.slow
async def test_a_failed_over_deployment_reads_back_byte_for_byte(
    broker: LocalBroker, prefix: str, tmp_path: Path
) -> None:
    settings = lockstep_settings(broker.url, prefix)
    engines = Engines(settings.url, tmp_path)
    driver = KafkaLockstep(settings, tmp_path, 3)
    killed: list[int] = []

    async def kill_during_ballooning(d: KafkaLockstep) -> None:
        if not killed and any(s.target_pages is not None for s in d.projection.states.values()):
            engines.kill(0)
            killed.append(d.tick)

    try:
        engines.start(2)
        await driver.start()
        result = await driver.run_demo(on_tick=kill_during_ballooning)
        # Read while the deployment is still up (settled: everything committed, nothing moving).
        reader = await asyncio.to_thread(open_audit_reader, settings.url)
    finally:
        await driver.close()
        engines.stop_all()
    assert result.completed and killed, describe_logs(tmp_path)
    try:
        stored = reader.get_meta("engine_config")
        assert stored is not None
        config = EngineConfig.from_dict(json.loads(stored))
        assert reader.consumed_position() == reader.inbox_high_watermark() > 0
        decided = redecide(reader, config)
        log = recorded(reader)
        assert decided == log
        # The recorded events are the run's (which the other tests compare with the embedded run).
        assert {vm: [r for _, r in rows] for vm, rows in log.items()} == result.events
        assert reader.vms() == sorted(result.events)
        # The audit itself reads it as it reads an embedded log.
        from services.audit import audit

        report = audit(reader)
        assert report.replay_matches, report.first_divergence
        assert report.decided_events == report.events == sum(len(v) for v in log.values())
    finally:
        reader.close()
