"""Batch compression on the real broker, and the audit split by partition.

One demo run through the distributed deployment starts with uncompressed batches and switches to
zstd mid-scenario (engine worker and gateway restarted with the new setting, as an operator would):
the run must still match the embedded run event for event, the topics must hold batches of both
codecs (the old ones are still read: by the new worker's recovery, the gateway, the projection and
the audit), the audit must re-decide the whole mixed log byte for byte, and the audit read and run
in two processes by partition must give the single-process report exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from services.audit import audit
from services.dm_engine.config import EngineConfig
from services.kafka_engine.audit_partitions import audit_partitions, vms_by_partition
from services.kafka_engine.audit_reader import KafkaLogReader
from services.kafka_engine.kafka_log import new_producer
from services.kafka_engine.stored_batches import topic_bytes
from services.kafka_engine.tansu import LocalBroker
from tests.kafka.harness import Engines, KafkaLockstep, describe_logs, lockstep_settings
from tests.kafka.scenario import embedded_run
from tests.kafka.test_audit_reader import recorded, redecide

GUESTS = 3


@pytest.mark.kafka
@pytest.mark.slow
async def test_switching_to_zstd_mid_scenario_changes_nothing_and_the_audit_splits_by_partition(
    broker: LocalBroker, prefix: str, tmp_path: Path
) -> None:
    expected = await embedded_run(tmp_path / "embedded.db", GUESTS)
    zstd = lockstep_settings(broker.url, prefix)
    assert zstd.compression == "zstd"  # the default
    plain = dataclasses.replace(zstd, compression="none")
    (tmp_path / "plain").mkdir()
    (tmp_path / "zstd").mkdir()
    engines = [Engines(plain.url, tmp_path / "plain")]
    driver = KafkaLockstep(plain, tmp_path, GUESTS)
    switched: list[int] = []

    async def switch_during_ballooning(d: KafkaLockstep) -> None:
        if switched or not any(s.target_pages is not None for s in d.projection.states.values()):
            return
        engines[0].stop_all()
        engines.append(Engines(zstd.url, tmp_path / "zstd"))
        engines[1].start(1)
        d.settings = zstd
        d.producer.close()
        d.producer = new_producer(zstd)
        await d.restart_gateway()
        switched.append(d.tick)

    try:
        engines[0].start(1)
        await driver.start()
        result = await driver.run_demo(on_tick=switch_during_ballooning)
        single = await asyncio.to_thread(KafkaLogReader, zstd)
        parallel = await asyncio.to_thread(KafkaLogReader, zstd, jobs=2, min_records=0)
    finally:
        await driver.close()
        for group in engines:
            group.stop_all()
    logs = describe_logs(tmp_path / "plain") + describe_logs(tmp_path / "zstd")
    try:
        assert switched and result.completed, logs
        assert result.accounting == expected.accounting
        assert result.events == expected.events, logs
        # Both codecs are on the broker, in every topic the run wrote to before and after the switch.
        partitions = driver.partitions
        for topic in (zstd.inbox, zstd.events, zstd.outbox):
            stored = topic_bytes(broker.bootstrap, topic, partitions)
            assert stored.codecs.get("none", 0) > 0 and stored.codecs.get("zstd", 0) > 0, (topic, stored)
        # The audit reads the mixed log and re-decides it byte for byte.
        assert single.consumed_position() == single.inbox_high_watermark() > 0
        assert redecide(single, single_config(single)) == recorded(single)
        report = audit(single)
        assert report.replay_matches, report.first_divergence
        assert report.events == sum(len(v) for v in expected.events.values())
        # Read by two processes (one per pair of partitions): the same cut, position for position.
        assert parallel.read_jobs == 2
        assert list(parallel.iter_inbox()) == list(single.iter_inbox())
        assert list(parallel.iter_events()) == list(single.iter_events())
        assert parallel.snapshots() == single.snapshots()
        assert parallel.inbox_ends == single.inbox_ends
        # Audited by two processes, each the VMs of its partitions: the single-process report.
        assert len(vms_by_partition(parallel, parallel.consumed_position())) >= 2
        merged = audit_partitions(parallel, 2, min_records=0)
        assert merged.to_dict() == report.to_dict()
        assert audit_partitions(parallel, 2, min_records=0, from_pos=report.consumed_position // 2).to_dict() == (
            audit(single, from_pos=report.consumed_position // 2).to_dict()
        )
    finally:
        single.close()
        parallel.close()


def single_config(reader: KafkaLogReader) -> EngineConfig:
    stored = reader.get_meta("engine_config")
    assert stored is not None
    return EngineConfig.from_dict(json.loads(stored))
