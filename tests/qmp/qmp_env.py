"""A real EmbeddedService with its QMP servers on a temporary directory, for one test.

The service's wall-clock ticker is frozen (speed 1e-9): tests move the engine clock themselves
with ``GuestDriver.tick`` and the rate-limit clock with ``env.clock.now``, so nothing depends on
how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from services.dm_engine.config import EngineConfig
from services.embedded.service import EmbeddedService
from services.qmp import QmpServers, socket_path, start_qmp_servers
from tests.metrics.guest_driver import GuestDriver

FROZEN = 1e-9
FAST = EngineConfig(post_init_wait_ticks=1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    service: EmbeddedService
    servers: QmpServers
    clock: FakeClock
    qmp_dir: Path
    clients: list[QMPClient] = field(default_factory=list)

    def guest(self, vm: str, **kw: Any) -> GuestDriver:
        return GuestDriver(self.service, vm, **kw)

    async def ready_guest(self, vm: str, **kw: Any) -> GuestDriver:
        """A VM through handshake and post-init wait (IDLE), with its socket listening."""
        g = self.guest(vm, **kw)
        await g.handshake()
        await g.tick(2)
        await self.servers.sync()
        return g

    async def client(self, vm: str) -> QMPClient:
        c = QMPClient(f"test-{vm}")
        await asyncio.wait_for(c.connect(str(socket_path(self.qmp_dir, vm))), 5)
        self.clients.append(c)
        return c


@contextlib.asynccontextmanager
async def qmp_env(tmp_path: Path, config: EngineConfig = FAST) -> AsyncIterator[Env]:
    service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=config)
    await service.start()
    clock = FakeClock()
    qmp_dir = tmp_path / "qmp"
    servers = await start_qmp_servers(service, qmp_dir, clock=clock)
    env = Env(service, servers, clock, qmp_dir)
    try:
        yield env
    finally:
        for c in env.clients:
            await c.disconnect()
        await servers.close()
        await service.stop()


async def next_event(client: QMPClient, timeout: float = 5.0) -> dict[str, Any]:
    msg = await asyncio.wait_for(client.events.get(), timeout)
    return dict(msg)


async def drained_events(client: QMPClient) -> list[dict[str, Any]]:
    """Every event the server sent before now: a command round trip flushes the ordered stream."""
    await client.execute("query-status")
    return [dict(m) for m in client.events.clear()]
