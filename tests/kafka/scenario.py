"""The demo scenario in lockstep: time moves only when nobody has anything left to say.

Why lockstep: the Kafka tests compare whole event logs, per VM, with an uninterrupted run and with
the embedded deployment. With wall-clock time two runs differ in when status reports land; in
lockstep a run is a function of the scenario alone, so any difference is a real bug (a lost,
doubled or reordered input). Each tick: append Tick n, let every guest poll at time n, run until
quiet, then let each VM's demo script take its next step (the same ``advance_demo`` the embedded
``hvdm run`` uses).

``embedded_run`` is the baseline: ``LockstepFleet`` on a SQLite log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.demo.scenario import DemoScript, advance_demo
from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import Input
from services.dm_engine.state import VmState
from services.embedded.lockstep import LockstepFleet
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest

GIB = 1 << 30
BOOT = 4 * GIB
MAXMEM = 16 * GIB
#: The gateway's reason for a connection the guest closed; the lockstep fleet uses the same one.
CLOSED_REASON = "guest closed the connection"


class TrackedGuest:
    """A SimulatedGuest that records when it was last polled.

    That is how the Kafka driver knows every guest has seen the new tick (the gateway link polls
    in the background) before it waits for the fleet to go quiet.
    """

    def __init__(self, guest: SimulatedGuest) -> None:
        self.guest = guest
        #: The lockstep fleet announces the guest's RAM layout from it, as the gateway hello does.
        self.config = guest.config
        self.polled_at = -1.0

    @property
    def closed(self) -> bool:
        return self.guest.closed

    def connect(self, now: float) -> list[bytes]:
        return self.guest.connect(now)

    def reboot(self, now: float) -> list[bytes]:
        return self.guest.reboot(now)

    def receive(self, message: bytes, now: float) -> list[bytes]:
        return self.guest.receive(message, now)

    def poll(self, now: float) -> list[bytes]:
        out = self.guest.poll(now)
        self.polled_at = now
        return out


def make_guests(count: int, seed: int = 1) -> dict[str, TrackedGuest]:
    return {
        f"vm{i + 1}": TrackedGuest(SimulatedGuest(GuestConfig(boot_bytes=BOOT, workload="steady", seed=seed + i)))
        for i in range(count)
    }


@dataclass(slots=True)
class RunResult:
    ticks: int
    completed: bool
    #: Per VM, its events as canonical JSON, in seq order.
    events: dict[str, list[str]]
    accounting: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def accounting(states: dict[str, VmState]) -> dict[str, dict[str, Any]]:
    """The final accounting the tests compare (bytes and the protocol state)."""
    out = {}
    for vm, s in sorted(states.items()):
        out[vm] = {
            "protocol_state": s.protocol.value,
            "current_bytes": s.current_pages << 12,
            "target_bytes": None if s.target_pages is None else s.target_pages << 12,
            "ballooned_bytes": s.ballooned_pages << 12,
            "hot_added_bytes": s.hot_added_pages << 12,
            "violations": dict(sorted(s.counters.violations.items())),
        }
    return out


class _FleetService:
    """The demo's host (``services.demo.host.DemoHost``) on a lockstep fleet."""

    def __init__(self, fleet: LockstepFleet) -> None:
        self.fleet = fleet
        self.runner = fleet.runner

    @property
    def states(self) -> dict[str, Any]:
        return self.fleet.runner.states

    @property
    def consumed(self) -> int:
        return self.fleet.runner.consumed

    def now_seconds(self) -> float:
        return self.fleet.now

    def submit(self, vm: str, record: Input) -> int:
        return self.fleet.submit(vm, record)

    def now_tick(self) -> int:
        return self.fleet.tick


async def embedded_run(
    path: Path, guests: int, *, max_ticks: int = 2000, config: EngineConfig | None = None
) -> RunResult:
    log = SqliteLog(path)
    fleet = LockstepFleet(log, config or EngineConfig())
    models = make_guests(guests)
    for vm, guest in models.items():
        fleet.add_vm(vm, guest, BOOT, MAXMEM)  # type: ignore[arg-type]
    for vm in models:
        fleet.connect(vm)

    def rebooter(vm: str) -> Any:
        async def reboot(reset_host: Callable[[], None]) -> None:
            fleet.disconnect(vm, CLOSED_REASON)
            reset_host()
            fleet.connect(vm, models[vm].reboot(fleet.now))

        return reboot

    scripts = {vm: DemoScript(vm, BOOT, rebooter(vm)) for vm in models}
    service = _FleetService(fleet)
    while fleet.tick < max_ticks and not all(s.done for s in scripts.values()):
        fleet.advance()
        for script in scripts.values():
            await advance_demo(script, service)  # type: ignore[arg-type]
    events = {vm: [row.record for row in log.iter_events(vm)] for vm in models}
    result = RunResult(fleet.tick, all(s.done for s in scripts.values()), events, accounting(fleet.runner.states))
    log.close()
    return result


def dump(result: RunResult) -> str:
    return json.dumps({"ticks": result.ticks, "accounting": result.accounting}, indent=1, sort_keys=True)
