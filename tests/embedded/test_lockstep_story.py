"""The demo story on real simulated Linux guests, deterministically, through the real engine runner."""

from __future__ import annotations

from pathlib import Path

from services.dm_engine import check_invariants
from services.dm_engine.records import event_from_dict
from tests.embedded.fleet_scenario import GIB, build_fleet, run_story


def test_story_reaches_every_target_with_exact_accounting(tmp_path: Path) -> None:
    fleet = build_fleet(tmp_path / "a.db")
    run_story(fleet)
    for vm, state in fleet.runner.states.items():
        assert check_invariants(state) == [], vm
        assert state.current_pages << 12 == 2 * GIB + GIB // 2, vm
        assert state.hot_added_pages << 12 == GIB // 2, vm
        assert state.counters.violations == {}, vm
        kinds = [event_from_dict(__import__("json").loads(r.record)).KIND for r in fleet.log.iter_events(vm)]
        for kind in ("PagesBallooned", "UnballoonRequested", "HotAddCompleted", "MemoryBackendUnused"):
            assert kind in kinds, (vm, kind)
        guest = fleet.vms[vm].guest.snapshot()  # type: ignore[attr-defined]
        # The guest's own view agrees with the host's accounting.
        assert guest["ballooned_pages"] == state.ballooned_pages, vm


def test_same_story_gives_the_same_log(tmp_path: Path) -> None:
    logs = []
    for name in ("a.db", "b.db"):
        fleet = build_fleet(tmp_path / name)
        run_story(fleet)
        logs.append([(r.vm, r.seq, r.record) for r in fleet.log.iter_events()])
    assert logs[0] == logs[1]
