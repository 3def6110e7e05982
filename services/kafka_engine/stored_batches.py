"""What a Kafka topic costs the broker: its record batches exactly as fetched, counted, not parsed.

Why a raw fetch: a broker stores (and serves) each record batch as the producer built it -- header,
records, compressed as the batch's codec says -- so the bytes a fetch returns for a partition are
the bytes its log holds, less the broker's own index files. tansu keeps its logs in memory and has
no files to measure, so this is how ``bench/kafka_log_size.py`` and the tests tell what compression
and record encodings buy. The clients (kafka-python, aiokafka) parse batches away before a caller
sees them, so this module speaks one Fetch request (version 4, which every broker since Kafka 0.11
and tansu answer) over a plain socket and walks the batch headers with ``struct``.

It is a measuring tool for one broker holding every partition (tansu, a test cluster): a partition
led by another broker answers ``NOT_LEADER_OR_FOLLOWER`` and raises ``StoredBatchError``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Codec numbers of a batch's attributes (low 3 bits), as the Kafka protocol names them.
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_FETCH = 1
_FETCH_VERSION = 4
#: QUIRK(tansu): a fetch with max_wait_ms 0 is answered with no topics at all; a short wait is
#: answered with the data (after the wait: see the long-poll quirk in ``kafka_log``).
_FETCH_WAIT_MS = 10
_MAX_BYTES = 32 << 20
#: A v2 batch header: base offset, length, leader epoch, magic, crc, attributes, last offset delta,
#: first and max timestamp, producer id, epoch, base sequence, record count (61 bytes).
_HEADER = struct.Struct(">qiibIhiqqqhii")


class StoredBatchError(RuntimeError):
    """The broker answered a fetch with an error, or with bytes that are not record batches."""


@dataclass(frozen=True, slots=True)
class Batch:
    base_offset: int
    #: Bytes of the whole batch as stored (header, records, compressed if ``codec`` says so).
    size: int
    codec: str
    records: int
    #: The offset after the batch's last record (a compacted batch may hold fewer records).
    next_offset: int


@dataclass(slots=True)
class TopicBytes:
    """The batches of some partitions of one topic, added up."""

    bytes: int = 0
    records: int = 0
    batches: int = 0
    codecs: dict[str, int] = field(default_factory=dict)

    def add(self, batch: Batch) -> None:
        self.bytes += batch.size
        self.records += batch.records
        self.batches += 1
        self.codecs[batch.codec] = self.codecs.get(batch.codec, 0) + 1


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


class _Conn:
    def __init__(self, bootstrap: str, timeout: float) -> None:
        host, _, port = bootstrap.split(",")[0].rpartition(":")
        self.sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def _recv(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            chunk = self.sock.recv(n - len(chunks))
            if not chunk:
                raise StoredBatchError("the broker closed the connection")
            chunks += chunk
        return bytes(chunks)

    def fetch(self, topic: str, partition: int, offset: int) -> tuple[int, bytes]:
        """(high watermark, record bytes) of one partition from ``offset``."""
        self.correlation += 1
        body = (
            struct.pack(">iiiib", -1, _FETCH_WAIT_MS, 1, _MAX_BYTES, 0)
            + struct.pack(">i", 1)
            + _string(topic)
            + struct.pack(">i", 1)
            + struct.pack(">iqi", partition, offset, _MAX_BYTES)
        )
        request = struct.pack(">hhi", _FETCH, _FETCH_VERSION, self.correlation) + _string("hvdm-stored-bytes") + body
        self.sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", self._recv(4))
        data = self._recv(size)
        try:
            correlation, _throttle, topics = struct.unpack_from(">iii", data, 0)
            if correlation != self.correlation or topics != 1:
                raise StoredBatchError(f"fetch of {topic}[{partition}] answered {topics} topics")
            pos = 12
            (name_len,) = struct.unpack_from(">h", data, pos)
            pos += 2 + name_len
            (_partitions,) = struct.unpack_from(">i", data, pos)
            _p, error, high, _lso = struct.unpack_from(">ihqq", data, pos + 4)
            pos += 4 + 22
            (aborted,) = struct.unpack_from(">i", data, pos)
            pos += 4 + max(aborted, 0) * 16
            (length,) = struct.unpack_from(">i", data, pos)
        except struct.error as exc:
            raise StoredBatchError(f"fetch of {topic}[{partition}]: short answer ({exc})") from None
        if error:
            raise StoredBatchError(f"fetch of {topic}[{partition}] failed with Kafka error code {error}")
        return high, data[pos + 4 : pos + 4 + max(length, 0)]


def batches_of(records: bytes) -> Iterator[Batch]:
    """The complete v2 batches in a fetch's record bytes (a trailing partial batch is left out,
    as a fetch may cut the last one)."""
    pos = 0
    while pos + _HEADER.size <= len(records):
        base, length, _epoch, magic, _crc, attributes, delta, _t0, _t1, _pid, _pe, _seq, count = _HEADER.unpack_from(
            records, pos
        )
        if magic != 2:
            raise StoredBatchError(f"batch at offset {base} has magic {magic}, not 2")
        size = 12 + length
        if pos + size > len(records):
            return
        yield Batch(base, size, CODECS.get(attributes & 7, f"codec{attributes & 7}"), count, base + delta + 1)
        pos += size


def partition_batches(bootstrap: str, topic: str, partition: int, *, timeout: float = 30.0) -> Iterator[Batch]:
    """Every batch of ``topic``/``partition`` from its start to the high watermark of the fetches."""
    conn = _Conn(bootstrap, timeout)
    try:
        offset = 0
        while True:
            high, records = conn.fetch(topic, partition, offset)
            if offset >= high:
                return
            got = list(batches_of(records))
            if not got:
                raise StoredBatchError(f"fetch of {topic}[{partition}] at {offset} < {high} returned no batch")
            for batch in got:
                yield batch
                offset = max(offset, batch.next_offset)
    finally:
        conn.close()


def topic_bytes(bootstrap: str, topic: str, partitions: int) -> TopicBytes:
    """The batches of partitions ``0..partitions-1`` of ``topic``, added up."""
    out = TopicBytes()
    for p in range(partitions):
        for batch in partition_batches(bootstrap, topic, p):
            out.add(batch)
    return out
