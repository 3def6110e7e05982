"""Real-QEMU VMs on the Kafka deployment: the host's QEMU agent publishes to the inbox topic, an
``hvdm engine --broker`` worker decides (its outbox records are QMP commands), and the agent
delivers them to the monitor. A simulated QEMU monitor stands in for QEMU (tests/realguest has
the real ones)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from services.dm_engine import inputs as inp
from services.kafka_engine.gateway import start_gateway, stop_gateway
from services.kafka_engine.qemu_sink import attach_to_backend
from services.kafka_engine.settings import KafkaSettings
from services.kafka_engine.tansu import LocalBroker
from services.qemu_agent.simulated_qemu import SimulatedQemu
from tests.kafka.harness import Engines

pytestmark = pytest.mark.kafka

GIB = 1 << 30


async def until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_target_reaches_qemu_through_the_engine_worker(
    broker: LocalBroker, prefix: str, tmp_path: Path
) -> None:
    url = f"{broker.url}?prefix={prefix}&partitions=2"
    settings = KafkaSettings.from_url(url)
    sim = SimulatedQemu(str(tmp_path / "kvm1.sock"))
    await sim.start()
    engines = Engines(url, tmp_path)
    server, backend = await start_gateway(settings, unix_path=None, tcp=None)
    agent = await attach_to_backend(backend, [sim.path], poll_seconds=0.1)
    try:
        engines.start(1)
        await until("attach", lambda: "kvm1" in agent.sessions)
        backend.submit("kvm1", inp.SetTarget(target_bytes=GIB))
        await until("QEMU told the target by the worker's outbox", lambda: sim.target == GIB, 240)
        await until("QEMU at the target", lambda: sim.actual == GIB, 120)
        backend.submit("kvm1", inp.SetTarget(target_bytes=2 * GIB))
        await until("grown back", lambda: sim.actual == 2 * GIB, 120)
        assert sim.commands.count("balloon") == 2
    finally:
        await agent.close()
        await stop_gateway(server, backend)
        engines.stop_all()
        await sim.kill()
