"""Prometheus exporter: per-VM and engine metrics projected from the engine's state at scrape time."""

from .collector import (
    METRICS,
    EngineMetrics,
    HvdmCollector,
    LabelError,
    MetricsLabels,
    metric_names,
    parse_vm_labels,
)
from .exporter import ServedGateway, ServedMetrics, serve_for_service, serve_gateway
from .server import DEFAULT_METRICS_PORT, MetricsServer, start_metrics_server

__all__ = [
    "DEFAULT_METRICS_PORT",
    "METRICS",
    "EngineMetrics",
    "HvdmCollector",
    "LabelError",
    "MetricsLabels",
    "MetricsServer",
    "ServedGateway",
    "ServedMetrics",
    "metric_names",
    "parse_vm_labels",
    "serve_for_service",
    "serve_gateway",
    "start_metrics_server",
]
