"""Scripted VMs whose inputs become a real SQLite inbox, consumed by the real ``EngineRunner``.

Each VM is a ``Harness`` (the guest is played by hand through the real codec), so a script can
answer exactly what the engine asked for; every input it feeds is also appended, in order, to one
shared list of inbox rows. Clock ticks are broadcast rows (vm ``*``) delivered to every VM that
exists, which is the runner's rule. ``write`` then builds the log and lets the runner decide it,
so tests audit logs produced the way the service produces them -- and can check that the runner
recorded exactly what the harnesses decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.dm_engine import EngineConfig
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.inputs import ALL_VMS
from services.dm_engine.records import to_dict
from services.dm_protocol import (
    BalloonResponse,
    CapabilitiesReport,
    HotAddResponse,
    HotRemoveResponse,
    StatusReport,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
)
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog
from tests.dm_engine.harness import FAST, GIB_PAGES, Harness

PAGE = 4096


@dataclass
class LoggedHarness(Harness):
    """A Harness whose inputs also go to the shared inbox; its ticks are the fleet's ticks."""

    fleet: ScriptedLog | None = None

    def feed(self, record: inp.Input) -> list[ev.Event]:
        assert self.fleet is not None
        if not isinstance(record, inp.Tick):
            self.fleet.rows.append((self.vm_id, record))
        return super().feed(record)

    def advance_ticks(self, n: int) -> list[ev.Event]:
        assert self.fleet is not None
        before = len(self.events)
        self.fleet.advance_ticks(n)
        return self.events[before:]


@dataclass
class ScriptedLog:
    config: EngineConfig = FAST
    tick: int = 0
    rows: list[tuple[str, inp.Input]] = field(default_factory=list)
    vms: dict[str, LoggedHarness] = field(default_factory=dict)

    def vm(self, vm_id: str = "vm1", **kw: Any) -> LoggedHarness:
        h = LoggedHarness(vm_id=vm_id, config=self.config, fleet=self, **kw)
        h.tick = self.tick
        self.vms[vm_id] = h
        return h

    def advance_ticks(self, n: int) -> None:
        for _ in range(n):
            self.tick += 1
            record = inp.Tick(tick=self.tick)
            self.rows.append((ALL_VMS, record))
            for vm_id in sorted(self.vms):
                h = self.vms[vm_id]
                h.tick = self.tick
                Harness.feed(h, record)

    def inbox_rows(self) -> list[tuple[str, int, dict[str, Any], None]]:
        return [(vm, record.tick, to_dict(record), None) for vm, record in self.rows]

    def write(self, path: Path, *, batch: int = 7, restart_every: int | None = None) -> Path:
        """Append the inbox, then let the real runner consume it in small batches (and restart
        it every ``restart_every`` batches, which exercises recovery from snapshots)."""
        log = SqliteLog(path)
        try:
            log.append_inputs(self.inbox_rows())
            runner = EngineRunner(log, self.config, snapshot_every=5)
            batches = 0
            while runner.run_batch(batch):
                batches += 1
                if restart_every and batches % restart_every == 0:
                    runner = EngineRunner(log, snapshot_every=5)
        finally:
            log.close()
        return path

    def recorded_by_harness(self, vm_id: str) -> list[str]:
        return self.vms[vm_id].event_log()


# ---------------------------------------------------------------------------------- scenarios
def handshake(h: Harness, *, hot_remove: bool = False) -> None:
    h.open()
    h.guest(VersionRequest(trans_id=1, version=0x00020000))
    h.guest(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7, hot_remove=hot_remove))
    h.advance_ticks(h.config.post_init_wait_ticks)


def honest(fleet: ScriptedLog) -> LoggedHarness:
    """vm1 (4 GiB boot): hot-add 1 GiB, balloon 2048 pages over 3 ticks, give 1024 back at once.

    Final: hot-added 1 GiB, ballooned 1024 pages, current = target = boot + 1 GiB - 1024 pages.
    """
    h = fleet.vm("vm1")
    handshake(h)
    boot = h.state.boot_pages
    h.guest(StatusReport(num_avail=700_000, num_committed=300_000))
    h.command(inp.AddBackend(tick=h.tick, backend_id="mem1", size_bytes=1 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="mem1"))
    h.set_target_pages(boot + GIB_PAGES)
    h.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
    h.advance_ticks(1)
    h.set_target_pages(boot + GIB_PAGES - 2048)  # BalloonRequested at this tick
    h.advance_ticks(1)
    h.guest(BalloonResponse(more_pages=True, ranges=((0x10000, 1024),)))
    h.advance_ticks(2)
    h.guest(BalloonResponse(more_pages=False, ranges=((0x20000, 1024),)))  # ends 3 ticks later
    h.advance_ticks(1)
    h.set_target_pages(boot + GIB_PAGES - 1024)  # unballoon 1024: answered within the same tick
    h.guest(UnballoonResponse())
    h.advance_ticks(2)
    return h


def malicious(fleet: ScriptedLog) -> LoggedHarness:
    """vm2 misbehaves in known ways; the comments count the violations per reason."""
    h = fleet.vm("vm2")
    h.guest(StatusReport(num_avail=1, num_committed=1))  # UNEXPECTED_MESSAGE (closed channel)
    handshake(h)
    boot = h.state.boot_pages
    h.set_target_pages(boot - 4096)
    h.guest(BalloonResponse(more_pages=True, ranges=((1000, 10), (1005, 10))))  # DOUBLE_FREE (within)
    h.advance_ticks(1)
    h.guest(BalloonResponse(more_pages=True, ranges=((1000, 4),)))  # DOUBLE_FREE (already ballooned)
    h.guest(BalloonResponse(more_pages=True, ranges=((boot - 8, 16),)))  # PAGES_NOT_OWNED
    h.raw(b"\x63\x00\x08\x00\x00\x00\x00\x00")  # UNKNOWN_TYPE
    h.guest(VersionResponse(is_accepted=True))  # WRONG_DIRECTION
    h.feed(inp.MalformedFrame(tick=h.tick, reason="BAD_PACKET_TYPE"))  # MALFORMED_FRAME
    h.advance_ticks(h.config.balloon_timeout_ticks)  # TIMEOUT
    return h


def hot_remove_and_reboot(fleet: ScriptedLog) -> LoggedHarness:
    """vm3: hot-add, hot-remove half of it (protocol 2.0), VMBus reset, then a reboot and the
    backend deleted."""
    h = fleet.vm("vm3")
    handshake(h, hot_remove=True)
    boot = h.state.boot_pages
    base = 32 * GIB_PAGES
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=1 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(boot + GIB_PAGES)
    h.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
    h.set_target_pages(boot + GIB_PAGES // 2)
    h.guest(HotRemoveResponse(result=0, more_pages=False, ranges=((base + GIB_PAGES // 2, GIB_PAGES // 2),)))
    h.command(inp.VmbusReset(tick=h.tick))
    handshake(h, hot_remove=True)
    h.feed(inp.ChannelClosed(tick=h.tick, reason="reboot"))
    h.command(inp.SystemReset(tick=h.tick))
    h.command(inp.RemoveBackend(tick=h.tick, backend_id="m"))
    return h


def stalled_hot_add(fleet: ScriptedLog) -> LoggedHarness:
    """vm4: the guest never answers a hot-add (abandoned after ``hot_add_timeout_ticks``), and a
    second backend is plugged, never used, and deleted (its vDIMM is unplugged)."""
    h = fleet.vm("vm4")
    handshake(h)
    boot = h.state.boot_pages
    for backend in ("a", "b"):
        h.command(inp.AddBackend(tick=h.tick, backend_id=backend, size_bytes=1 << 30))
        h.command(inp.PlugBackend(tick=h.tick, backend_id=backend))
    h.set_target_pages(boot + GIB_PAGES)
    h.advance_ticks(h.config.hot_add_timeout_ticks)
    h.command(inp.RemoveBackend(tick=h.tick, backend_id="b"))
    return h


def every_scenario(fleet: ScriptedLog) -> list[LoggedHarness]:
    return [honest(fleet), malicious(fleet), hot_remove_and_reboot(fleet), stalled_hot_add(fleet)]
