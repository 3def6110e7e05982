"""Logs made by the real engine driving simulated guests (honest and malicious) in lockstep.

One VM per log, one story: handshake, balloon down, grow past boot RAM (unballoon, then hot-add
into a plugged backend), balloon down again, grow a little. Every kind of host transaction
happens, so every misbehaviour of ``services.guest_sim``'s malicious profiles gets its chance.
Short timeouts keep a silent guest's story short.
"""

from __future__ import annotations

from pathlib import Path

from services.dm_engine.config import EngineConfig
from services.dm_engine.inputs import AddBackend, PlugBackend, SetTarget
from services.dm_engine.state import ProtocolState
from services.embedded.lockstep import LockstepFleet
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest

GIB = 1 << 30
CONFIG = EngineConfig(
    post_init_wait_ticks=5,
    balloon_timeout_ticks=20,
    unballoon_timeout_ticks=20,
    hot_add_timeout_ticks=30,
    retry_backoff_ticks=5,
)
BOOT = 2 * GIB


def story(db: Path, profile: str = "linux", *, seed: int = 1, workload: str = "idle") -> LockstepFleet:
    fleet = LockstepFleet(SqliteLog(db), CONFIG)
    guest = SimulatedGuest(GuestConfig(boot_bytes=BOOT, profile=profile, workload=workload, seed=seed))
    fleet.add_vm("vm1", guest, BOOT, 8 * GIB)
    fleet.connect("vm1")
    fleet.run_until(lambda f: f.runner.states["vm1"].protocol is ProtocolState.IDLE, max_ticks=200)
    fleet.advance(50)  # past the Linux guest's 45 s status-report delay
    fleet.submit("vm1", AddBackend(backend_id="mem1", size_bytes=GIB))
    fleet.submit("vm1", PlugBackend(backend_id="mem1"))
    for target, ticks in ((GIB + GIB // 2, 30), (BOOT + GIB // 2, 45), (GIB, 30), (GIB + GIB // 4, 30)):
        fleet.submit("vm1", SetTarget(target_bytes=target))
        fleet.settle()
        fleet.advance(ticks)
    return fleet
