"""Where the distributed deployment's logs live, as one typed object read from ``--broker`` and the
environment.

Why the URL carries the options: ``hvdm engine``, ``hvdm gateway``, ``hvdm run`` and ``hvdm audit``
all take the same ``--broker`` value, and every process of one deployment must agree on the topic
names and the partition count; putting them in the one string they already share makes that
agreement hard to get wrong::

    kafka://10.0.0.5:9092,10.0.0.6:9092?prefix=prod.hvdm&partitions=32

Each query option may also come from the environment (``HVDM_KAFKA_<NAME>``, e.g.
``HVDM_KAFKA_PARTITIONS=32``); the URL wins over the environment, and both over the defaults.

Options:

* ``prefix`` (``hvdm``): topic names are ``<prefix>.inbox``, ``.events``, ``.outbox``,
  ``.snapshots``, ``.meta``; the engine's consumer group is ``<prefix>.engine``.
* ``partitions`` (8): partition count of the four per-VM topics when they are created. It bounds
  how many engine workers can share the work.
* ``replication`` (1): replication factor for created topics.
* ``ticks`` (``worker``): who appends the clock ticks. ``worker``: the engine worker that owns a
  partition appends them, paced by its wall clock times ``speed``; ``external``: something else
  does (the deterministic test driver), the worker never ticks.
* ``speed`` (1.0): simulated seconds per wall second for the workers' tickers (``hvdm run`` uses 25
  with the demo scenario, as the embedded deployment does).
* ``session_timeout`` (6.0), ``heartbeat`` (1.0), ``rebalance_timeout`` (6.0), ``commit_interval``
  (0.2) seconds: consumer-group timing. A dead worker's partitions move after the session
  timeout; the defaults are short so fail-over takes seconds, not the Kafka default minute.
* ``fetch_wait`` (0.02) seconds: the longest a consumer's fetch waits for new records (see
  QUIRK(tansu) long-poll in ``kafka_log``).
* ``linger`` (0.002) seconds: how long the gateway's inbox publisher holds a batch open for more
  records. Longer lingers make fuller batches, which compress far better (see the README's Kafka
  log-size table: with zstd a status report costs the inbox ~6x more in batches of one than in
  batches of 16), at up to that much latency per guest message; a busy gateway fills batches
  without waiting. Other producers send at once.
* ``compression`` (``zstd``): the codec of every record batch this deployment's producers write
  (``zstd``, ``gzip`` or ``none``). The broker stores a batch as it was sent, so this is
  what the topics cost on disk (bench/kafka_log_size.py: zstd is the smallest, about a tenth of
  ``none`` for batches of 16 status reports or more; gzip is close behind). Readers
  decompress whatever codec a batch names, so the option can change at any time and topics holding
  batches of several codecs read as one log. zstd needs Kafka 2.1 or later (any tansu); an older
  broker takes ``gzip``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ENV_PREFIX = "HVDM_KAFKA_"
#: Batch codecs a deployment may choose. lz4 and snappy are left out: lz4 batches of status reports
#: took 1.5-2x the bytes of zstd's (bench/kafka_log_size.py) and each needs one more client library.
COMPRESSIONS = ("zstd", "gzip", "none")


class SettingsError(ValueError):
    """A ``--broker`` URL or environment value that cannot be used."""


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:9092"
    prefix: str = "hvdm"
    partitions: int = 8
    replication: int = 1
    ticks: str = "worker"
    speed: float = 1.0
    session_timeout: float = 6.0
    heartbeat: float = 1.0
    rebalance_timeout: float = 6.0
    commit_interval: float = 0.2
    fetch_wait: float = 0.02
    linger: float = 0.002
    compression: str = "zstd"

    # ------------------------------------------------------------------ topic names
    def topic(self, kind: str) -> str:
        return f"{self.prefix}.{kind}"

    @property
    def inbox(self) -> str:
        return self.topic("inbox")

    @property
    def events(self) -> str:
        return self.topic("events")

    @property
    def outbox(self) -> str:
        return self.topic("outbox")

    @property
    def snapshots(self) -> str:
        return self.topic("snapshots")

    @property
    def meta(self) -> str:
        return self.topic("meta")

    @property
    def compression_type(self) -> str | None:
        """The producers' ``compression_type`` (kafka-python, aiokafka and Faust spell it alike)."""
        return None if self.compression == "none" else self.compression

    @property
    def group_id(self) -> str:
        return self.topic("engine")

    @property
    def url(self) -> str:
        """A ``--broker`` URL that gives these settings back (for child processes)."""
        query = "&".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.name != "bootstrap")
        return f"kafka://{self.bootstrap}?{query}"

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> KafkaSettings:
        """``kafka://HOST:PORT[,HOST:PORT...][?option=value&...]``; see the module docstring."""
        env = os.environ if env is None else env
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc:
            raise SettingsError(f"broker URL must look like kafka://HOST:PORT, got {url!r}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "bootstrap":
                continue
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = raw
        for key, raw in parse_qsl(parts.query, keep_blank_values=True):
            values[key] = raw
        known = {f.name: f for f in fields(cls)}
        typed: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known or key == "bootstrap":
                raise SettingsError(f"unknown broker option {key!r}")
            default = getattr(cls(), key)
            try:
                typed[key] = type(default)(raw)
            except ValueError:
                raise SettingsError(f"broker option {key}={raw!r} is not a {type(default).__name__}") from None
        settings = replace(cls(bootstrap=parts.netloc), **typed)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.partitions < 1 or self.replication < 1:
            raise SettingsError("partitions and replication must be at least 1")
        if self.ticks not in ("worker", "external"):
            raise SettingsError("ticks must be 'worker' or 'external'")
        if self.compression not in COMPRESSIONS:
            raise SettingsError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if not 0 <= self.linger <= 60:
            raise SettingsError("linger must be between 0 and 60 seconds")
        if self.speed <= 0:
            raise SettingsError("speed must be positive")
        if not self.prefix or any(c not in _TOPIC_CHARS for c in self.prefix):
            raise SettingsError("prefix may contain only letters, digits, '.', '_' and '-'")


_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
