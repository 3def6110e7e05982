"""The demo scenario through the whole distributed deployment, against a real broker.

simulated guests -> gateway -> Kafka -> two engine worker processes -> outbox -> guests, in
lockstep (see ``harness.py``), compared with the embedded deployment running the same scenario:
the event log of every VM must be identical, record for record, and so must the accounting --
also when an engine worker is killed with SIGKILL mid-scenario, and when the gateway restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.kafka_engine.tansu import LocalBroker
from tests.kafka.harness import Engines, KafkaLockstep, describe_logs, lockstep_settings
from tests.kafka.scenario import RunResult, embedded_run

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GUESTS = 3


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return asyncio.run(embedded_run(tmp_path_factory.mktemp("embedded") / "log.db", GUESTS))


@pytest.fixture
async def deployment(broker: LocalBroker, prefix: str, tmp_path: Path) -> AsyncIterator[tuple[KafkaLockstep, Engines]]:
    settings = lockstep_settings(broker.url, prefix)
    engines = Engines(settings.url, tmp_path)
    driver = KafkaLockstep(settings, tmp_path, GUESTS)
    try:
        engines.start(2)
        await driver.start()
        yield driver, engines
    finally:
        await driver.close()
        engines.stop_all()


def assert_same(result: RunResult, expected: RunResult, workdir: Path) -> None:
    assert result.completed, describe_logs(workdir)
    assert result.accounting == expected.accounting
    for vm, events in expected.events.items():
        assert result.events.get(vm) == events, f"{vm}: event logs differ\n{describe_logs(workdir)}"
    assert result.ticks == expected.ticks


async def test_two_workers_match_the_embedded_run(
    deployment: tuple[KafkaLockstep, Engines], embedded: RunResult, tmp_path: Path
) -> None:
    driver, engines = deployment
    result = await driver.run_demo()
    assert_same(result, embedded, tmp_path)
    assert engines.alive() == [0, 1]


async def test_sigkill_of_a_worker_mid_scenario_changes_nothing(
    deployment: tuple[KafkaLockstep, Engines], embedded: RunResult, tmp_path: Path
) -> None:
    driver, engines = deployment
    killed: list[int] = []

    async def kill_during_ballooning(d: KafkaLockstep) -> None:
        # Mid-scenario, with the fleet shrinking (balloon traffic in flight on the next tick).
        states = d.projection.states
        if not killed and any(s.target_pages is not None for s in states.values()):
            engines.kill(0)
            killed.append(d.tick)

    result = await driver.run_demo(on_tick=kill_during_ballooning)
    assert killed, "the scenario never reached the kill point"
    assert engines.alive() == [1]
    assert_same(result, embedded, tmp_path)


async def test_gateway_restart_mid_scenario_changes_nothing(
    deployment: tuple[KafkaLockstep, Engines], embedded: RunResult, tmp_path: Path
) -> None:
    driver, _ = deployment
    restarts: list[int] = []
    first_target: list[int] = []

    async def restart(d: KafkaLockstep) -> None:
        # Twice: just after the first targets (ballooning) and well into the story (hot-add, reboot).
        if not first_target and any(s.target_pages is not None for s in d.projection.states.values()):
            first_target.append(d.tick)
        if first_target and d.tick in (first_target[0] + 1, first_target[0] + 25):
            await d.restart_gateway()
            restarts.append(d.tick)

    result = await driver.run_demo(on_tick=restart)
    assert len(restarts) == 2
    assert_same(result, embedded, tmp_path)


async def test_a_worker_joining_mid_scenario_changes_nothing(
    broker: LocalBroker, prefix: str, embedded: RunResult, tmp_path: Path
) -> None:
    """Scale-out: the rebalance revokes every partition of the running worker; it keeps the ones it
    gets back (no recovery, Faust re-reads them from the committed offsets and the engine skips
    what it decided), the newcomer recovers the others. Every settle waits for the group's
    commits to reach the inbox's end, so a re-read that was never acknowledged would hang it."""
    settings = lockstep_settings(broker.url, prefix)
    engines = Engines(settings.url, tmp_path)
    driver = KafkaLockstep(settings, tmp_path, GUESTS)
    joined: list[int] = []

    async def join_during_ballooning(d: KafkaLockstep) -> None:
        if not joined and any(s.target_pages is not None for s in d.projection.states.values()):
            engines.start(1)
            joined.append(d.tick)

    try:
        engines.start(1)
        await driver.start()
        result = await driver.run_demo(on_tick=join_during_ballooning)
        alive = engines.alive()
    finally:
        await driver.close()
        engines.stop_all()
    assert joined, "the scenario never reached the join point"
    assert alive == [0, 1]
    assert_same(result, embedded, tmp_path)
    # The first worker kept two partitions through the rebalance: it recovered only at start-up.
    first = (tmp_path / "engine0.log").read_text()
    assert first.count("event=partition_ready") == 4, describe_logs(tmp_path)
