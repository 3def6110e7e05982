"""Issue 9 section 1 on the distributed deployment: hostile records on the inbox topic.

A producer that can write to the inbox topic (there is no authentication on a plain broker) puts
envelopes with out-of-range or wrong-typed numbers, bad VM ids, deep nesting and non-JSON bytes on
every partition in the middle of the demo scenario. A real ``hvdm engine --broker`` worker against
the real tansu broker skips and counts them: it stays alive, and every VM's event log and
accounting are exactly those of the embedded run of the same scenario, which saw none of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.kafka_engine.tansu import LocalBroker
from tests.faults.test_stored_records import HOSTILE_ENVELOPES
from tests.kafka.conftest import broker, prefix  # noqa: F401 - fixtures
from tests.kafka.harness import Engines, KafkaLockstep, describe_logs, lockstep_settings
from tests.kafka.scenario import RunResult, embedded_run

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GUESTS = 2


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return asyncio.run(embedded_run(tmp_path_factory.mktemp("embedded") / "log.db", GUESTS))


@pytest.fixture
async def deployment(
    broker: LocalBroker,  # noqa: F811
    prefix: str,  # noqa: F811
    tmp_path: Path,
) -> AsyncIterator[tuple[KafkaLockstep, Engines]]:
    settings = lockstep_settings(broker.url, prefix)
    engines = Engines(settings.url, tmp_path)
    driver = KafkaLockstep(settings, tmp_path, GUESTS)
    try:
        engines.start(1)
        await driver.start()
        yield driver, engines
    finally:
        await driver.close()
        engines.stop_all()


async def test_hostile_inbox_records_change_nothing_and_the_worker_stays_up(
    deployment: tuple[KafkaLockstep, Engines], embedded: RunResult, tmp_path: Path
) -> None:
    driver, engines = deployment
    published = 0

    async def inject(d: KafkaLockstep) -> None:
        nonlocal published
        if d.tick not in (3, 40):
            return
        futures = []
        for p in range(d.partitions):
            for raw in HOSTILE_ENVELOPES:
                key = b"vm1" if raw[:1] == b"{" else b"\xff"
                futures.append(d.producer.send(d.settings.inbox, key=key, value=raw, partition=p))
        await asyncio.to_thread(d.producer.flush)
        for f in futures:
            d._published(f.get(30))  # the driver's settle then waits until the worker passed them
        published += len(futures)
        await d.settle()

    result = await driver.run_demo(on_tick=inject)
    assert published == 2 * driver.partitions * len(HOSTILE_ENVELOPES)
    assert result.completed, describe_logs(tmp_path)
    assert engines.alive() == [0], describe_logs(tmp_path)
    assert result.accounting == embedded.accounting
    for vm, events in embedded.events.items():
        assert result.events.get(vm) == events, f"{vm}: event logs differ\n{describe_logs(tmp_path)}"
    assert set(result.events) == set(embedded.events)  # the hostile VM ids never became VMs
