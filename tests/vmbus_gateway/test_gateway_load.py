"""Many guests on one gateway at once: no frame is lost or duplicated in either direction.

50 simulated Linux guests connect concurrently over UNIX sockets, send status reports and answer
balloon and unballoon requests while an operator keeps moving their targets; at the end the
fleet settles and every count must match, per VM: guest messages sent = gateway frames in =
inbox records, outbox messages = gateway frames out = host messages the guest received.
Counts, not timings: the simulated clock runs fast so the test takes seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from bench.gateway_load import (
    STATUS_DELAY_SECONDS,
    GatewayHost,
    GuestFleet,
    WarpClock,
    drops,
    event_kinds,
    log_counts,
    settle,
)

#: Simulated seconds per wall second. Faster would also make a scheduling stall of the test's one
#: event loop look like a status-report flood to the engine (several reports in one tick).
SPEED = 5.0


async def test_fifty_concurrent_guests_lose_no_frame(tmp_path: Path) -> None:
    db, sock = str(tmp_path / "hvdm.db"), str(tmp_path / "gw.sock")
    host = await GatewayHost.start(db, sock, speed=SPEED, post_init_wait_ticks=5, period_s=0.2, fraction=0.2)
    clock = WarpClock(SPEED)
    fleet = GuestFleet(sock, 50, clock.now, poll_interval_s=0.02)
    try:
        await fleet.connect(concurrency=50)
        assert len(host.server.connections) == 50
        clock.warp(STATUS_DELAY_SECONDS, 0.5)  # past the Linux guests' swallowed first status calls

        async def counters() -> dict[str, Any]:
            return host.counters()

        await asyncio.sleep(4.0)
        host.stop_operator()
        fleet.quiet()
        await settle(counters, fleet, quiet_for=1.0)
        per_vm = host.per_vm()
        sent, received = fleet.sent(), fleet.received()
        await fleet.stop()
    finally:
        await host.stop()
    inbox, outbox = log_counts(db)
    assert drops(sent, received, per_vm, inbox, outbox) == {
        "guest_to_gateway": 0,
        "gateway_to_inbox": 0,
        "outbox_to_gateway": 0,
        "gateway_to_guest": 0,
    }
    assert set(sent) == set(per_vm) == set(inbox) == set(outbox) and len(sent) == 50
    # It was real traffic: status reports from every guest, balloon and unballoon transactions,
    # and no protocol violation (a flood, several reports in one tick, would be timing: a stall).
    kinds = event_kinds(db)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        reporting = conn.execute("SELECT COUNT(DISTINCT vm) FROM events WHERE kind = 'StatusReported'").fetchone()[0]
    finally:
        conn.close()
    assert reporting == 50
    assert kinds.get("BalloonRequested", 0) > 0 and kinds.get("UnballoonRequested", 0) > 0, kinds
    violations = {k: v for k, v in kinds.items() if k.startswith("GuestViolation:")}
    assert set(violations) <= {"GuestViolation:STATUS_REPORT_FLOOD"}, violations
    assert sum(sent.values()) > 50 * 10 and sum(received.values()) > 50 * 2
