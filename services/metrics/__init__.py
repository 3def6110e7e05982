"""Prometheus exporter: per-VM and engine metrics projected from the engine's state at scrape time."""

from services.metrics.collector import METRICS, EngineMetrics, HvdmCollector, metric_names
from services.metrics.exporter import ServedMetrics, serve_for_service
from services.metrics.server import DEFAULT_METRICS_PORT, MetricsServer, start_metrics_server

__all__ = [
    "DEFAULT_METRICS_PORT",
    "METRICS",
    "EngineMetrics",
    "HvdmCollector",
    "MetricsServer",
    "ServedMetrics",
    "metric_names",
    "serve_for_service",
    "start_metrics_server",
]
