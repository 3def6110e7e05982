"""The gateway's own counters as Prometheus families (refusals, coalesced reports, accept errors).

These describe this process, not the log, so unlike the engine's metrics they restart at zero
with the gateway. Register the collector in any prometheus-client registry; ``hvdm run`` puts it
in the exporter's extra registry, next to the engine's batch-latency histogram.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: (help, type) of every gateway family, for docs and tests.
GATEWAY_METRICS: dict[str, tuple[str, str]] = {
    "hvdm_gateway_refusals": ("Connections and hellos the gateway refused, by reason.", "counter"),
    "hvdm_gateway_status_reports_coalesced": (
        "Guest status reports not stored because a newer one arrived within the interval.",
        "counter",
    ),
    "hvdm_gateway_undecodable_messages": ("Well-framed guest messages that do not decode.", "counter"),
    "hvdm_gateway_accept_errors": ("accept() failures (EMFILE: out of descriptors), by errno.", "counter"),
    "hvdm_gateway_connections": ("Guest channels connected to this gateway now.", "gauge"),
}


class GatewayCounters(Protocol):
    """What the collector reads (``GatewayServer`` has all of it)."""

    @property
    def refusals(self) -> Mapping[str, int]: ...
    @property
    def accept_errors(self) -> Mapping[str, int]: ...
    @property
    def status_coalesced(self) -> int: ...
    @property
    def undecodable_messages(self) -> int: ...
    @property
    def connections(self) -> Mapping[str, object]: ...


class GatewayCollector(Collector):
    """Reads the server's counters at scrape time. Plain ints and dict copies: safe from the
    scrape thread while the loop runs (a copy under the GIL; a counter may be one behind)."""

    def __init__(self, server: GatewayCounters) -> None:
        self._server = server

    def collect(self) -> Iterable[Metric]:
        s = self._server
        refusals = CounterMetricFamily(
            "hvdm_gateway_refusals", GATEWAY_METRICS["hvdm_gateway_refusals"][0], labels=["reason"]
        )
        for reason, n in sorted(dict(s.refusals).items()):
            refusals.add_metric([reason], float(n))
        accept = CounterMetricFamily(
            "hvdm_gateway_accept_errors", GATEWAY_METRICS["hvdm_gateway_accept_errors"][0], labels=["errno"]
        )
        for name, n in sorted(dict(s.accept_errors).items()):
            accept.add_metric([name], float(n))
        coalesced = CounterMetricFamily(
            "hvdm_gateway_status_reports_coalesced",
            GATEWAY_METRICS["hvdm_gateway_status_reports_coalesced"][0],
            value=float(s.status_coalesced),
        )
        undecodable = CounterMetricFamily(
            "hvdm_gateway_undecodable_messages",
            GATEWAY_METRICS["hvdm_gateway_undecodable_messages"][0],
            value=float(s.undecodable_messages),
        )
        connections = GaugeMetricFamily(
            "hvdm_gateway_connections", GATEWAY_METRICS["hvdm_gateway_connections"][0], value=len(s.connections)
        )
        return [refusals, coalesced, undecodable, accept, connections]
