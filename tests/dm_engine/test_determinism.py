"""Replaying the inbox reproduces the events byte for byte; folding the events reproduces the state."""

from __future__ import annotations

import json

from services.dm_engine import evolve, initial_state, process
from services.dm_engine import inputs as inp
from services.dm_engine.records import event_from_dict, event_json, input_from_dict, input_json
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, HotAddResponse, StatusReport, UnballoonResponse
from tests.dm_engine.harness import GIB_PAGES, Harness


def scripted() -> Harness:
    h = Harness()
    h.handshake()
    boot = h.state.boot_pages
    h.guest(StatusReport(num_avail=700_000, num_committed=300_000))
    h.set_target_pages(boot - 2048)
    h.guest(BalloonResponse(more_pages=True, ranges=((0, 512), (4096, 512), (4096, 512))))
    h.guest(BalloonResponse(more_pages=False, ranges=((10_000, 1024), (boot + 5, 9))))
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=2 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(boot + GIB_PAGES)
    h.guest(UnballoonResponse())
    h.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
    h.advance_ticks(3)
    h.command(inp.SystemReset(tick=h.tick))
    return h


def test_replaying_inputs_reproduces_events_byte_for_byte() -> None:
    h = scripted()
    recorded = h.event_log()
    assert len(recorded) > 20
    replayed: list[str] = []
    state = initial_state("vm1")
    for line in h.input_log():
        record = input_from_dict(json.loads(line))
        replayed.extend(event_json(e) for e in process(state, record, h.config))
    assert replayed == recorded
    assert state.to_snapshot() == h.state.to_snapshot()


def test_folding_events_reproduces_state_and_snapshots_round_trip() -> None:
    h = scripted()
    state = initial_state("vm1")
    for line in h.event_log():
        evolve(state, event_from_dict(json.loads(line)))
    assert state.to_snapshot() == h.state.to_snapshot()
    again = VmState.from_snapshot(json.loads(json.dumps(h.state.to_snapshot())))
    assert again.to_snapshot() == h.state.to_snapshot()


def test_input_records_round_trip() -> None:
    h = scripted()
    for line in h.input_log():
        assert input_json(input_from_dict(json.loads(line))) == line
