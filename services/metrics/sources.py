"""Collectors for the counters of the parts around the engine: the gateway and the QMP sockets.

Both keep plain counters that change on their asyncio loop; a scrape copies them there (like the
state collector), so it never iterates a dict the loop is changing. Their series are few (one per
reason or command), so prometheus-client's formatter serves them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .collector import GATEWAY_METRICS, QMP_METRICS, MetricsLabels, read_on_loop


class _GatewayCounters(Protocol):
    accepted: int
    refused: dict[str, int]
    disconnects: dict[str, int]
    frames_in_closed: int
    frames_out_closed: int


class _Connection(Protocol):
    frames_in: int
    frames_out: int


class GatewayView(Protocol):
    """What the collector reads from ``vmbus_gateway.server.GatewayServer``."""

    @property
    def counters(self) -> _GatewayCounters: ...

    @property
    def connections(self) -> dict[str, Any]: ...

    @property
    def hello_rejected(self) -> Mapping[str, int]: ...

    @property
    def accept_errors(self) -> Mapping[str, int]: ...

    @property
    def status_coalesced(self) -> int: ...

    @property
    def undecodable_messages(self) -> int: ...


#: accept() failures that mean the process ran out of something (the gateway backs off on them).
RESOURCE_ERRNO_NAMES = ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")


def _family(name: str, table: dict[str, tuple[str, str]]) -> CounterMetricFamily | GaugeMetricFamily:
    doc, typ = table[name]
    return CounterMetricFamily(name, doc) if typ == "counter" else GaugeMetricFamily(name, doc)


class GatewayCollector(Collector):
    def __init__(
        self,
        gateway: GatewayView,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        labels: MetricsLabels | None = None,
    ) -> None:
        self._gateway = gateway
        self._loop = loop
        self._common = (labels or MetricsLabels()).common()

    def _read(self) -> tuple[int, int, dict[str, int], dict[str, int], int, int, tuple[int, int, dict[str, int]]]:
        gw = self._gateway
        c = gw.counters
        conns = list(gw.connections.values())
        frames_in = c.frames_in_closed + sum(int(x.frames_in) for x in conns)
        frames_out = c.frames_out_closed + sum(int(x.frames_out) for x in conns)
        # Every refusal: the hello's own reason codes, then the gateway's (a VM already connected).
        refused = {**dict(gw.hello_rejected), **c.refused}
        bounds = (gw.status_coalesced, gw.undecodable_messages, dict(gw.accept_errors))
        return len(conns), c.accepted, refused, dict(c.disconnects), frames_in, frames_out, bounds

    def describe(self) -> Iterable[Metric]:
        return [_family(name, GATEWAY_METRICS) for name in GATEWAY_METRICS]

    def collect(self) -> Iterable[Metric]:
        open_now, accepted, refused, disconnects, frames_in, frames_out, bounds = read_on_loop(self._loop, self._read)
        common = self._common
        fams = {name: _family(name, GATEWAY_METRICS) for name in GATEWAY_METRICS}

        def add(name: str, value: float, **extra: str) -> None:
            exported = f"{name}_total" if fams[name].type == "counter" else name
            fams[name].samples.append(Sample(exported, {**common, **extra}, float(value), None, None, None))

        add("hvdm_gateway_connections", open_now)
        add("hvdm_gateway_connections_accepted", accepted)
        for reason, count in sorted(refused.items()):
            add("hvdm_gateway_refusals", count, reason=reason)
        for reason, count in sorted(disconnects.items()):
            add("hvdm_gateway_disconnects", count, reason=reason)
        add("hvdm_gateway_frames_received", frames_in)
        add("hvdm_gateway_frames_sent", frames_out)
        coalesced, undecodable, accept_errors = bounds
        add("hvdm_gateway_status_reports_coalesced", coalesced)
        add("hvdm_gateway_undecodable_messages", undecodable)
        # The resource errors are listed at zero too, so rate() and the dashboard work before the first.
        for name in sorted(set(RESOURCE_ERRNO_NAMES) | set(accept_errors)):
            add("hvdm_gateway_accept_errors", accept_errors.get(name, 0), errno=name)
        return list(fams.values())


class QmpView(Protocol):
    """What the collector reads from ``qmp.server.QmpServers``."""

    command_counts: dict[tuple[str, str], int]


class QmpCollector(Collector):
    def __init__(
        self, qmp: QmpView, *, loop: asyncio.AbstractEventLoop | None = None, labels: MetricsLabels | None = None
    ) -> None:
        self._qmp = qmp
        self._loop = loop
        self._common = (labels or MetricsLabels()).common()

    def describe(self) -> Iterable[Metric]:
        return [_family(name, QMP_METRICS) for name in QMP_METRICS]

    def collect(self) -> Iterable[Metric]:
        counts = read_on_loop(self._loop, lambda: dict(self._qmp.command_counts))
        family = _family("hvdm_qmp_commands", QMP_METRICS)
        for (command, result), count in sorted(counts.items()):
            labels = {**self._common, "command": command, "result": result}
            family.samples.append(Sample("hvdm_qmp_commands_total", labels, float(count), None, None, None))
        return [family]
