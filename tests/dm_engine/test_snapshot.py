"""Snapshots bring back every field of a VM's state, for states the engine really reaches.

States come from the fuzz programs (every protocol state, transactions in flight, hostile ranges,
violations), the demo story through the real runner (vDIMMs, hot-add, reboots, unballoon) and a
QEMU-managed VM. Each is snapshotted, sent through JSON and restored; the restored state must
equal the original field by field, and every field must have held a non-default value in some
state -- otherwise the round trip would prove nothing for it.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

from services.dm_engine import initial_state, process
from services.dm_engine import inputs as inp
from services.dm_engine.state import VmCounters, VmState
from services.dm_engine.step import read_input, step_vm
from services.dm_protocol import HotAddResponse
from services.fuzz.engine_fuzz import CONFIG, program
from tests.dm_engine.harness import GIB_PAGES, Harness
from tests.embedded.fleet_scenario import build_fleet, run_story

GIB = 1 << 30


def _default(cls: type, name: str) -> Any:
    f = next(f for f in fields(cls) if f.name == name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None  # required (vm_id): any value counts as exercised


def _states(tmp_path: Path) -> list[VmState]:
    out: list[VmState] = []
    for case in range(400):
        state = initial_state("fuzz")
        for i, record in enumerate(program(11, case)):
            process(state, record, CONFIG)
            if i % 17 == 0:
                out.append(VmState.from_snapshot(json.loads(json.dumps(state.to_snapshot()))))
        out.append(state)
    for profile in ("linux", "windows"):
        fleet = build_fleet(tmp_path / f"{profile}.db", profile=profile)
        run_story(fleet)
        out.extend(fleet.runner.states.values())
    qemu = initial_state("qemu")
    process(
        qemu,
        inp.QemuAttached(
            tick=1,
            device="hv-balloon",
            boot_bytes=2 * GIB,
            maxmem_bytes=4 * GIB,
            actual_bytes=2 * GIB,
            qemu_version="9.2.0",
            address="/run/qemu/vm.qmp",
            uuid="6b29fc40-ca47-1067-b31d-00dd010662da",
        ),
    )
    assert qemu.uuid == "6b29fc40-ca47-1067-b31d-00dd010662da"
    process(qemu, inp.SetTarget(tick=2, target_bytes=GIB))
    process(qemu, inp.QemuTracePages(tick=3, op="ballooned", ranges=((4096, 512),)))
    out.append(qemu)
    # Hot-remove in flight, on a VM whose hello turned status reports off.
    h = Harness()
    h.open(status_reports=False)
    h.handshake_again(hot_remove=True)
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=GIB))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(h.state.boot_pages + GIB_PAGES)
    h.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
    h.set_target_pages(h.state.boot_pages + GIB_PAGES // 2)
    assert h.state.hot_remove_tried and h.state.suppress_pressure_reports
    out.append(h.state)
    # A VM with a rejected input (the step's safety net).
    rejected = step_vm(
        "bad", initial_state("bad"), read_input({"type": "?"}), CONFIG, inbox_pos=3, rebuild=initial_state
    )
    out.append(rejected.state)
    # A disconnected VM whose retention countdown runs.
    retained = Harness(config=replace(Harness().config, retention_ticks=100))
    retained.handshake()
    retained.feed(inp.ChannelClosed(tick=retained.tick, reason="gone"))
    retained.advance_ticks(1)
    assert retained.state.retention_since_tick == retained.tick
    out.append(retained.state)
    return out


def test_every_field_round_trips_through_a_json_snapshot(tmp_path: Path) -> None:
    states = _states(tmp_path)
    varied: set[str] = set()
    for state in states:
        restored = VmState.from_snapshot(json.loads(json.dumps(state.to_snapshot())))
        for f in fields(VmState):
            original = getattr(state, f.name)
            assert getattr(restored, f.name) == original, (state.vm_id, f.name)
            if original != _default(VmState, f.name):
                varied.add(f.name)
        for f in fields(VmCounters):
            if getattr(state.counters, f.name) != _default(VmCounters, f.name):
                varied.add(f"counters.{f.name}")
        # And the restored state makes the same snapshot (nothing is lost on a second trip).
        assert restored.to_snapshot() == state.to_snapshot()
    every = {f.name for f in fields(VmState)} | {f"counters.{f.name}" for f in fields(VmCounters)}
    assert every - varied == set(), "fields no state exercised: the round trip proves nothing for them"


def test_a_snapshot_from_before_the_counters_were_grouped_still_loads(tmp_path: Path) -> None:
    state = next(s for s in _states(tmp_path) if s.counters.violations and s.counters.balloon_out_pages_total)
    flat = state.to_snapshot()
    counters = flat.pop("counters")
    flat.update(counters)  # the old layout: counters next to the decision state
    del flat["ram"]  # and before RAM layouts: RAM was [0, boot)
    restored = VmState.from_snapshot(flat)
    assert restored.counters == state.counters
    assert restored.ram == ((0, state.boot_pages),)
