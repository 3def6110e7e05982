"""The exporter as a running service uses it: registry, batch hook and HTTP server in one call.

``hvdm run`` / ``hvdm engine`` call :func:`serve_for_service` once the service has started and
``close()`` the result on the way out, which also unhooks the latency observer, so a stopped
exporter leaves nothing attached to the engine. ``hvdm gateway`` calls :func:`serve_gateway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.registry import Collector

from .collector import EngineMetrics, EngineView, MetricsLabels, WallOfTick, process_registry
from .server import DEFAULT_METRICS_PORT, MetricsServer, Probe, start_metrics_server
from .sources import GatewayCollector, GatewayView, QmpCollector, QmpView


class MetricsService(Protocol):
    """The part of ``EmbeddedService`` the exporter uses."""

    @property
    def runner(self) -> EngineView: ...

    @property
    def on_batch(self) -> list[Callable[[int, float], None]]: ...


class TickClockView(Protocol):
    """``embedded.clock.TickClock``: simulated seconds since the log's epoch, and their pace."""

    tick_seconds: float
    speed: float

    def now_seconds(self) -> float: ...


def wall_of_tick_from(clock: TickClockView) -> WallOfTick:
    """Unix time at which ``tick`` began on ``clock`` (ticks are ``tick_seconds / speed`` wall
    seconds apart, and the clock's present is now)."""

    def wall(vm: str, tick: int) -> float:
        now = time.time()
        return min(now, now - (clock.now_seconds() - tick * clock.tick_seconds) / clock.speed)

    return wall


@dataclass(slots=True)
class ServedMetrics:
    metrics: EngineMetrics
    server: MetricsServer
    _service: MetricsService | None

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        """Unhook from the service and stop the HTTP server (joins its threads)."""
        if self._service is not None:
            with contextlib.suppress(ValueError):
                self._service.on_batch.remove(self.metrics.observe_batch)
        self.server.stop()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def serve_for_service(
    service: MetricsService,
    host: str = "127.0.0.1",
    port: int = DEFAULT_METRICS_PORT,
    *,
    labels: MetricsLabels | None = None,
    gateway: GatewayView | None = None,
    qmp: QmpView | None = None,
    ready: Probe | None = None,
) -> ServedMetrics:
    """Export ``service``'s engine (and its gateway's and QMP sockets' counters) at
    ``http://host:port/metrics``.

    Call it on the service's event loop: scrapes then read the engine's states on that loop,
    between two batches, never concurrently with the engine.
    """
    loop = _running_loop()
    clock: Any = getattr(service, "clock", None)
    wall = wall_of_tick_from(clock) if clock is not None and hasattr(clock, "now_seconds") else None
    metrics = EngineMetrics(service.runner, loop=loop, labels=labels, wall_of_tick=wall)
    extra: list[Collector] = []
    if gateway is not None:
        extra.append(GatewayCollector(gateway, loop=loop, labels=metrics.labels))
    if qmp is not None:
        extra.append(QmpCollector(qmp, loop=loop, labels=metrics.labels))
    if gateway is not None or qmp is not None:
        from ..vmbus_gateway.hello import HELLO_REASONS
        from .rejections import RejectionCollector

        extra.append(RejectionCollector(gateway, qmp, HELLO_REASONS))  # type: ignore[arg-type]
    for collector in extra:
        metrics.add_collector(collector)
    service.on_batch.append(metrics.observe_batch)
    return ServedMetrics(metrics, start_metrics_server(metrics, host, port, ready=ready), service)


@dataclass(slots=True)
class ServedGateway:
    server: MetricsServer

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.stop()


def serve_gateway(
    gateway: GatewayView,
    host: str = "127.0.0.1",
    port: int = DEFAULT_METRICS_PORT,
    *,
    labels: MetricsLabels | None = None,
) -> ServedGateway:
    """``hvdm gateway``'s exporter: its connection counters, build info and process metrics.

    Call it on the gateway's loop. Healthy means that loop answers; ready means it listens.
    """
    from .collector import read_on_loop

    loop = _running_loop()
    registry = process_registry(labels)
    registry.register(GatewayCollector(gateway, loop=loop, labels=labels))
    from ..vmbus_gateway.hello import HELLO_REASONS
    from .rejections import RejectionCollector

    registry.register(RejectionCollector(gateway, None, HELLO_REASONS))  # type: ignore[arg-type]
    healthy = lambda: read_on_loop(loop, lambda: True, 2.0)  # noqa: E731
    common = labels.common() if labels is not None else None
    return ServedGateway(start_metrics_server(registry, host, port, healthy=healthy, labels=common))
