"""Which host each VM runs on, on the Kafka deployment: the ``<prefix>.hosts`` topic.

Why a topic of its own and not a field of the engine's inputs: where a VM runs is not something
the engine decides from (its decisions, and so replays and digests, stay exactly as they were),
and the rebalancer should not have to read the whole inbox -- status reports every second from
every VM -- to learn a fact that changes once per channel. So each gateway publishes, to one small
single-partition topic:

    {"kind": "host", "host": "h1", "capacity_bytes": ..., "ram_bytes": ..., "reserve_bytes": ...}
    {"kind": "vm", "vm": "vm7", "host": "h1"}        # each time a guest opens its channel here

keyed by ``host:<name>`` and the VM id. The latest record of a key wins (a VM that moved to
another host's gateway is on that host from its next channel open). The same reader also keeps the
rebalancer's own single-partition topic (``<prefix>.rebalancer``, see ``kafka_live``) created.

Host capacity is the machine's RAM minus a reserve for the host itself (``--host-reserve``,
default 2 GiB) unless the gateway is given one (``--host-capacity``); the rebalancer's own
``--host-capacity NAME=SIZE`` overrides both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from ..dm_engine.inputs import ChannelOpened, Input
from ..kafka_engine.gateway_backend import KafkaBackend
from ..kafka_engine.kafka_log import PartitionReader
from ..kafka_engine.settings import KafkaSettings

log = logging.getLogger("hvdm.hosts")

DEFAULT_RESERVE_BYTES = 2 << 30
#: Longest host name accepted (from a flag or a record): names go into metric labels and JSON.
MAX_HOST_NAME = 253


def hosts_topic(settings: KafkaSettings) -> str:
    return settings.topic("hosts")


def rebalancer_topic(settings: KafkaSettings) -> str:
    return settings.topic("rebalancer")


def valid_host_name(name: str) -> bool:
    return 0 < len(name) <= MAX_HOST_NAME and name.isprintable() and name.strip() == name and name != "?"


def machine_ram_bytes() -> int:
    """Physical RAM of this machine (the capacity a gateway reports, less the reserve)."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def ensure_rebalancer_topics(settings: KafkaSettings, *, timeout: float = 30.0) -> None:
    """Create the hosts and rebalancer topics (one partition each) if they are missing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=10_000)
            break
        except (KafkaError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, 1, settings.replication)
            for name in (hosts_topic(settings), rebalancer_topic(settings))
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class HostSpec:
    """The host a gateway serves: its name and the RAM it gives to VMs (None: RAM - reserve)."""

    name: str
    capacity_bytes: int | None = None
    reserve_bytes: int = 2 << 30

    def backend(self, settings: KafkaSettings) -> HostedKafkaBackend:
        """The gateway backend that announces this host (``kafka_engine.gateway.start_gateway``)."""
        return HostedKafkaBackend(
            settings, host_name=self.name, capacity_bytes=self.capacity_bytes, reserve_bytes=self.reserve_bytes
        )


class HostedKafkaBackend(KafkaBackend):
    """The gateway's Kafka backend that also says which host it is and which VMs it serves."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        host_name: str,
        capacity_bytes: int | None = None,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        retain: int = 1024,
    ) -> None:
        if not valid_host_name(host_name):
            raise ValueError(f"host name must be 1..{MAX_HOST_NAME} printable characters, got {host_name!r}")
        super().__init__(settings, retain=retain)
        self.host_name = host_name
        ram = machine_ram_bytes()
        self.ram_bytes = ram
        self.reserve_bytes = reserve_bytes
        self.capacity_bytes = capacity_bytes if capacity_bytes is not None else max(0, ram - reserve_bytes)

    async def start(self) -> None:
        import asyncio

        await asyncio.to_thread(ensure_rebalancer_topics, self.settings)
        self._announce(
            f"host:{self.host_name}",
            {
                "kind": "host",
                "host": self.host_name,
                "capacity_bytes": self.capacity_bytes,
                "ram_bytes": self.ram_bytes,
                "reserve_bytes": self.reserve_bytes,
            },
        )
        await super().start()

    def submit(self, vm: str, record: Input) -> int:
        if isinstance(record, ChannelOpened):
            self._announce(vm, {"kind": "vm", "vm": vm, "host": self.host_name})
        return super().submit(vm, record)

    def _announce(self, key: str, value: dict[str, Any]) -> None:
        self._producer.send(hosts_topic(self.settings), key=key.encode(), value=_encode(value))


@dataclass(slots=True)
class HostDirectory:
    """The hosts topic folded: VM -> host and host -> capacity, caught up on demand."""

    settings: KafkaSettings
    host_of: dict[str, str] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    position: int = 0
    rejected: int = 0

    def catch_up(self, reader: PartitionReader) -> int:
        """Fold the records since the last call (blocking); returns how many were read."""
        count = 0
        for record in reader.read(hosts_topic(self.settings), 0, self.position):
            self.position = record.offset + 1
            count += 1
            if not self._fold(record.value):
                self.rejected += 1
                log.warning("event=host_record_rejected offset=%d", record.offset)
        return count

    def _fold(self, raw: bytes | None) -> bool:
        try:
            value = json.loads(raw or b"")
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(value, dict):
            return False
        host = value.get("host")
        if not isinstance(host, str) or not valid_host_name(host):
            return False
        if value.get("kind") == "vm" and isinstance(value.get("vm"), str) and value["vm"]:
            self.host_of[value["vm"]] = host
            return True
        capacity = value.get("capacity_bytes")
        if value.get("kind") != "host" or not isinstance(capacity, int) or isinstance(capacity, bool):
            return False
        if not 0 <= capacity < 1 << 60:
            return False
        self.capacity[host] = capacity
        return True
