"""A small fleet with something in every metric, driven through a real EmbeddedService.

* ``vm-a``: negotiated, status reports, ballooned down 256 MiB, one guest violation;
* ``vm-b``: negotiated, a 1 GiB backend hot-added through ``hv-balloon-add-memory``'s input;
* ``vm-c``: channel open, still waiting for the guest's version request.
"""

from __future__ import annotations

from services.dm_engine import inputs as inp
from services.embedded.service import EmbeddedService
from tests.metrics.guest_driver import GIB, MIB, GuestDriver

BOOT = 4 * GIB


async def drive_fleet(service: EmbeddedService) -> dict[str, GuestDriver]:
    a = GuestDriver(service, "vm-a")
    await a.handshake()
    await a.tick(3)
    await a.status(3 * GIB, 3 * GIB)
    await a.put(inp.SetTarget(target_bytes=BOOT - 256 * MIB))
    await a.answer()
    await a.put(inp.GuestMessage(raw=b"\x05\x00"))  # truncated header: a violation
    b = GuestDriver(service, "vm-b")
    await b.handshake()
    await b.tick(3)
    await b.put(inp.AddBackend(backend_id="mem1", size_bytes=GIB))
    await b.put(inp.PlugBackend(backend_id="mem1"))
    await b.put(inp.SetTarget(target_bytes=BOOT + GIB))
    await b.answer()
    c = GuestDriver(service, "vm-c")
    await c.open()
    states = service.runner.states
    assert states["vm-a"].current_pages == (BOOT - 256 * MIB) >> 12
    assert states["vm-a"].counters.violations
    assert states["vm-b"].hot_added_pages == GIB >> 12
    return {"vm-a": a, "vm-b": b, "vm-c": c}
