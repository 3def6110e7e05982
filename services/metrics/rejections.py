"""Counters of inputs refused at the service's edges: hellos the gateway turned away, QMP errors.

Why not a projection of the log like the engine metrics: a refused input never enters the inbox
(that is the point of refusing it at the edge), so the only place it can be counted is the process
that refused it. The counts live in the gateway and the QMP servers as plain ``Counter`` objects
updated on the service's loop; a scrape copies them (``dict(counter)`` is one C-level copy, safe
from another thread) and reports every known reason, zeros included, so ``rate()`` works from the
first scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

HELLO_REJECTED = "hvdm_gateway_hello_rejected"
QMP_ERRORS = "hvdm_qmp_errors"
HTTP_REJECTED = "hvdm_metrics_http_rejected"


class HelloCounts(Protocol):
    hello_rejected: Counter[str]


class QmpCounts(Protocol):
    errors: Counter[tuple[str, str]]


class RejectionCollector(Collector):
    """``hvdm_gateway_hello_rejected_total{reason}`` and ``hvdm_qmp_errors_total{class,command}``."""

    def __init__(
        self, gateway: HelloCounts | None = None, qmp: QmpCounts | None = None, reasons: Iterable[str] = ()
    ) -> None:
        self.gateway = gateway
        self.qmp = qmp
        self.reasons = tuple(reasons)

    def describe(self) -> Iterable[Metric]:
        return [self._hello(), self._qmp()]

    def _hello(self) -> CounterMetricFamily:
        return CounterMetricFamily(HELLO_REJECTED, "Gateway hellos refused, by reason code.", labels=["reason"])

    def _qmp(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            QMP_ERRORS, "QMP error replies, by error class and command.", labels=["class", "command"]
        )

    def collect(self) -> Iterable[Metric]:
        hello = self._hello()
        if self.gateway is not None:
            counts = dict(self.gateway.hello_rejected)
            for reason in sorted(set(self.reasons) | set(counts)):
                hello.add_metric([reason], float(counts.get(reason, 0)))
        qmp = self._qmp()
        if self.qmp is not None:
            for (error_class, command), n in sorted(dict(self.qmp.errors).items()):
                qmp.add_metric([error_class, command], float(n))
        return [hello, qmp]


class HttpCounts(Protocol):
    rejected: Counter[str]


class HttpRejectionCollector(Collector):
    """``hvdm_metrics_http_rejected_total{reason}``: connections the /metrics server itself cut off
    or refused (``metrics.server.HTTP_REJECT_REASONS``: a request head not complete within its
    deadline, too large, evicted by newer connections, a response not taken in time, every worker
    busy), so a slow-drip or flooding client shows up in the scrape it failed to starve."""

    def __init__(self, server: HttpCounts, reasons: Iterable[str], labels: Mapping[str, str] | None = None) -> None:
        self.server = server
        self.reasons = tuple(reasons)
        self.labels = dict(labels or {})

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            HTTP_REJECTED,
            "Connections to the metrics HTTP server cut off or refused, by reason.",
            labels=[*self.labels, "reason"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        counts = dict(self.server.rejected)
        for reason in sorted(set(self.reasons) | set(counts)):
            family.add_metric([*self.labels.values(), reason], float(counts.get(reason, 0)))
        return [family]
