"""A lockstep fleet of simulated Linux guests whose log the rebalancer reads and writes."""

from __future__ import annotations

from pathlib import Path

from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import AddBackend, PlugBackend
from services.dm_engine.state import ProtocolState
from services.embedded.lockstep import LockstepFleet
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest

GIB = 1 << 30
CONFIG = EngineConfig(post_init_wait_ticks=5)
WORKLOADS = ("idle", "steady", "bursty")


def build(
    db: Path, workloads: tuple[str, ...] = WORKLOADS, boot: int = 2 * GIB, maxmem: int = 8 * GIB
) -> LockstepFleet:
    """Guests connected, negotiated and past their 45 s status-report delay; one 4 GiB backend
    plugged per VM so that the rebalancer can grow them past boot RAM."""
    fleet = LockstepFleet(SqliteLog(db), CONFIG)
    for i, workload in enumerate(workloads):
        guest = SimulatedGuest(GuestConfig(boot_bytes=boot, workload=workload, seed=i))
        fleet.add_vm(f"vm{i + 1}", guest, boot, maxmem)
    for vm in fleet.vms:
        fleet.connect(vm)
    fleet.run_until(lambda f: all(f.runner.states[vm].protocol is ProtocolState.IDLE for vm in f.vms))
    for vm in fleet.vms:
        fleet.submit(vm, AddBackend(backend_id="mem1", size_bytes=maxmem - boot))
        fleet.submit(vm, PlugBackend(backend_id="mem1"))
    fleet.settle()
    fleet.advance(50)
    return fleet
