"""Forgetting VMs keeps the three ways of knowing a VM's state in agreement (hypothesis): the live
runner, a runner recovered from the log (snapshots taken at any point), and the audit's replay of
the inbox -- for any mix of hellos, closes, operator forgets and retention ticks over a few VMs."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.audit.replay import replay_inbox
from services.dm_engine import events as ev
from services.dm_engine import initial_state
from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import ALL_VMS
from services.dm_engine.records import event_from_dict, loads, to_dict
from services.dm_engine.state import VmState
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog

CONFIG = EngineConfig(post_init_wait_ticks=1, retention_ticks=3)
VMS = ("a", "b", "c")

#: (vm, kind): open, close, forget, or a tick for every VM.
Step = tuple[str, str]
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(VMS), st.sampled_from(("open", "close", "forget"))),
        st.just((ALL_VMS, "tick")),
    ),
    max_size=40,
)


def record(kind: str, tick: int) -> inp.Input:
    if kind == "open":
        return inp.ChannelOpened(tick=tick, boot_bytes=1 << 30, maxmem_bytes=1 << 32)
    if kind == "close":
        return inp.ChannelClosed(tick=tick, reason="test")
    if kind == "forget":
        return inp.ForgetVm(tick=tick)
    return inp.Tick(tick=tick)


def snapshots(states: Mapping[str, VmState]) -> dict[str, str]:
    return {vm: json.dumps(s.to_snapshot(), sort_keys=True) for vm, s in states.items()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=steps, snapshot_every=st.integers(1, 5))
def test_live_recovered_and_replayed_states_agree(program: list[Step], snapshot_every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = SqliteLog(Path(tmp) / "hvdm.db")
        try:
            runner = EngineRunner(log, CONFIG, snapshot_every=snapshot_every)
            tick = 0
            for vm, kind in program:
                if kind == "tick":
                    tick += 1
                log.append_input(vm, tick, to_dict(record(kind, tick)))
                runner.run_until_idle()
            live = snapshots(runner.states)

            recovered = EngineRunner(log, CONFIG)
            assert snapshots(recovered.states) == live

            replay, decisions = replay_inbox(log, CONFIG, log.consumed_position())
            replayed: dict[str, list[ev.Event]] = {}
            for d in decisions:
                replayed.setdefault(d.vm, []).extend(d.events)
            # The replay meets every VM of the inbox; those that never decided anything stay empty.
            every = snapshots(replay.states)
            assert {vm: every[vm] for vm in live} == live
            empty = {vm: snapshots({vm: initial_state(vm)})[vm] for vm in every if vm not in live}
            assert {vm: every[vm] for vm in empty} == empty
            for vm in VMS:
                stored = [event_from_dict(loads(r.record)) for r in log.iter_events(vm)]
                assert stored == replayed.get(vm, [])
            # A forgotten VM is gone everywhere, and nothing but a disconnected VM was forgotten.
            for vm in VMS:
                stored = [event_from_dict(loads(r.record)) for r in log.iter_events(vm)]
                if stored and isinstance(stored[-1], ev.VmForgotten):
                    assert vm not in runner.states
        finally:
            log.close()
