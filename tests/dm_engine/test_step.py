"""The step's safety net through the real SQLite runner: an input that makes the engine raise is
recorded as ``InputRejected``, the VM is flagged, its state is as before the input, and every
other VM and every later input carry on. The audit replays the rejection byte for byte and
reports it; the metrics show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.audit import audit, audit_text
from services.audit.reader import SqliteReader
from services.dm_engine import decider, decisions
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_engine.records import event_from_dict, loads
from services.dm_engine.state import VmState
from services.embedded.lockstep import LockstepFleet
from services.embedded.runner import EngineRunner
from services.metrics.collector import HvdmCollector
from services.metrics.exposition import render_snapshot
from tests.embedded.fleet_scenario import GIB, all_settled, build_fleet

TARGET = GIB + GIB // 2


def _events(fleet: LockstepFleet, vm: str) -> list[tuple[int, ev.Event]]:
    return [(r.inbox_pos, event_from_dict(loads(r.record))) for r in fleet.log.iter_events(vm)]


def _ready(db: Path) -> LockstepFleet:
    fleet = build_fleet(db)
    for vm in fleet.vms:
        fleet.connect(vm)
    fleet.run_until(lambda f: all(f.runner.states[vm].protocol.value == "IDLE" for vm in f.vms))
    fleet.advance(50)
    return fleet


def _raise_for_vm2_in_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """SetTarget's handler raises for vm2: an exception inside decide, nothing folded yet."""
    original = decisions._INPUT_HANDLERS[inp.SetTarget]

    def handler(state: VmState, i: inp.SetTarget, config: EngineConfig) -> list[ev.Event]:
        if state.vm_id == "vm2":
            raise RuntimeError("injected fault in decide")
        return original(state, i, config)

    monkeypatch.setitem(decisions._INPUT_HANDLERS, inp.SetTarget, handler)


def _raise_for_vm2_in_advance(monkeypatch: pytest.MonkeyPatch) -> None:
    """advance raises for vm2 once its target is set: TargetSet is folded when the step fails."""
    original = decider.advance

    def advance(state: VmState, now: int, config: EngineConfig = decisions.DEFAULT_CONFIG) -> list[ev.Event]:
        if state.vm_id == "vm2" and state.target_pending:
            raise OverflowError("injected fault in advance")
        return original(state, now, config)

    monkeypatch.setattr(decider, "advance", advance)


def test_an_input_that_raises_in_decide_is_rejected_and_everyone_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = _ready(tmp_path / "a.db")
    before = fleet.runner.states["vm2"].to_snapshot()
    _raise_for_vm2_in_decide(monkeypatch)
    stamped = fleet.tick
    positions = {vm: fleet.submit(vm, inp.SetTarget(target_bytes=TARGET)) for vm in fleet.vms}
    fleet.settle()
    fleet.run_until(all_settled)
    states = fleet.runner.states
    # The other VMs reached their targets, in the same batches as the rejected input.
    for vm in ("vm1", "vm3"):
        assert states[vm].current_pages << 12 == TARGET
        assert not states[vm].needs_attention
    # vm2: one InputRejected at the input's position, nothing else from it, state unchanged.
    at_pos = [e for pos, e in _events(fleet, "vm2") if pos == positions["vm2"]]
    assert at_pos == [
        ev.InputRejected(
            input_type="SetTarget",
            inbox_pos=positions["vm2"],
            tick=stamped,
            error_class="RuntimeError",
            error="injected fault in decide",
        )
    ]
    vm2 = states["vm2"]
    assert vm2.needs_attention and vm2.counters.inputs_rejected_total == 1
    after = vm2.to_snapshot()
    after["needs_attention"], after["counters"]["inputs_rejected_total"] = False, 0
    assert after == before  # nothing else of the rejected input reached the state
    # The next input for vm2 is processed normally once the fault is gone.
    monkeypatch.undo()
    fleet.submit("vm2", inp.SetTarget(target_bytes=TARGET))
    fleet.settle()
    fleet.run_until(all_settled)
    assert states["vm2"].current_pages << 12 == TARGET
    assert states["vm2"].needs_attention  # stays flagged: an operator has to look


def test_a_failure_after_part_of_the_input_was_folded_leaves_no_trace_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = _ready(tmp_path / "a.db")
    _raise_for_vm2_in_advance(monkeypatch)
    for vm in fleet.vms:
        fleet.submit(vm, inp.SetTarget(target_bytes=TARGET))
    fleet.settle()
    vm2 = fleet.runner.states["vm2"]
    # The TargetSet that decide produced (and process folded) is gone with the rejected input.
    assert vm2.target_pages is None and not vm2.target_pending
    assert [e.KIND for _, e in _events(fleet, "vm2")][-1] == "InputRejected"
    # Memory equals what a restart rebuilds from the log.
    recovered = EngineRunner(fleet.log)
    assert recovered.states["vm2"].to_snapshot() == vm2.to_snapshot()
    assert fleet.runner.states["vm1"].target_pages == TARGET >> 12


def test_an_unreadable_inbox_record_is_rejected_for_its_vm(tmp_path: Path) -> None:
    fleet = _ready(tmp_path / "a.db")
    pos = fleet.log.append_input("vm3", fleet.tick, {"type": "NoSuchInput", "tick": fleet.tick})
    fleet.settle()
    [(at, rejected)] = [(p, e) for p, e in _events(fleet, "vm3") if isinstance(e, ev.InputRejected)]
    assert at == pos
    assert rejected.input_type == "NoSuchInput" and rejected.error_class == "RecordError"
    assert fleet.runner.consumed == fleet.log.inbox_high_watermark()


def test_the_audit_replays_the_rejection_and_reports_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "a.db"
    fleet = _ready(db)
    _raise_for_vm2_in_advance(monkeypatch)
    positions = {vm: fleet.submit(vm, inp.SetTarget(target_bytes=TARGET)) for vm in fleet.vms}
    fleet.settle()
    fleet.advance(3)
    fleet.log.close()
    # Replayed with the same (faulty) engine, the log is reproduced byte for byte.
    reader = SqliteReader(db)
    report = audit(reader)
    doc = report.to_dict()
    assert report.replay_matches
    assert doc["vms_needing_attention"] == ["vm2"]
    [rejection] = doc["vms"]["vm2"]["inputs_rejected"]
    assert rejection["inbox_pos"] == positions["vm2"] and rejection["error_class"] == "OverflowError"
    assert doc["vms"]["vm2"]["needs_attention"] and not doc["vms"]["vm1"]["needs_attention"]
    assert "vm2 NEEDS ATTENTION" in audit_text(report)
    # Replayed with the fixed engine, the audit shows where the log differs: at that input.
    monkeypatch.undo()
    fixed = audit(reader)
    assert fixed.first_divergence is not None
    assert fixed.first_divergence.vm == "vm2" and fixed.first_divergence.inbox_pos == positions["vm2"]
    reader.close()


def test_metrics_show_the_vm_that_needs_attention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _ready(tmp_path / "a.db")
    _raise_for_vm2_in_decide(monkeypatch)
    for vm in fleet.vms:
        fleet.submit(vm, inp.SetTarget(target_bytes=TARGET))
    fleet.settle()
    text = render_snapshot(HvdmCollector(fleet.runner).snapshot())
    assert 'hvdm_vm_needs_attention{vm="vm2"} 1\n' in text
    assert 'hvdm_vm_needs_attention{vm="vm1"} 0\n' in text
    assert 'hvdm_vm_inputs_rejected_total{vm="vm2"} 1\n' in text
