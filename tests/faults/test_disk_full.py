"""A full disk under the embedded log: the service survives it, says so, and loses nothing.

Two ways in: a real small tmpfs filled to its last byte (genuine ENOSPC, root only, skipped
elsewhere) and an injected ``database or disk is full`` / ``disk I/O error`` for a window of time
(everywhere). Both go through the real embedded service: gateway socket, simulated guests, QMP
socket with the real ``qemu.qmp`` client, the metrics HTTP endpoint, and an audit of the log.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient

from services.dm_engine.config import EngineConfig
from services.dm_engine.state import ProtocolState
from services.embedded.clock import TickClock
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.runner import EngineRunner
from services.embedded.service import EmbeddedService
from services.event_log.sqlite_log import ALL_VMS, LogWriteError, SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest
from services.metrics import serve_for_service
from services.qmp import socket_path, start_qmp_servers
from services.vmbus_gateway.client import GatewayRefused, GuestLink
from services.vmbus_gateway.hello import Hello
from services.vmbus_gateway.server import GatewayServer
from tests.faults.disk import FaultyConnect, fill, free, small_tmpfs

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
FAST = EngineConfig(post_init_wait_ticks=1)
SPEED = 50.0


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.01)


def audit(db: Path) -> dict:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, "-m", "services", "audit", "--db", str(db), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def inbox_by_kind(log: SqliteLog, vm: str, kind: str) -> list[int]:
    return [row.pos for row in log.iter_inbox() if row.vm == vm and row.record["type"] == kind]


def stored_or_coalesced(log: SqliteLog, gateway: GatewayServer, vm: str = "vm1") -> int:
    """Guest messages in the inbox plus the status reports the gateway coalesced (by design, one
    stored per interval): every message the guest sent is one or the other, exactly once."""
    return len(inbox_by_kind(log, vm, "GuestMessage")) + gateway.status_coalesced


def tick_rows(log: SqliteLog) -> list[int]:
    return [row.tick for row in log.iter_inbox() if row.vm == ALL_VMS]


def linux_guest(vm: str, clock: Callable[[], float], seed: int = 1) -> GuestLink:
    guest = SimulatedGuest(GuestConfig(boot_bytes=2 * GIB, profile="linux", workload="steady", seed=seed))
    return GuestLink(guest, Hello(vm=vm, boot_bytes=2 * GIB, maxmem_bytes=8 * GIB), clock)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of the first ``name`` series whose labels include ``labels`` (``k="v"``)."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if (series == name or series.startswith(name + "{")) and labels in series:
            return float(value)
    raise AssertionError(f"{name} {{{labels}}} not in the scrape")


def assert_ticks_contiguous(log: SqliteLog) -> None:
    ticks = tick_rows(log)
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "a tick was lost or appended twice"


# ---------------------------------------------------------------------------------------------- the log alone
def test_a_full_tmpfs_is_reported_as_full_and_writes_resume_when_space_returns(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt") as mnt:
        log = SqliteLog(mnt / "hvdm.db")
        written: list[int] = []
        filler = fill(mnt)
        error: LogWriteError | None = None
        for i in range(100_000):
            try:
                log.append_input("vm1", i, {"type": "Tick", "tick": i, "pad": "x" * 200})
            except LogWriteError as exc:
                error = exc
                break
            written.append(i)
        assert error is not None, "the disk never filled up"
        # SQLite's own error, not "cannot rollback - no transaction is active".
        assert error.kind == "full" and "full" in str(error) and "rollback" not in str(error)
        assert not log.writable and log.write_errors["full"] >= 1
        with pytest.raises(LogWriteError):
            log.append_input("vm1", -1, {"type": "Tick", "tick": -1})  # still full: nothing half-written
        free(filler)
        log.append_input("vm1", 10**6, {"type": "Tick", "tick": 10**6})
        assert log.writable
        assert [r.tick for r in log.iter_inbox()] == [*written, 10**6]  # nothing lost, nothing twice
        log.close()


# ---------------------------------------------------------------------------------------------- a real full disk
async def test_the_service_survives_a_full_tmpfs_and_time_resumes(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt", size="4m") as mnt:
        db = mnt / "hvdm.db"
        service = EmbeddedService.open(db, speed=SPEED, config=FAST)
        await service.start()
        gateway = GatewayServer(EmbeddedBackend(service))
        sock = str(tmp_path / "gw.sock")
        await gateway.start(unix_path=sock)
        link = linux_guest("vm1", service.now_seconds)
        try:
            await link.open(unix_path=sock)
            await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.IDLE, what="vm1 IDLE")
            filler = fill(mnt)
            await wait_for(lambda: not service.log.writable, what="the log to fail")
            stalled_at = int(service.log.get_meta("last_tick") or 0)
            sent = link.sent_messages
            await wait_for(lambda: link.sent_messages >= sent + 3, what="the guest to send during the outage")
            assert int(service.log.get_meta("last_tick") or 0) == stalled_at  # no tick while full
            assert service.failure is None and service.log.write_errors["full"] > 0
            free(filler)
            resumed_from = service.clock.now_tick()
            # Time resumes by itself: every tick missed meanwhile is recorded, then new ones.
            await wait_for(lambda: int(service.log.get_meta("last_tick") or 0) > resumed_from, what="ticks")
            assert service.log.writable
            # Every message the guest sent is in the inbox exactly once (held back, not dropped).
            await wait_for(
                lambda: stored_or_coalesced(service.log, gateway) >= link.sent_messages,
                what="the guest's messages",
            )
            await link.stop()
            await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.CLOSED, what="close")
            assert stored_or_coalesced(service.log, gateway) == link.sent_messages
            assert_ticks_contiguous(service.log)
        finally:
            await link.stop()
            await gateway.close()
            await service.stop()
        report = audit(db)
        assert report["replay_matches"] is True
        assert report["consumed_position"] == report["inbox_high_watermark"]


# ---------------------------------------------------------------------------------------------- an injected fault
@pytest.mark.parametrize(("message", "kind"), [("database or disk is full", "full"), ("disk I/O error", "io")])
async def test_a_window_of_write_errors_through_the_embedded_service(tmp_path: Path, message: str, kind: str) -> None:
    db = tmp_path / "hvdm.db"
    faults = FaultyConnect()
    log = SqliteLog(db, connect=faults)
    runner = EngineRunner(log, FAST)
    service = EmbeddedService(log, runner, TickClock(tick_seconds=runner.config.tick_seconds, speed=SPEED))
    await service.start()
    gateway = GatewayServer(EmbeddedBackend(service))
    sock = str(tmp_path / "gw.sock")
    await gateway.start(unix_path=sock)
    qmp = await start_qmp_servers(service, tmp_path / "qmp")
    served = serve_for_service(service, "127.0.0.1", 0)
    link = linux_guest("vm1", service.now_seconds)
    late = linux_guest("vm2", service.now_seconds, seed=2)
    client = QMPClient("faults")
    try:
        await link.open(unix_path=sock)
        await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.IDLE, what="vm1 IDLE")
        await qmp.sync()
        await client.connect(str(socket_path(tmp_path / "qmp", "vm1")))

        faults.fail(message)
        await wait_for(lambda: not log.writable, what="the first failed write")
        stalled_at = int(log.get_meta("last_tick") or 0)
        # An operator's command is refused with a clear error, and nothing is recorded.
        with pytest.raises(ExecuteError) as info:
            await client.execute("balloon", {"value": GIB})
        assert f"event log not writable ({kind})" in str(info.value)
        # A new guest is refused with a reason it can act on.
        with pytest.raises(GatewayRefused, match=rf"event log not writable \({kind}\)"):
            await late.open(unix_path=sock)
        text = await asyncio.to_thread(scrape, served.url)
        assert sample(text, "hvdm_log_writable") == 0
        assert sample(text, "hvdm_log_write_errors_total", f'kind="{kind}"') > 0
        # The guest keeps sending status reports; the gateway holds them back.
        sent = link.sent_messages
        await wait_for(lambda: link.sent_messages >= sent + 3, what="the guest to send during the outage")
        assert int(log.get_meta("last_tick") or 0) == stalled_at, "a tick was recorded on a failing disk"
        assert service.failure is None and all(not t.done() for t in asyncio.all_tasks() if "hvdm" in t.get_name())

        faults.fail(None)
        resumed_from = service.clock.now_tick()
        await wait_for(lambda: int(log.get_meta("last_tick") or 0) > resumed_from, what="ticks to resume")
        await client.execute("balloon", {"value": GIB + GIB // 2})
        await wait_for(lambda: service.runner.states["vm1"].current_pages == (3 * GIB // 2) >> 12, what="balloon")
        await late.open(unix_path=sock)
        await wait_for(lambda: service.runner.states["vm2"].protocol is ProtocolState.IDLE, what="vm2 IDLE")
        text = await asyncio.to_thread(scrape, served.url)
        assert sample(text, "hvdm_log_writable") == 1
        await link.stop()
        await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.CLOSED, what="vm1 closed")
        # Nothing the guest sent was dropped and nothing was stored twice; no tick skipped or doubled.
        assert stored_or_coalesced(log, gateway, "vm1") == link.sent_messages
        assert len(inbox_by_kind(log, "vm1", "SetTarget")) == 1  # only the command that was acknowledged
        assert_ticks_contiguous(log)
    finally:
        await client.disconnect()
        await link.stop()
        await late.stop()
        served.close()
        await qmp.close()
        await gateway.close()
        await service.stop()
    report = audit(db)
    assert report["replay_matches"] is True
    assert report["consumed_position"] == report["inbox_high_watermark"]


async def test_a_stop_on_a_failing_disk_gives_up_loudly_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    faults = FaultyConnect()
    log = SqliteLog(db, connect=faults)
    runner = EngineRunner(log, FAST)
    service = EmbeddedService(log, runner, TickClock(tick_seconds=runner.config.tick_seconds, speed=SPEED))
    await service.start()
    gateway = GatewayServer(EmbeddedBackend(service))
    sock = str(tmp_path / "gw.sock")
    await gateway.start(unix_path=sock)
    link = linux_guest("vm1", service.now_seconds)
    await link.open(unix_path=sock)
    await wait_for(lambda: service.runner.states["vm1"].protocol is ProtocolState.IDLE, what="vm1 IDLE")
    await gateway.close()
    await link.stop()
    faults.fail("database or disk is full")
    assert await service.stop(close_channels=True, timeout=0.3) is False
    # The next start finds the log as the last successful commit left it, and closes the channel then.
    service = EmbeddedService.open(db, speed=SPEED, config=FAST)
    await service.start()
    assert service.runner.states["vm1"].protocol is not ProtocolState.CLOSED
    assert await service.stop(close_channels=True) is True
    report = audit(db)
    assert report["replay_matches"] is True
    assert report["vms"]["vm1"]["protocol_state"] == "CLOSED"
