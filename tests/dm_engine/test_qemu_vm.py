"""QEMU-managed VMs in the engine: targets, progress, stalls, detach/re-attach, shadow pages, replay."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_engine.decider import evolve, initial_state, process
from services.dm_engine.qemu_vm import qemu_outbox_records, shadow_divergence
from services.dm_engine.records import event_from_dict, event_json, input_from_dict, input_json, loads, to_dict
from services.dm_engine.state import ProtocolState, VmState

GIB = 1 << 30
CONFIG = EngineConfig(qemu_stall_ticks=5)


def attached(device: str = "virtio-balloon", boot: int = 2 * GIB, maxmem: int = 2 * GIB, tick: int = 0) -> VmState:
    state = initial_state("vm1")
    process(
        state,
        inp.QemuAttached(
            device=device,
            boot_bytes=boot,
            maxmem_bytes=maxmem,
            actual_bytes=boot,
            qemu_version="7.2.22",
            address="/run/vm1.sock",
            tick=tick,
        ),
        CONFIG,
    )
    return state


def kinds(events: list[ev.Event]) -> list[str]:
    return [e.KIND for e in events]


def test_attach_describes_the_vm_as_qemu_managed() -> None:
    s = attached()
    assert s.qemu is not None and s.qemu.attached and s.qemu.device == "virtio-balloon"
    assert s.boot_pages == s.current_pages == (2 * GIB) >> 12
    assert s.protocol is ProtocolState.IDLE


def test_target_commands_qemu_and_is_reached_when_actual_arrives() -> None:
    s = attached()
    events = process(s, inp.SetTarget(target_bytes=GIB, tick=3), CONFIG)
    assert kinds(events) == ["TargetSet", "QemuBalloonCommanded"]
    records = qemu_outbox_records(events)
    assert records == [(1, b'{"arguments":{"value":1073741824},"execute":"balloon"}')]
    assert s.protocol is ProtocolState.IDLE and s.qemu is not None and s.qemu.commanded_pages == GIB >> 12
    assert process(s, inp.QemuActualChanged(actual_bytes=int(1.5 * GIB), tick=4), CONFIG)[0].KIND == "QemuActualChanged"
    events = process(s, inp.QemuActualChanged(actual_bytes=GIB, tick=6), CONFIG)
    assert kinds(events) == ["QemuActualChanged", "QemuTargetReached"]
    reached = events[1]
    assert isinstance(reached, ev.QemuTargetReached) and reached.waited_ticks == 3
    assert s.current_pages == GIB >> 12 and s.ballooned_pages == GIB >> 12
    assert s.protocol is ProtocolState.IDLE and s.qemu is not None and s.qemu.commanded_pages is None


def test_a_target_without_progress_stalls_once_and_keeps_standing() -> None:
    s = attached()
    process(s, inp.SetTarget(target_bytes=GIB, tick=10), CONFIG)
    assert process(s, inp.Tick(tick=14), CONFIG) == []
    # Progress moves the stall clock.
    process(s, inp.QemuActualChanged(actual_bytes=int(1.8 * GIB), tick=14), CONFIG)
    assert process(s, inp.Tick(tick=18), CONFIG) == []
    events = process(s, inp.Tick(tick=19), CONFIG)
    assert kinds(events) == ["QemuTargetStalled"]
    stalled = events[0]
    assert isinstance(stalled, ev.QemuTargetStalled) and stalled.waited_ticks == 9
    assert process(s, inp.Tick(tick=40), CONFIG) == []  # recorded once
    # Progress, then no progress again: a second stall is a new finding.
    process(s, inp.QemuActualChanged(actual_bytes=int(1.5 * GIB), tick=41), CONFIG)
    assert kinds(process(s, inp.Tick(tick=46), CONFIG)) == ["QemuTargetStalled"]
    # The guest recovers later: the target is still reached.
    assert kinds(process(s, inp.QemuActualChanged(actual_bytes=GIB, tick=50), CONFIG))[-1] == "QemuTargetReached"


def test_moving_away_from_the_target_is_not_progress() -> None:
    s = attached()
    process(s, inp.QemuActualChanged(actual_bytes=int(1.5 * GIB), tick=0), CONFIG)
    process(s, inp.SetTarget(target_bytes=GIB, tick=1), CONFIG)
    process(s, inp.QemuActualChanged(actual_bytes=2 * GIB, tick=3), CONFIG)  # someone else grew it
    assert kinds(process(s, inp.Tick(tick=6), CONFIG)) == ["QemuTargetStalled"]


def test_detach_keeps_the_target_and_reattach_delivers_it_again() -> None:
    s = attached()
    process(s, inp.SetTarget(target_bytes=GIB, tick=1), CONFIG)
    assert kinds(process(s, inp.QemuDetached(reason="monitor closed", tick=2), CONFIG)) == ["QemuDetached"]
    assert s.protocol is ProtocolState.CLOSED
    assert process(s, inp.Tick(tick=100), CONFIG) == []  # no stall while nobody listens
    # A target set while detached is kept but not sent.
    assert kinds(process(s, inp.SetTarget(target_bytes=GIB // 2, tick=3), CONFIG)) == ["TargetSet"]
    events = process(
        s,
        inp.QemuAttached(
            device="virtio-balloon",
            boot_bytes=2 * GIB,
            maxmem_bytes=2 * GIB,
            actual_bytes=2 * GIB,
            qemu_version="7.2.22",
            address="/run/vm1.sock",
            tick=5,
        ),
        CONFIG,
    )
    assert kinds(events) == ["QemuAttached", "QemuBalloonCommanded"]
    assert isinstance(events[1], ev.QemuBalloonCommanded) and events[1].value_bytes == GIB // 2


def test_targets_are_clamped_to_what_the_device_can_reach() -> None:
    s = attached()
    events = process(s, inp.SetTarget(target_bytes=8 * GIB, tick=1), CONFIG)
    commanded = events[1]
    assert isinstance(commanded, ev.QemuBalloonCommanded) and commanded.value_bytes == 2 * GIB
    assert kinds(events) == ["TargetSet", "QemuBalloonCommanded", "QemuTargetReached"]
    hv = attached("hv-balloon", boot=GIB, maxmem=3 * GIB)
    events = process(hv, inp.SetTarget(target_bytes=8 * GIB, tick=1), CONFIG)
    assert hv.qemu is not None and hv.qemu.commanded_pages == (3 * GIB) >> 12


def test_bad_commands_and_foreign_inputs_are_rejected_not_raised() -> None:
    s = attached()
    assert kinds(process(s, inp.SetTarget(target_bytes=0, tick=1), CONFIG)) == ["CommandRejected"]
    assert kinds(process(s, inp.GuestMessage(raw=b"\x00" * 8, tick=1), CONFIG)) == ["CommandRejected"]
    assert kinds(process(s, inp.QemuActualChanged(actual_bytes=-1, tick=1), CONFIG)) == ["CommandRejected"]
    assert kinds(process(s, inp.QemuTracePages(op="ballooned", ranges=((5, 0),), tick=1), CONFIG)) == [
        "CommandRejected"
    ]
    none = attached("none")
    rejected = process(none, inp.SetTarget(target_bytes=GIB, tick=1), CONFIG)
    assert isinstance(rejected[0], ev.CommandRejected) and rejected[0].error_class == "DeviceNotActive"
    # QEMU inputs for a VM the DM gateway described are refused.
    dm_vm = initial_state("vm2")
    process(dm_vm, inp.ChannelOpened(boot_bytes=GIB, maxmem_bytes=GIB, tick=0), CONFIG)
    assert kinds(process(dm_vm, inp.QemuActualChanged(actual_bytes=GIB, tick=1), CONFIG)) == ["CommandRejected"]
    assert dm_vm.qemu is None


def test_command_failure_ends_the_target_in_flight() -> None:
    s = attached()
    process(s, inp.SetTarget(target_bytes=GIB, tick=1), CONFIG)
    process(s, inp.QemuCommandFailed(command="balloon", error_class="GenericError", desc="nope", tick=2), CONFIG)
    assert s.qemu is not None and s.qemu.commanded_pages is None and s.qemu.command_failures_total == 1
    assert process(s, inp.Tick(tick=50), CONFIG) == []


def test_trace_pages_form_the_exact_shadow_set_and_agree_with_actual() -> None:
    s = attached("hv-balloon", boot=GIB, maxmem=3 * GIB)
    process(s, inp.QemuTracePages(op="ballooned", ranges=((0x2A00, 95744), (0x1D800, 35328)), tick=1), CONFIG)
    process(s, inp.QemuActualChanged(actual_bytes=GIB - (131072 << 12), tick=1), CONFIG)
    assert s.ballooned_pages == 131072 and shadow_divergence(s) == 0
    process(s, inp.QemuTracePages(op="unballooned", ranges=((0x1D800, 35328),), tick=2), CONFIG)
    assert shadow_divergence(s) == 35328  # QEMU's actual has not caught up yet
    process(s, inp.QemuActualChanged(actual_bytes=GIB - (95744 << 12), tick=2), CONFIG)
    assert shadow_divergence(s) == 0
    process(s, inp.QemuTracePages(op="reset", ranges=(), tick=3), CONFIG)
    assert s.ballooned_pages == 0


def test_snapshot_round_trip_and_protocol_vm_snapshots_unchanged() -> None:
    s = attached("hv-balloon", boot=GIB, maxmem=3 * GIB)
    process(s, inp.SetTarget(target_bytes=GIB // 2, tick=1), CONFIG)
    process(s, inp.QemuTracePages(op="ballooned", ranges=((100, 50),), tick=1), CONFIG)
    again = VmState.from_snapshot(json.loads(json.dumps(s.to_snapshot())))
    assert again.to_snapshot() == s.to_snapshot()
    assert "qemu" not in initial_state("x").to_snapshot()


def qemu_scenario() -> tuple[list[inp.Input], list[ev.Event], list[bytes]]:
    """Every QEMU input and event kind once or more: (inputs, events, outbox payloads)."""
    s = initial_state("vm1")
    inputs: list[inp.Input] = [
        inp.QemuAttached(
            device="hv-balloon",
            boot_bytes=GIB,
            maxmem_bytes=3 * GIB,
            actual_bytes=GIB,
            qemu_version="10.0.13",
            address="/run/l2-qmp.sock",
            uuid="6b29fc40-ca47-1067-b31d-00dd010662da",  # -> VmIdentified
            tick=1,
        ),
        inp.QemuStatusReport(available_bytes=GIB // 2, committed_bytes=GIB // 4, source="hv-balloon", tick=2),
        inp.SetTarget(target_bytes=GIB // 2, tick=3),
        inp.QemuTracePages(op="ballooned", ranges=((0x2A00, 131072),), tick=4),
        inp.QemuActualChanged(actual_bytes=GIB // 2, tick=4),
        inp.SetTarget(target_bytes=GIB // 4, tick=5),
        inp.Tick(tick=20),
        inp.QemuCommandFailed(command="balloon", error_class="GenericError", desc="x", tick=21),
        inp.QemuDetached(reason="monitor closed", tick=22),
    ]
    events: list[ev.Event] = []
    outbox: list[bytes] = []
    for record in inputs:
        produced = process(s, record, CONFIG)
        events.extend(produced)
        outbox.extend(payload for _, payload in qemu_outbox_records(produced))
    return inputs, events, outbox


def test_the_schema_scenario_covers_every_qemu_kind() -> None:
    inputs, events, outbox = qemu_scenario()
    assert {i.KIND for i in inputs} >= {k.KIND for k in inp.QEMU_INPUTS}
    assert {e.KIND for e in events} >= {k for k in ev.EVENT_TYPES if k.startswith("Qemu")}
    assert len(outbox) == 2


_INPUTS = st.one_of(
    st.builds(inp.SetTarget, target_bytes=st.integers(-GIB, 4 * GIB)),
    st.builds(inp.QemuActualChanged, actual_bytes=st.integers(-1, 4 * GIB)),
    st.builds(
        inp.QemuStatusReport,
        available_bytes=st.integers(0, GIB),
        committed_bytes=st.integers(0, GIB),
        source=st.just("virtio-guest-stats"),
    ),
    st.builds(inp.QemuDetached, reason=st.text(max_size=5)),
    st.builds(
        inp.QemuCommandFailed, command=st.just("balloon"), error_class=st.just("GenericError"), desc=st.just("x")
    ),
    st.just(inp.Tick()),
    st.builds(
        inp.QemuAttached,
        device=st.sampled_from(["hv-balloon", "virtio-balloon", "none", "bogus"]),
        boot_bytes=st.integers(0, 4 * GIB),
        maxmem_bytes=st.integers(0, 8 * GIB),
        actual_bytes=st.integers(0, 4 * GIB),
        qemu_version=st.just("10.0.13"),
        address=st.just("/x.sock"),
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_INPUTS, max_size=40))
def test_any_input_sequence_replays_byte_for_byte(records: list[inp.Input]) -> None:
    """Decisions depend on the inbox only: re-deciding the stored inputs gives the same events,
    and folding the stored events gives the same state."""
    live = initial_state("vm1")
    inbox: list[str] = []
    log: list[str] = []
    for tick, record in enumerate(records):
        from dataclasses import replace

        stamped = replace(record, tick=tick)
        inbox.append(input_json(stamped))
        log.extend(event_json(e) for e in process(live, stamped, CONFIG))
        if live.qemu is not None:
            assert live.current_pages >= 0 and live.ballooned_pages >= 0
    replayed = initial_state("vm1")
    again = [event_json(e) for line in inbox for e in process(replayed, input_from_dict(loads(line)), CONFIG)]
    assert again == log
    folded = initial_state("vm1")
    for line in log:
        evolve(folded, event_from_dict(loads(line)))
    assert folded.to_snapshot() == live.to_snapshot()
    assert all(to_dict(input_from_dict(loads(line))) == loads(line) for line in inbox)
