"""``hvdm rebalance --broker``: the live loop on the Kafka deployment, one active instance at a time.

The loop is the embedded one's (``live.py``) with the topics in place of the SQLite log:

* **view**: the events topic folded with the recovery's sequence rule (``EventsProjection``, the
  projection the metrics and ``hvdm run`` use), VMs placed on hosts by the hosts topic
  (``kafka_hosts``), per-host capacity from the rebalancer's flags, else the gateway's record;
* **decisions**: ``SetTarget`` inputs appended to the inbox topic with the VM as key, as an
  operator's QMP command would be, so they are in the audit trail and the engine stays the one
  place that talks to guests;
* **migrations**: hosts short even after reclaiming everything get recommendations
  (``migration.recommend``), written as ``{"kind": "migration", ...}`` records to the
  ``<prefix>.rebalancer`` topic, printed, and counted in the metrics;
* **one active instance**: every instance joins the consumer group ``<prefix>.rebalancer`` on the
  single partition of the ``<prefix>.rebalancer`` topic; Kafka assigns that partition to one
  member, and only that member decides (for every host: the fleet view spans hosts, which is what
  migrations need). When it dies, its session times out and the group gives the partition to
  another member (about session timeout + tansu's 2 s JoinGroup). A member that was only paused
  (SIGSTOP, a long GC) might not know yet that it lost the partition; so on taking over, an
  instance appends a ``claim`` record, and before every round of decisions the active instance
  reads the topic's newest claim and stands down if it is not its own. Two instances can thus
  only both write if one stalls for a whole session timeout *between* that read and its writes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer

from ..dm_engine.inputs import SetTarget
from ..dm_engine.records import to_dict
from ..kafka_engine import envelope
from ..kafka_engine.deployment_config import engine_config_of
from ..kafka_engine.kafka_log import PartitionReader, ensure_topics, new_producer
from ..kafka_engine.projection import EventsProjection
from ..kafka_engine.settings import KafkaSettings
from ..units import PAGE_SIZE
from .fleet_view import NO_TARGET, FleetView
from .kafka_hosts import HostDirectory, ensure_rebalancer_topics, hosts_topic, rebalancer_topic
from .migration import Migration, recommend
from .policy import Policy
from .projection import LiveLimits, build_view

log = logging.getLogger("hvdm.rebalancer")

#: A recommendation still valid is written again after this many seconds (not every round).
REPEAT_RECOMMENDATION_S = 60.0


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Lease:
    """Membership of the rebalancer group: ``poll`` says whether this instance holds the partition."""

    def __init__(self, settings: KafkaSettings, instance: str) -> None:
        self.settings = settings
        self.instance = instance
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            group_id=rebalancer_topic(settings),
            client_id=f"hvdm-rebalancer-{instance}",
            enable_auto_commit=False,
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=max(100, int(settings.heartbeat * 1000)),
            max_poll_interval_ms=300_000,
            fetch_max_wait_ms=5,
        )
        self._consumer.subscribe([rebalancer_topic(settings)])

    def poll(self) -> bool:
        """Heartbeat and take part in group rebalances; True while this member is assigned."""
        self._consumer.poll(timeout_ms=50, max_records=100)
        return bool(self._consumer.assignment())

    def close(self) -> None:
        """Leave the group at once (a clean stop hands over without waiting for the session)."""
        self._consumer.close(autocommit=False)


@dataclass(frozen=True, slots=True)
class KafkaTargetWritten:
    vm: str
    host: str
    target_bytes: int
    previous_target_bytes: int | None
    current_bytes: int
    demand_bytes: int | None

    def to_dict(self) -> dict[str, object]:
        return {
            "type": "set_target",
            "vm": self.vm,
            "host": self.host,
            "target_bytes": self.target_bytes,
            "previous_target_bytes": self.previous_target_bytes,
            "current_bytes": self.current_bytes,
            "demand_bytes": self.demand_bytes,
        }


@dataclass(slots=True)
class Round:
    """What one round did: standby (not active), or the decisions and recommendations written."""

    active: bool
    took_over: bool = False
    stood_down: bool = False
    written: list[KafkaTargetWritten] = field(default_factory=list)
    migrations: list[Migration] = field(default_factory=list)
    vms: int = 0
    hosts: tuple[str, ...] = ()


@dataclass(slots=True)
class RebalancerStats:
    rounds: int = 0
    active_rounds: int = 0
    takeovers: int = 0
    set_targets: int = 0
    #: (from_host, to_host) -> recommendations written
    migrations: dict[tuple[str, str], int] = field(default_factory=dict)
    active: bool = False


class KafkaRebalancer:
    """One rebalancer instance: standby until it holds the lease, then the decision loop."""

    def __init__(
        self,
        settings: KafkaSettings,
        policy: Policy,
        limits: LiveLimits | None = None,
        *,
        host_capacity: Mapping[str, int] | None = None,
        instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.limits = limits or LiveLimits()
        self.overrides = dict(host_capacity or {})
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock = clock
        counts = ensure_topics(settings)
        ensure_rebalancer_topics(settings)
        self.partitions = counts[settings.inbox]
        self.projection = EventsProjection(settings, self.partitions)
        self.hosts = HostDirectory(settings)
        self.reader = PartitionReader(settings)
        self.producer: KafkaProducer = new_producer(settings)
        self.lease = Lease(settings, self.instance)
        self.stats = RebalancerStats()
        self.tick_seconds = engine_config_of(settings).tick_seconds
        self._was_active = False
        self._claims_from = 0
        self._last_claim: str | None = None
        self._recommended: dict[tuple[str, str, str], float] = {}

    def close(self) -> None:
        self.lease.close()
        self.producer.close()
        self.reader.close()

    # ------------------------------------------------------------------ one round
    def step(self) -> Round:
        self.stats.rounds += 1
        active = self.lease.poll()
        if not active:
            self._was_active = self.stats.active = False
            return Round(active=False)
        took_over = not self._was_active
        if took_over:
            self._claim()
            self.stats.takeovers += 1
        self._was_active = True
        if not self._holds_claim():
            # Someone claimed after us: we were paused past our session and lost the partition.
            self._was_active = self.stats.active = False
            return Round(active=False, stood_down=True)
        self.stats.active = True
        self.stats.active_rounds += 1
        self.projection.catch_up(self.reader)
        self.hosts.catch_up(self.reader)
        view = self.view()
        decided = self.policy.decide(view) if view.size else np.zeros(0, dtype=np.int64)
        written = self._write_targets(view, decided)
        migrations = self._write_migrations(view)
        self.producer.flush(30)
        return Round(
            active=True,
            took_over=took_over,
            written=written,
            migrations=migrations,
            vms=view.size,
            hosts=view.host_names,
        )

    def view(self) -> FleetView:
        capacity = {**self.hosts.capacity, **self.overrides}
        # The engine's clock as far as the events show it: the newest status report's tick.
        states = self.projection.states
        now = max((s.status_tick for s in states.values()), default=0) * self.tick_seconds
        return build_view(
            states.values(), self.limits, now=max(now, 0.0), host_of=self.hosts.host_of, host_capacity=capacity
        )

    # ------------------------------------------------------------------ writing
    def _claim(self) -> None:
        value = {"kind": "claim", "instance": self.instance, "wall_time": time.time()}
        self.producer.send(rebalancer_topic(self.settings), key=b"claim", value=_encode(value)).get(30)
        log.info("event=rebalancer_active instance=%s", self.instance)

    def _holds_claim(self) -> bool:
        for record in self.reader.read(rebalancer_topic(self.settings), 0, self._claims_from):
            self._claims_from = record.offset + 1
            try:
                value = json.loads(record.value or b"")
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(value, dict) and value.get("kind") == "claim":
                self._last_claim = str(value.get("instance"))
        return self._last_claim == self.instance

    def _write_targets(self, view: FleetView, decided: np.ndarray[Any, Any]) -> list[KafkaTargetWritten]:
        out: list[KafkaTargetWritten] = []
        for i in np.flatnonzero(decided != NO_TARGET).tolist():
            vm = view.vm_ids[i]
            target = int(decided[i]) * PAGE_SIZE
            # The tick is only a hint: the engine stamps every input with its partition's clock.
            record = to_dict(SetTarget(tick=int(view.now), target_bytes=target))
            self.producer.send(self.settings.inbox, key=vm.encode(), value=envelope.inbox_value(vm, record))
            previous, demand = int(view.target[i]), int(view.demand[i])
            out.append(
                KafkaTargetWritten(
                    vm=vm,
                    host=view.host_names[int(view.host[i])] if view.host_names else "",
                    target_bytes=target,
                    previous_target_bytes=None if previous == NO_TARGET else previous * PAGE_SIZE,
                    current_bytes=int(view.current[i]) * PAGE_SIZE,
                    demand_bytes=None if demand < 0 else demand * PAGE_SIZE,
                )
            )
        self.stats.set_targets += len(out)
        return out

    def _write_migrations(self, view: FleetView) -> list[Migration]:
        if view.hosts < 2:
            return []
        now = self.clock()
        out: list[Migration] = []
        for rec in recommend(view, movable=view.controllable):
            key = (rec.vm, rec.from_host, rec.to_host)
            last = self._recommended.get(key)
            if last is not None and now - last < REPEAT_RECOMMENDATION_S:
                continue
            self._recommended[key] = now
            value = {"kind": "migration", "instance": self.instance, "wall_time": time.time(), **rec.to_dict()}
            self.producer.send(rebalancer_topic(self.settings), key=rec.vm.encode(), value=_encode(value))
            pair = (rec.from_host, rec.to_host)
            self.stats.migrations[pair] = self.stats.migrations.get(pair, 0) + 1
            log.info("event=migration_recommended vm=%s from=%s to=%s", rec.vm, rec.from_host, rec.to_host)
            out.append(rec)
        return out

    # ------------------------------------------------------------------ the loop
    def run(
        self,
        interval_s: float,
        *,
        rounds: int | None = None,
        on_round: Callable[[Round], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> int:
        """A round every ``interval_s`` seconds until ``rounds`` *active* rounds are done (None: forever).

        Standby rounds do not count (``--once`` waits for the lease, then decides once). While
        standby, the lease is polled every ``min(interval_s, 0.5)`` seconds so that a take-over is
        noticed quickly.
        """
        done = 0
        while rounds is None or done < rounds:
            started = time.monotonic()
            result = self.step()
            if on_round is not None:
                on_round(result)
            done += int(result.active)
            if rounds is not None and done >= rounds:
                break
            wait = interval_s if result.active else min(interval_s, 0.5)
            sleep(max(0.0, wait - (time.monotonic() - started)))
        return done


def read_recommendations(settings: KafkaSettings) -> list[dict[str, Any]]:
    """Every migration recommendation on the rebalancer topic, oldest first (for audits and tests)."""
    reader = PartitionReader(settings)
    try:
        out = []
        for record in reader.read(rebalancer_topic(settings), 0):
            try:
                value = json.loads(record.value or b"")
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(value, dict) and value.get("kind") == "migration":
                out.append(value)
        return out
    finally:
        reader.close()


def audit_section(settings: KafkaSettings) -> dict[str, Any] | None:
    """What the audit shows of the rebalancer: hosts and their VMs, claims of the lease, and every
    migration recommendation. None when the deployment has no hosts/rebalancer topics."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    try:
        existing = consumer.topics()
    finally:
        consumer.close()
    if hosts_topic(settings) not in existing or rebalancer_topic(settings) not in existing:
        return None
    reader = PartitionReader(settings)
    try:
        directory = HostDirectory(settings)
        directory.catch_up(reader)
        claims: list[dict[str, Any]] = []
        migrations: list[dict[str, Any]] = []
        for record in reader.read(rebalancer_topic(settings), 0):
            try:
                value = json.loads(record.value or b"")
            except (ValueError, UnicodeDecodeError):
                continue
            if not isinstance(value, dict):
                continue
            if value.get("kind") == "claim":
                claims.append({"offset": record.offset, **value})
            elif value.get("kind") == "migration":
                migrations.append({"offset": record.offset, **value})
    finally:
        reader.close()
    hosts: dict[str, dict[str, Any]] = {
        name: {"capacity_bytes": capacity, "vms": []} for name, capacity in sorted(directory.capacity.items())
    }
    for vm, host in sorted(directory.host_of.items()):
        hosts.setdefault(host, {"capacity_bytes": None, "vms": []})["vms"].append(vm)
    return {"hosts": hosts, "lease_claims": claims, "migration_recommendations": migrations}


def audit_section_text(section: dict[str, Any]) -> str:
    lines = ["", "rebalancer"]
    for name, host in section["hosts"].items():
        capacity = host["capacity_bytes"]
        cap = "unknown" if capacity is None else f"{capacity / (1 << 30):.1f} GiB"
        lines.append(f"  host {name}: capacity {cap}, VMs {', '.join(host['vms']) or '-'}")
    for claim in section["lease_claims"]:
        lines.append(f"  lease taken by {claim.get('instance')} (record {claim['offset']})")
    for m in section["migration_recommendations"]:
        lines.append(
            f"  migration recommended by {m.get('instance')}: "
            f"{m.get('vm')} {m.get('from_host')} -> {m.get('to_host')}, "
            f"saves {int(m.get('expected_pressure_saved_bytes') or 0) >> 20} MiB: {m.get('reason')}"
        )
    if not section["migration_recommendations"]:
        lines.append("  no migration recommendations")
    return "\n".join(lines)
