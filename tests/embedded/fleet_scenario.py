"""A deterministic multi-VM story on the lockstep fleet, used to produce realistic logs."""

from __future__ import annotations

from pathlib import Path

from services.demo.scenario import settled
from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import AddBackend, PlugBackend, SetTarget, SystemReset
from services.dm_engine.state import ProtocolState
from services.embedded.lockstep import LockstepFleet
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest

GIB = 1 << 30
CONFIG = EngineConfig(post_init_wait_ticks=5)


def build_fleet(db: Path, vms: int = 3, profile: str = "linux") -> LockstepFleet:
    fleet = LockstepFleet(SqliteLog(db), CONFIG)
    for i in range(vms):
        guest = SimulatedGuest(GuestConfig(boot_bytes=2 * GIB, profile=profile, workload="steady", seed=i))
        fleet.add_vm(f"vm{i + 1}", guest, 2 * GIB, 16 * GIB)
    return fleet


def all_settled(fleet: LockstepFleet) -> bool:
    states = fleet.runner.states
    return all(settled(states.get(vm)) for vm in fleet.vms)


def run_story(fleet: LockstepFleet, tail_ticks: int = 3) -> None:
    """Handshake, shrink, hot-add past boot, shrink, reboot, grow: the demo, in lockstep."""
    for vm in fleet.vms:
        fleet.connect(vm)
    fleet.run_until(lambda f: all(f.runner.states[vm].protocol is ProtocolState.IDLE for vm in f.vms))
    fleet.advance(50)  # past the guests' 45 s status-report delay
    for vm in fleet.vms:
        fleet.submit(vm, SetTarget(target_bytes=GIB + GIB // 2))
    fleet.settle()
    fleet.run_until(all_settled)
    for vm in fleet.vms:
        fleet.submit(vm, AddBackend(backend_id="mem1", size_bytes=GIB))
        fleet.submit(vm, PlugBackend(backend_id="mem1"))
        fleet.submit(vm, SetTarget(target_bytes=3 * GIB))
    fleet.settle()
    fleet.run_until(all_settled)
    fleet.advance(5)
    for vm in fleet.vms:
        fleet.submit(vm, SetTarget(target_bytes=2 * GIB))
    fleet.settle()
    fleet.run_until(all_settled)
    for vm, v in fleet.vms.items():
        fleet.disconnect(vm)
        fleet.submit(vm, SystemReset())
        fleet.settle()
        fleet.connect(vm, v.guest.reboot(fleet.now))
    fleet.run_until(lambda f: all(f.runner.states[vm].protocol is ProtocolState.IDLE for vm in f.vms))
    for vm in fleet.vms:
        fleet.submit(vm, PlugBackend(backend_id="mem1"))
        fleet.submit(vm, SetTarget(target_bytes=2 * GIB + GIB // 2))
    fleet.settle()
    fleet.run_until(all_settled)
    fleet.advance(tail_ticks)
