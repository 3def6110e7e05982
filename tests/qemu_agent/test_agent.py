"""The QEMU agent against simulated QEMU monitors, on the real embedded service (SQLite, engine loop).

The engine clock is frozen (speed 1e-9) so nothing times out by wall time; the agent's own
polling runs in real time at 50 ms. Real QEMU is covered by tests/realguest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_engine.state import ProtocolState
from services.embedded.qemu_sink import attach_to_service
from services.embedded.service import EmbeddedService
from services.qemu_agent.simulated_qemu import SimulatedQemu

GIB = 1 << 30
FROZEN = 1e-9


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[EmbeddedService]:
    svc = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=EngineConfig(qemu_stall_ticks=3))
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def sockets(tmp_path: Path) -> AsyncIterator[Callable[..., SimulatedQemu]]:
    sims: list[SimulatedQemu] = []

    def make(file: str, **kw: object) -> SimulatedQemu:
        sim = SimulatedQemu(str(tmp_path / f"{file}.sock"), **kw)  # type: ignore[arg-type]
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.kill()


async def until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def kinds_of(service: EmbeddedService, vm: str) -> list[str]:
    return [json.loads(row.record)["type"] for row in service.log.iter_events(vm, 0)]


async def test_attach_set_target_reach_and_status(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu]
) -> None:
    sim = sockets("web1")
    await sim.start()
    agent = await attach_to_service(service, [sim.path], poll_seconds=0.05)
    try:
        await until(
            "attach", lambda: "web1" in service.runner.states and service.runner.states["web1"].qemu is not None
        )
        state = service.runner.states["web1"]
        assert state.qemu is not None and state.qemu.device == "virtio-balloon" and state.boot_pages == (2 * GIB) >> 12
        await until("a status report", lambda: state.status is not None)
        service.submit("web1", inp.SetTarget(target_bytes=GIB))
        await until("QEMU's actual at 1 GiB", lambda: sim.actual == GIB and state.current_pages == GIB >> 12)
        await until("target reached", lambda: state.protocol is ProtocolState.IDLE and state.target_pending is False)
        assert "balloon" in sim.commands
        service.submit("web1", inp.SetTarget(target_bytes=2 * GIB))
        await until(
            "grown back", lambda: state.current_pages == (2 * GIB) >> 12 and state.protocol is ProtocolState.IDLE
        )
        assert kinds_of(service, "web1").count("QemuTargetReached") == 2
    finally:
        await agent.close()


async def test_query_name_names_the_vm_and_hv_balloon_reports_status(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu]
) -> None:
    sim = sockets("x", device="hv-balloon", name="db-7", boot_bytes=GIB, hot_add_bytes=2 * GIB, version=(10, 0, 13))
    await sim.start()
    agent = await attach_to_service(service, [sim.path], poll_seconds=0.05)
    try:
        await until("attach", lambda: "db-7" in service.runner.states)
        state = service.runner.states["db-7"]
        assert state.maxmem_pages == (3 * GIB) >> 12
        await until("status", lambda: state.counters.status_reports_total >= 1, timeout=5)
        service.submit("db-7", inp.SetTarget(target_bytes=3 * GIB))
        await until(
            "hot-added", lambda: state.current_pages == (3 * GIB) >> 12 and state.protocol is ProtocolState.IDLE
        )
        assert state.hot_added_pages == (2 * GIB) >> 12
    finally:
        await agent.close()


async def test_a_guest_at_its_floor_is_recorded_stalled(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu]
) -> None:
    sim = sockets("floor", floor_bytes=int(1.5 * GIB))
    await sim.start()
    agent = await attach_to_service(service, [sim.path], poll_seconds=0.05)
    try:
        await until("attach", lambda: "floor" in service.runner.states)
        service.submit("floor", inp.SetTarget(target_bytes=GIB))
        await until("stuck at the floor", lambda: service.runner.states["floor"].current_pages == int(1.5 * GIB) >> 12)
        for tick in range(1, 5):
            service.append_tick(tick)
        await until("stall recorded", lambda: "QemuTargetStalled" in kinds_of(service, "floor"))
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services", "audit", "--db", service.log.path, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(done.stdout)["vms"]["floor"]
        assert report["replay_matches"] is True
        (finding,) = report["qemu"]["findings"]
        assert finding["finding"] == "TARGET_STALLED" and finding["target_bytes"] == GIB
        assert finding["actual_bytes"] == int(1.5 * GIB)
        assert report["qemu"]["targets"][0]["outcome"] == "stalled"
    finally:
        await agent.close()


async def test_qemu_killed_detaches_and_a_new_qemu_is_reattached_with_the_target(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu]
) -> None:
    sim = sockets("vm9")
    await sim.start()
    agent = await attach_to_service(service, [sim.path], poll_seconds=0.05)
    try:
        await until("attach", lambda: "vm9" in agent.sessions)
        service.submit("vm9", inp.SetTarget(target_bytes=GIB))
        await until("reached", lambda: service.runner.states["vm9"].current_pages == GIB >> 12)
        await sim.kill()
        await until("detached", lambda: service.runner.states["vm9"].protocol is ProtocolState.CLOSED)
        qemu = service.runner.states["vm9"].qemu
        assert qemu is not None and not qemu.attached
        reborn = sockets("vm9")
        await reborn.start()  # a restarted QEMU boots at its full size
        await until("re-attached and shrunk again", lambda: reborn.actual == GIB, timeout=15)
        kinds = kinds_of(service, "vm9")
        assert kinds.count("QemuAttached") == 2 and "QemuDetached" in kinds
    finally:
        await agent.close()


async def test_a_busy_monitor_is_retried_not_fatal(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu]
) -> None:
    sim = sockets("busy")
    await sim.start()
    holder_r, holder_w = await asyncio.open_unix_connection(sim.path)  # "libvirt" holds the monitor
    await holder_r.readline()
    agent2 = await attach_to_service(service, [sim.path], poll_seconds=0.05)
    try:
        await until("busy seen", lambda: agent2.stats.busy >= 1, timeout=10)
        assert "busy" not in service.runner.states
        holder_w.close()
        await until("attached once free", lambda: "busy" in agent2.sessions, timeout=15)
    finally:
        await agent2.close()


async def test_qemu_dir_attaches_and_detaches_as_sockets_come_and_go(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu], tmp_path: Path
) -> None:
    a, b = sockets("a"), sockets("b", device="none")
    await a.start()
    agent = await attach_to_service(service, [], directory=str(tmp_path), poll_seconds=0.05)
    try:
        await until("a attached", lambda: "a" in agent.sessions)
        await b.start()
        await until("b attached", lambda: "b" in agent.sessions)
        rejected = service.submit("b", inp.SetTarget(target_bytes=GIB))
        await service.wait_processed(rejected)
        assert "CommandRejected" in kinds_of(service, "b")  # no balloon device: reported, left alone
        await a.kill()
        await until("a detached", lambda: service.runner.states["a"].protocol is ProtocolState.CLOSED)
        assert not os.path.exists(a.path)
    finally:
        await agent.close()


async def test_hostile_answers_are_dropped_and_counted(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu]
) -> None:
    sim = sockets("evil")
    await sim.start()
    agent = await attach_to_service(service, [sim.path], poll_seconds=0.05)
    try:
        await until("attach", lambda: "evil" in agent.sessions)
        sim.actual = sim.target = -5  # QEMU (or whatever listens there) now answers nonsense
        await until("bad answer counted", lambda: agent.sessions["evil"].counters.bad_answers > 0)
        assert service.runner.states["evil"].current_pages == (2 * GIB) >> 12
        sim.actual = sim.target = GIB
        await until("good answers flow again", lambda: service.runner.states["evil"].current_pages == GIB >> 12)
    finally:
        await agent.close()


async def test_the_live_rebalancer_resizes_a_real_vm(
    service: EmbeddedService, sockets: Callable[..., SimulatedQemu]
) -> None:
    """``hvdm rebalance --db`` (a separate process) sees the QEMU-managed VM in the fleet view and
    its target reaches QEMU as a QMP ``balloon``."""
    sim = sockets("rb", device="hv-balloon", version=(10, 0, 13))
    await sim.start()
    agent = await attach_to_service(service, [sim.path], poll_seconds=0.05)
    try:
        await until("status", lambda: "rb" in service.runner.states and service.runner.states["rb"].status is not None)
        db = service.log.path
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services", "rebalance", "--db", db, "--once", "--json", "--policy", "hyperv"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        written = [json.loads(line) for line in done.stdout.splitlines()]
        assert [w["vm"] for w in written] == ["rb"]
        target = int(written[0]["target_bytes"])
        assert 0 < target < 2 * GIB
        service.append_tick(service.now_tick() + 1)  # wakes the engine, which reads the new inbox rows
        await until("QEMU told the rebalancer's target", lambda: sim.target == target // 4096 * 4096)
        await until("reached", lambda: service.runner.states["rb"].current_pages == target // 4096)
    finally:
        await agent.close()


async def test_a_hostile_monitor_never_stops_the_service(service: EmbeddedService, tmp_path: Path) -> None:
    """Whatever listens at a monitor path (garbage, a 1 MiB line, a greeting then nonsense answers)
    costs the agent a retry, never the service; a real monitor at another path is attached meanwhile."""
    answers = [
        b"not json at all\r\n",
        b'{"QMP": ' + b"[" * 100_000 + b"\r\n",
        b"x" * (1 << 20) + b"\r\n",
        b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}}\r\n'
        b'{"return": {}}\r\n{"return": {"qemu": "seven"}}\r\n{"return": 5}\r\n',
    ]
    served = 0

    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        writer.write(answers[served % len(answers)])
        served += 1
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.close()

    bad_path = str(tmp_path / "evil.sock")
    server = await asyncio.start_unix_server(hostile, path=bad_path)
    good = SimulatedQemu(str(tmp_path / "good.sock"))
    await good.start()
    agent = await attach_to_service(service, [bad_path, good.path], poll_seconds=0.05)
    try:
        await until("every hostile answer tried", lambda: served >= len(answers) + 1, timeout=60)
        await until("the real monitor attached", lambda: "good" in agent.sessions)
        assert "evil" not in service.runner.states
        service.submit("good", inp.SetTarget(target_bytes=GIB))
        await until("the good VM still served", lambda: good.actual == GIB)
    finally:
        await agent.close()
        server.close()
        await good.kill()
