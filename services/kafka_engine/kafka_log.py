"""The Kafka log adapter: topics, producers, reading a partition to its end, meta, committed offsets.

Everything that talks to the broker outside Faust's own consumer lives here, and so does every
workaround for a broker quirk. The code is correct on Apache Kafka and Redpanda; each workaround
is marked ``QUIRK(tansu)`` with what it avoids, and none changes the meaning of the logs:

* QUIRK(tansu) ListOffsets: ``end_offsets`` / ``seek_to_end`` answer offsets that are too small.
  The end of a partition is therefore never asked for: a reader seeks to a known offset and reads
  until its position reaches the high-watermark reported by the fetch responses
  (``read_partition``, ``highwater``). That is also the right thing on any broker, as it is the
  end the reader actually saw.
* QUIRK(tansu) idempotence and transactions: InitProducerId answers UnknownError, so neither the
  idempotent producer nor Kafka transactions (nor Faust's ``exactly_once``) can be used. Producers
  run with ``acks=all`` and one request in flight per connection, which keeps each partition's
  records in send order without idempotence; effectively-once comes from dedupe by inbox position
  (``partition.py``), which needs neither. On a broker with transactions the same records would be
  correct inside a transaction too; we keep one code path.
* QUIRK(tansu) compaction: ``cleanup.policy=compact`` is accepted and nothing is compacted. The
  snapshots topic is still created compacted (so Kafka keeps it small), and recovery never relies
  on compaction: it takes the latest snapshot per VM by sequence number, and checkpoint markers
  bound how much of the events topic it reads.
* QUIRK(tansu) long-poll fetches: a fetch waiting for data is answered only when its
  ``fetch_max_wait_ms`` expires, not when a record arrives (measured: 650 ms per hop with
  Faust's hard-wired 1500 ms). Every consumer here asks for a short wait instead
  (``settings.fetch_wait``; Faust's through ``faust_batch.FaustTransport``, registered as the
  ``hvdmkafka://`` broker scheme). On Kafka a short wait only costs a few more idle fetches.
* QUIRK(tansu) Faust table recovery loses updates: the engine keeps no Faust table; all state is
  rebuilt from our own snapshots and events topics (``faust_options`` declares no store).
* QUIRK(tansu) JoinGroup is answered 2.0 s after it is sent, whatever the rebalance timeout
  (measured with a bare aiokafka consumer). Nothing to work around, but it is a third of a
  fail-over here: session timeout (3 s in the tests) + heartbeat + 2 s + recovery (~0.3 s).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, TopicAlreadyExistsError

from ..dm_engine.inputs import ALL_VMS
from .envelope import decode, is_tick, meta_value
from .settings import KafkaSettings

log = logging.getLogger("hvdm.kafka_log")

#: Topics that hold one partition per VM key and must share one partition count.
PER_VM_TOPICS = ("inbox", "events", "outbox", "snapshots")

# QUIRK(tansu) idempotence/transactions (module docstring): order per partition from one request in
# flight, durability from acks=all, duplicates removed by the readers, never by the broker.
KAFKA_PYTHON_PRODUCER: dict[str, Any] = {
    "acks": "all",
    "retries": 10,
    "max_in_flight_requests_per_connection": 1,
    "enable_idempotence": False,
}
AIOKAFKA_PRODUCER: dict[str, Any] = {"acks": "all", "enable_idempotence": False, "linger_ms": 2}
#: How long a producer waits for more records before sending a batch, unless told otherwise (the
#: gateway's inbox publisher takes ``settings.linger``).
LINGER_SECONDS = 0.002
#: The engine worker's producer batches (it builds them itself, one per partition per write):
#: below Kafka's default ``message.max.bytes`` (1 MiB) so any broker takes them.
PRODUCER_BATCH_BYTES = 512 * 1024
PRODUCER_REQUEST_BYTES = 4 * 1024 * 1024


class TopologyError(RuntimeError):
    """The topics exist but cannot hold this deployment (different partition counts)."""


# ---------------------------------------------------------------------------------------- topics
def ensure_topics(settings: KafkaSettings, *, timeout: float = 30.0) -> dict[str, int]:
    """Create the deployment's topics if missing; return each topic's partition count.

    The per-VM topics must all have the same partition count, because every result is written to
    the partition number of the input it came from.
    """
    wanted = {settings.topic(kind): settings.partitions for kind in PER_VM_TOPICS}
    wanted[settings.meta] = 1
    configs = {settings.snapshots: {"cleanup.policy": "compact"}}
    admin = _admin(settings, timeout)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, n, settings.replication, topic_configs=configs.get(name, {}))
            for name, n in wanted.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created them first
                admin.create_topics(missing)
            log.info("event=topics_created topics=%s", ",".join(t.name for t in missing))
    finally:
        admin.close()
    counts = partition_counts(settings, list(wanted), timeout=timeout)
    per_vm = {counts[settings.topic(k)] for k in PER_VM_TOPICS}
    if len(per_vm) != 1:
        raise TopologyError(
            f"topics {', '.join(settings.topic(k) for k in PER_VM_TOPICS)} differ in partitions: {counts}"
        )
    return counts


def partition_counts(settings: KafkaSettings, topics: list[str], *, timeout: float = 30.0) -> dict[str, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        out: dict[str, int] = {}
        for topic in topics:
            while True:
                parts = consumer.partitions_for_topic(topic)
                if parts:
                    out[topic] = len(parts)
                    break
                if time.monotonic() > deadline:
                    raise TopologyError(f"topic {topic} has no partitions after {timeout:.0f} s")
                time.sleep(0.1)
                consumer.topics()  # refresh metadata
        return out
    finally:
        consumer.close()


def inbox_partitions(settings: KafkaSettings) -> int:
    return partition_counts(settings, [settings.inbox])[settings.inbox]


def _admin(settings: KafkaSettings, timeout: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=10_000)
        except (KafkaError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# ---------------------------------------------------------------------------------------- producing
def new_producer(settings: KafkaSettings, *, linger: float = LINGER_SECONDS) -> KafkaProducer:
    """A kafka-python producer of the deployment's settings, batches compressed as they say."""
    return KafkaProducer(
        bootstrap_servers=settings.bootstrap,
        compression_type=settings.compression_type,
        linger_ms=round(linger * 1000),
        **KAFKA_PYTHON_PRODUCER,
    )


# ---------------------------------------------------------------------------------------- reading
class PartitionReader:
    """Reads single partitions from a given offset to their end, without a consumer group.

    One reader keeps one connection; it is not thread-safe (kafka-python consumers are not).
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
            # A reader wants the end it can see now, not to wait for records that may never come.
            fetch_max_wait_ms=5,
            # kafka-python checks CRC32C in pure Python (most of a recovery's CPU); the broker
            # checked every batch when it was produced, and the engine's own consumer (aiokafka,
            # C extension) still checks what it decides from.
            check_crcs=False,
        )
        #: Last end seen per (topic, partition): a valid place to seek when asking for the end again.
        self._known: dict[tuple[str, int], int] = {}

    def close(self) -> None:
        self._consumer.close()

    def _assign(self, positions: dict[TopicPartition, int]) -> None:
        consumer = self._consumer
        # A fresh assignment forgets the high-watermarks of earlier fetches: an end must come from
        # a fetch made after this seek, or a reader could stop short.
        consumer.unsubscribe()
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)

    def read(
        self, topic: str, partition: int, start: int = 0, stop: int | None = None, *, timeout: float = 60.0
    ) -> Iterator[ConsumerRecord]:
        """Records of ``topic``/``partition`` with ``start <= offset`` up to the high-watermark the
        fetches report (or up to ``stop``, exclusive, when given and lower).

        QUIRK(tansu) ListOffsets: the end is the fetch high-watermark, never ``end_offsets``.
        """
        consumer = self._consumer
        tp = TopicPartition(topic, partition)
        self._assign({tp: start})
        deadline = time.monotonic() + timeout
        while True:
            end = consumer.highwater(tp)
            position = consumer.position(tp)
            if end is not None and position is not None:
                self._known[(topic, partition)] = end
                limit = end if stop is None else min(stop, end)
                if position >= limit:
                    return
            batches = consumer.poll(timeout_ms=10, max_records=5000)
            for record in batches.get(tp, ()):
                if stop is not None and record.offset >= stop:
                    return
                yield record
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] did not reach its end in {timeout:.0f} s")

    def read_many(self, topic: str, starts: dict[int, int], *, timeout: float = 60.0) -> Iterator[ConsumerRecord]:
        """Like ``read`` for several partitions at once (one fetch covers them all); records of one
        partition come in offset order, partitions interleave."""
        consumer = self._consumer
        tps = {TopicPartition(topic, p): start for p, start in starts.items()}
        self._assign(tps)
        deadline = time.monotonic() + timeout
        while True:
            done = True
            for tp in tps:
                end = consumer.highwater(tp)
                if end is None or consumer.position(tp) < end:
                    done = False
                else:
                    self._known[(topic, tp.partition)] = end
            if done:
                return
            for records in consumer.poll(timeout_ms=10, max_records=5000).values():
                yield from records
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end in {timeout:.0f} s")

    def highwaters(self, topic: str, partitions: range | list[int]) -> dict[int, int]:
        """Each partition's end as a fetch reports it (QUIRK(tansu) ListOffsets: no end_offsets)."""
        consumer = self._consumer
        tps = {TopicPartition(topic, p): self._known.get((topic, p), 0) for p in partitions}
        self._assign(tps)
        deadline = time.monotonic() + 30.0
        while any(consumer.highwater(tp) is None for tp in tps):
            # Any fetch response carries the high-watermark; from the last known end it is small.
            consumer.poll(timeout_ms=5, max_records=1)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch response for {topic}")
        out = {}
        for tp in tps:
            end = consumer.highwater(tp)
            assert end is not None
            self._known[(topic, tp.partition)] = out[tp.partition] = end
        return out

    def highwater(self, topic: str, partition: int) -> int:
        return self.highwaters(topic, [partition])[partition]

    def last_tick_before(self, partition: int, offset: int, window: int = 256) -> int | None:
        """The number of the last Tick record at an inbox offset below ``offset`` (None: no tick).

        Reads backwards in growing windows; ticks are frequent, so the first window nearly always
        holds one.
        """
        end = offset
        while end > 0:
            start = max(0, end - window)
            last: int | None = None
            for record in self.read(self.settings.inbox, partition, start, end):
                if record.key == ALL_VMS.encode():
                    value = decode(record.value)
                    if is_tick(value):
                        last = int(value["record"]["tick"])
            if last is not None:
                return last
            end, window = start, window * 4
        return None


# ---------------------------------------------------------------------------------------- meta
def read_meta(settings: KafkaSettings) -> dict[str, str]:
    """The deployment's meta records; the first record of each key wins (writers race only once)."""
    reader = PartitionReader(settings)
    try:
        out: dict[str, str] = {}
        for record in reader.read(settings.meta, 0):
            with contextlib.suppress(ValueError, KeyError):
                value = json.loads(record.value)
                out.setdefault(str(value["key"]), str(value["value"]))
        return out
    finally:
        reader.close()


def put_meta_if_absent(settings: KafkaSettings, key: str, value: str) -> str:
    """Record ``key`` unless some process did first; returns the value that holds."""
    current = read_meta(settings).get(key)
    if current is not None:
        return current
    producer = new_producer(settings)
    try:
        producer.send(settings.meta, key=key.encode(), value=meta_value(key, value), partition=0).get(30)
    finally:
        producer.close()
    return read_meta(settings)[key]


# ---------------------------------------------------------------------------------------- progress
class GroupOffsets:
    """The engine group's committed inbox offsets, asked with one request per call.

    The committed offset is the engine's consumed position: every input below it has its records
    written (the worker waits for its sends before Faust may commit).
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._admin = _admin(settings, 30.0)

    def close(self) -> None:
        self._admin.close()

    def committed(self, partitions: int) -> dict[int, int]:
        """Committed offset per inbox partition (0 where the group has committed nothing)."""
        tps = [TopicPartition(self.settings.inbox, p) for p in range(partitions)]
        offsets = self._admin.list_group_offsets({self.settings.group_id: tps}).get(self.settings.group_id, {})
        out = dict.fromkeys(range(partitions), 0)
        for tp, meta in offsets.items():
            if tp.topic == self.settings.inbox and tp.partition in out and meta.offset >= 0:
                out[tp.partition] = int(meta.offset)
        return out


def committed_offsets(settings: KafkaSettings, partitions: int | None = None) -> dict[int, int]:
    """One-shot ``GroupOffsets.committed``."""
    n = partitions if partitions is not None else inbox_partitions(settings)
    group = GroupOffsets(settings)
    try:
        return group.committed(n)
    finally:
        group.close()
