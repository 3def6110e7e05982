"""A deterministic fleet: simulated guests and the engine advanced in lockstep, no sockets.

The same inbox/engine/outbox path as the service, but time is a loop variable instead of the
wall clock, so a scenario gives the same log on every run. Tests use it to produce realistic logs
(crash/restart, audits), benchmarks use it to measure ballooning speed in guest time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..dm_engine.config import EngineConfig
from ..dm_engine.inputs import ALL_VMS, ChannelClosed, ChannelOpened, GuestMessage, Input, Tick
from ..dm_engine.records import to_dict
from ..event_log.sqlite_log import SqliteLog
from .runner import EngineRunner


class GuestModel(Protocol):
    @property
    def closed(self) -> bool: ...

    def connect(self, now: float) -> list[bytes]: ...
    def receive(self, message: bytes, now: float) -> list[bytes]: ...
    def poll(self, now: float) -> list[bytes]: ...
    def reboot(self, now: float) -> list[bytes]: ...


@dataclass(slots=True)
class FleetVm:
    guest: GuestModel
    boot_bytes: int
    maxmem_bytes: int
    delivered: int = 0
    connected: bool = False
    host_messages: int = 0


@dataclass(slots=True)
class LockstepFleet:
    log: SqliteLog
    config: EngineConfig = field(default_factory=EngineConfig)
    vms: dict[str, FleetVm] = field(default_factory=dict)
    tick: int = 0
    runner: EngineRunner = field(init=False)
    #: Called after every tick with the fleet, e.g. to drive a scenario.
    on_tick: list[Callable[[LockstepFleet], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runner = EngineRunner(self.log, self.config)

    @property
    def now(self) -> float:
        return self.tick * self.config.tick_seconds

    def add_vm(self, vm: str, guest: GuestModel, boot_bytes: int, maxmem_bytes: int) -> None:
        self.vms[vm] = FleetVm(guest, boot_bytes, maxmem_bytes)

    def submit(self, vm: str, record: Input) -> int:
        return self.log.append_input(vm, self.tick, to_dict(_stamp(record, self.tick)))

    def connect(self, vm: str, first_messages: list[bytes] | None = None) -> None:
        """Open a new channel; a rebooted guest passes the first messages its reboot produced.

        As through the gateway, a new channel is announced with a VMBus reset and the guest's RAM
        layout (a simulated guest's own, from its configuration, so host and guest agree)."""
        v = self.vms[vm]
        ram_ranges = getattr(getattr(v.guest, "config", None), "ram_ranges", None)
        ram = ram_ranges() if callable(ram_ranges) else ()
        self.submit(vm, ChannelOpened(boot_bytes=v.boot_bytes, maxmem_bytes=v.maxmem_bytes, ram=ram, reset="vmbus"))
        self.settle()
        v.delivered = self.log.outbox_high_watermark(vm)
        v.connected = True
        self._send(vm, first_messages if first_messages is not None else v.guest.connect(self.now))
        self.settle()

    def disconnect(self, vm: str, reason: str = "closed") -> None:
        v = self.vms[vm]
        v.connected = False
        self.submit(vm, ChannelClosed(reason=reason))
        self.settle()

    def _send(self, vm: str, messages: list[bytes]) -> None:
        if messages:
            self.log.append_inputs(
                [(vm, self.tick, to_dict(GuestMessage(tick=self.tick, raw=m)), None) for m in messages]
            )

    def settle(self, max_rounds: int = 10_000) -> None:
        """Run the engine and deliver host messages until nobody has anything left to say."""
        for _ in range(max_rounds):
            self.runner.run_until_idle()
            moved = False
            for vm, v in self.vms.items():
                if not v.connected:
                    continue
                rows = self.log.read_outbox(vm, v.delivered, 10_000)
                for row in rows:
                    v.delivered = row.seq
                    v.host_messages += 1
                    self._send(vm, v.guest.receive(row.message, self.now))
                    moved = True
                if v.guest.closed:
                    v.connected = False
                    self.submit(vm, ChannelClosed(reason="guest closed the channel"))
                    moved = True
            if not moved and self.runner.lag() == 0:
                return
        raise RuntimeError("fleet did not settle")

    def advance(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.tick += 1
            self.log.append_input(ALL_VMS, self.tick, to_dict(Tick(tick=self.tick)))
            for vm, v in self.vms.items():
                if v.connected:
                    self._send(vm, v.guest.poll(self.now))
            self.settle()
            for cb in self.on_tick:
                cb(self)

    def run_until(self, predicate: Callable[[LockstepFleet], bool], max_ticks: int = 100_000) -> int:
        """Advance tick by tick until ``predicate`` holds; returns the ticks it took."""
        for n in range(max_ticks):
            if predicate(self):
                return n
            self.advance()
        raise TimeoutError(f"condition not reached in {max_ticks} ticks")

    def snapshot(self) -> dict[str, Any]:
        return {vm: s.to_snapshot() for vm, s in sorted(self.runner.states.items())}


def _stamp(record: Input, tick: int) -> Input:
    from dataclasses import replace

    return replace(record, tick=tick)
