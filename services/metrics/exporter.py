"""The exporter as a running service uses it: registry, batch hook and HTTP server in one call.

``hvdm run`` / ``hvdm engine`` call :func:`serve_for_service` once the service has started and
``close()`` the result on the way out, which also unhooks the latency observer, so a stopped
exporter leaves nothing attached to the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.metrics.collector import EngineMetrics, EngineView
from services.metrics.server import DEFAULT_METRICS_PORT, MetricsServer, start_metrics_server


class MetricsService(Protocol):
    """The part of ``EmbeddedService`` the exporter uses."""

    @property
    def runner(self) -> EngineView: ...

    @property
    def on_batch(self) -> list[Callable[[int, float], None]]: ...


@dataclass(slots=True)
class ServedMetrics:
    metrics: EngineMetrics
    server: MetricsServer
    _service: MetricsService

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        """Unhook from the service and stop the HTTP server (joins its thread)."""
        with contextlib.suppress(ValueError):
            self._service.on_batch.remove(self.metrics.observe_batch)
        self.server.stop()


def serve_for_service(
    service: MetricsService, host: str = "127.0.0.1", port: int = DEFAULT_METRICS_PORT
) -> ServedMetrics:
    """Export ``service``'s engine at ``http://host:port/metrics``.

    Call it on the service's event loop: scrapes then read the engine's states on that loop,
    between two batches, never concurrently with the engine.
    """
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    metrics = EngineMetrics(service.runner, loop=loop)
    service.on_batch.append(metrics.observe_batch)
    return ServedMetrics(metrics, start_metrics_server(metrics, host, port), service)
