"""Whether the event log can be written: ``hvdm_log_writable`` and ``hvdm_log_write_errors_total``.

Why a metric of its own: during a full disk the engine's state gauges keep their last values and
look healthy while nothing is recorded and time stands still. These two series make the outage
visible (and alertable) from the first failed write to the first successful one. They are read
from the log object at scrape time (two ints and a bool, safe to read from the scrape thread).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WRITABLE = "hvdm_log_writable"
WRITE_ERRORS = "hvdm_log_write_errors"


@runtime_checkable
class WriteHealth(Protocol):
    """What ``SqliteLog`` keeps about its writes."""

    writable: bool
    write_errors: Mapping[str, int]


class LogHealthCollector(Collector):
    """``common``: labels every hvdm series carries (``MetricsLabels.common()``, e.g. ``host``)."""

    def __init__(self, log: WriteHealth, common: Mapping[str, str] | None = None) -> None:
        self._log = log
        self._names = list(common or {})
        self._values = list((common or {}).values())

    def collect(self) -> Iterable[Metric]:
        writable = GaugeMetricFamily(
            WRITABLE,
            "1 while the event log accepts writes, 0 from a failed write until the next successful one.",
            labels=self._names,
        )
        writable.add_metric(self._values, 1.0 if self._log.writable else 0.0)
        errors = CounterMetricFamily(
            WRITE_ERRORS,
            "Event log write transactions that failed and were rolled back, by kind.",
            labels=[*self._names, "kind"],
        )
        for kind, count in sorted(dict(self._log.write_errors).items()):
            errors.add_metric([*self._values, kind], float(count))
        return [writable, errors]


def log_health_of(runner: object) -> WriteHealth | None:
    """The runner's log if it reports write health (the embedded SQLite log does), else None."""
    log = getattr(runner, "log", None)
    return log if isinstance(log, WriteHealth) else None
