"""The rebalancer's own metrics (``hvdm rebalance --broker ... --metrics-port``).

Why its own endpoint: the rebalancer is a separate process from the engine workers and the
gateways, and what it is doing -- whether this instance holds the lease, how many targets it
wrote, which migrations it recommends -- exists nowhere else. A collector reads the loop's
counters at scrape time, so nothing is updated twice.

* ``hvdm_rebalancer_active``: 1 while this instance holds the lease
* ``hvdm_rebalancer_rounds_total``, ``hvdm_rebalancer_takeovers_total``
* ``hvdm_rebalancer_set_targets_total``: SetTarget inputs written to the inbox
* ``hvdm_rebalancer_migration_recommendations_total{from_host,to_host}``
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metrics.server import MetricsServer, start_metrics_server
from .kafka_live import KafkaRebalancer


class RebalancerCollector(Collector):
    def __init__(self, loop: KafkaRebalancer) -> None:
        self.loop = loop

    def collect(self) -> Iterable[Metric]:
        stats = self.loop.stats
        instance = self.loop.instance
        active = GaugeMetricFamily(
            "hvdm_rebalancer_active", "1 while this rebalancer instance holds the lease", labels=["instance"]
        )
        active.add_metric([instance], 1.0 if stats.active else 0.0)
        yield active
        for name, doc, value in (
            ("hvdm_rebalancer_rounds", "Decision rounds (standby rounds included)", stats.rounds),
            ("hvdm_rebalancer_takeovers", "Times this instance took the lease", stats.takeovers),
            ("hvdm_rebalancer_set_targets", "SetTarget inputs written to the inbox", stats.set_targets),
        ):
            counter = CounterMetricFamily(name, doc, labels=["instance"])
            counter.add_metric([instance], float(value))
            yield counter
        migrations = CounterMetricFamily(
            "hvdm_rebalancer_migration_recommendations",
            "Migration recommendations written (a host short even after reclaiming everything)",
            labels=["from_host", "to_host"],
        )
        for (source, dest), count in sorted(stats.migrations.items()):
            migrations.add_metric([source, dest], float(count))
        yield migrations


def serve_rebalancer_metrics(loop: KafkaRebalancer, host: str, port: int) -> MetricsServer:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RebalancerCollector(loop))
    return start_metrics_server(registry, host, port)
