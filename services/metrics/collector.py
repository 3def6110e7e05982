"""Prometheus metrics as a projection of the engine's state, built at scrape time.

Nothing is updated while the engine runs: every scrape reads the per-VM states (the fold of the
event log), so a restarted engine exports the same values, a VM that disappears from the engine
simply stops being exported, and 10,000 VMs cost no metric objects at all between scrapes (see
``bench/metrics_scrape.py`` for the comparison with labelled ``Gauge`` objects).

The states belong to the asyncio loop that runs the engine, while prometheus-client's HTTP server
scrapes from its own threads. So the collector copies what it needs into plain tuples *on the
loop* (between two engine batches, hence a consistent cut), and formats them on the scrape thread.

The one exception to "projection of the log" is the processing-latency histogram, which measures
this process: the service calls :meth:`EngineMetrics.observe_batch` after every batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from services.dm_engine.state import Capabilities, VmState
from services.metrics.log_health import WRITABLE, WRITE_ERRORS, LogHealthCollector, log_health_of

PAGE_SIZE = 4096
MIB = 1 << 20

#: Engine batches take from tens of microseconds (one tick) to seconds (a recovery-sized backlog).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class EngineView(Protocol):
    """What the collector reads from an engine runner (``EngineRunner`` has all of it)."""

    states: dict[str, VmState]

    @property
    def consumed(self) -> int: ...

    def lag(self) -> int: ...

    def events_since_snapshot(self) -> int: ...


#: (help, type) of every metric family; ``describe`` and the docs are generated from it.
METRICS: dict[str, tuple[str, str]] = {
    "hvdm_vm_boot_bytes": ("Boot RAM of the VM (never ballooned below, never hot-removed).", "gauge"),
    "hvdm_vm_current_bytes": ("Memory the guest can use now: boot + hot-added - ballooned.", "gauge"),
    "hvdm_vm_target_bytes": ("Size the operator asked for with balloon (absent until set).", "gauge"),
    "hvdm_vm_ballooned_bytes": ("Guest memory the host has taken back by ballooning.", "gauge"),
    "hvdm_vm_hot_added_bytes": ("Memory hot-added to the guest through vDIMMs and still in it.", "gauge"),
    "hvdm_vm_guest_available_bytes": ("Available memory in the guest's last status report.", "gauge"),
    "hvdm_vm_guest_committed_bytes": ("Committed memory in the guest's last status report.", "gauge"),
    "hvdm_vm_pressure_ratio": ("Guest committed memory divided by its current size.", "gauge"),
    "hvdm_vm_protocol_state": ("Host protocol state of the VM (the series with value 1).", "gauge"),
    "hvdm_vm_status_reports": ("Guest memory status reports accepted.", "counter"),
    "hvdm_vm_balloon_pages": ("4 KiB pages ballooned out of (out) or returned to (in) the guest.", "counter"),
    "hvdm_vm_guest_violations": ("Guest protocol violations, by reason code.", "counter"),
    "hvdm_vm_info": ("Negotiated protocol version and guest capabilities (value 1).", "gauge"),
    "hvdm_engine_inbox_records_processed": ("Inbox records the engine has consumed.", "counter"),
    "hvdm_engine_consumer_lag_records": ("Inbox records appended but not yet processed.", "gauge"),
    "hvdm_engine_snapshot_age_events": (
        "Events recorded after the latest per-VM snapshots, summed over VMs (what a restart folds).",
        "gauge",
    ),
    "hvdm_engine_vms": ("VMs the engine holds state for.", "gauge"),
}

LATENCY_METRIC = "hvdm_engine_processing_latency_seconds"
LATENCY_HELP = "Wall time of one engine batch: decide, evolve and the log commit."


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape exports, copied out of the engine on its own loop."""

    rows: list[tuple[Any, ...]]
    consumed: int
    lag: int
    snapshot_age: int


def _version_label(version: int | None) -> str:
    """DM protocol versions are major.minor in the high and low 16 bits (0x00020000 is 2.0)."""
    return "" if version is None else f"{version >> 16}.{version & 0xFFFF}"


def info_labels(vm: str, version: int | None, caps: Capabilities | None) -> dict[str, str]:
    if caps is None:
        return {
            "vm": vm,
            "protocol_version": _version_label(version),
            "balloon": "",
            "hot_add": "",
            "hot_remove": "",
            "hot_add_alignment": "",
        }
    return {
        "vm": vm,
        "protocol_version": _version_label(version),
        "balloon": "true" if caps.balloon else "false",
        "hot_add": "true" if caps.hot_add else "false",
        "hot_remove": "true" if caps.hot_remove else "false",
        # Bytes (2^n MiB on the wire), so the label states its own unit.
        "hot_add_alignment": str(MIB << caps.hot_add_alignment),
    }


class HvdmCollector(Collector):
    """Yields every hvdm metric family from the runner's states at scrape time.

    ``loop``: the asyncio loop that owns the runner; scrapes from other threads read the states
    on it. Without a loop (benchmarks, synchronous tools) the states are read directly.
    """

    def __init__(
        self,
        runner: EngineView,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        read_timeout: float = 10.0,
    ) -> None:
        self._runner = runner
        self._loop = loop
        self._read_timeout = read_timeout

    # ------------------------------------------------------------------ reading the states
    def _extract(self) -> Snapshot:
        """Copy what the scrape needs into immutable tuples. Must run where the states live."""
        runner = self._runner
        rows: list[tuple[Any, ...]] = []
        append = rows.append  # hot loop over every VM: bind once
        for vm, s in runner.states.items():
            status = s.status
            append(
                (
                    vm,
                    s.boot_pages,
                    s.current_pages,
                    s.target_pages,
                    s.ballooned_pages,
                    s.hot_added_pages,
                    None if status is None else status.available_pages,
                    None if status is None else status.committed_pages,
                    s.protocol.value,
                    s.status_reports_total,
                    s.balloon_out_pages_total,
                    s.balloon_in_pages_total,
                    tuple(s.violations.items()) if s.violations else (),
                    s.version,
                    s.caps,
                )
            )
        return Snapshot(rows, runner.consumed, runner.lag(), runner.events_since_snapshot())

    def snapshot(self) -> Snapshot:
        """A consistent copy of the states, read on the engine's loop when called from elsewhere."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return self._extract()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return self._extract()
        future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self._extract())
            except BaseException as e:
                future.set_exception(e)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=self._read_timeout)

    # ------------------------------------------------------------------ the Collector API
    def describe(self) -> Iterable[Metric]:
        """The families without samples, so the registry can detect duplicate names."""
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        for name, (doc, typ) in METRICS.items():
            yield CounterMetricFamily(name, doc) if typ == "counter" else GaugeMetricFamily(name, doc)

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        fam = {f.name: f for f in self._families()}
        boot = fam["hvdm_vm_boot_bytes"].samples
        current = fam["hvdm_vm_current_bytes"].samples
        target = fam["hvdm_vm_target_bytes"].samples
        ballooned = fam["hvdm_vm_ballooned_bytes"].samples
        hot_added = fam["hvdm_vm_hot_added_bytes"].samples
        available = fam["hvdm_vm_guest_available_bytes"].samples
        committed = fam["hvdm_vm_guest_committed_bytes"].samples
        pressure = fam["hvdm_vm_pressure_ratio"].samples
        state = fam["hvdm_vm_protocol_state"].samples
        reports = fam["hvdm_vm_status_reports"].samples
        pages = fam["hvdm_vm_balloon_pages"].samples
        violations = fam["hvdm_vm_guest_violations"].samples
        info = fam["hvdm_vm_info"].samples
        # 10,000 VMs x ~17 series: Sample tuples are built directly (add_metric re-zips the
        # label names for every call) and one label dict per VM is shared by its series.
        page = PAGE_SIZE
        for (
            vm,
            boot_p,
            current_p,
            target_p,
            ballooned_p,
            hot_added_p,
            avail_p,
            committed_p,
            proto,
            n_reports,
            out_p,
            in_p,
            viol,
            version,
            caps,
        ) in snap.rows:
            lv = {"vm": vm}
            boot.append(Sample("hvdm_vm_boot_bytes", lv, float(boot_p * page), None, None, None))
            current.append(Sample("hvdm_vm_current_bytes", lv, float(current_p * page), None, None, None))
            if target_p is not None:
                target.append(Sample("hvdm_vm_target_bytes", lv, float(target_p * page), None, None, None))
            ballooned.append(Sample("hvdm_vm_ballooned_bytes", lv, float(ballooned_p * page), None, None, None))
            hot_added.append(Sample("hvdm_vm_hot_added_bytes", lv, float(hot_added_p * page), None, None, None))
            if avail_p is not None:
                available.append(Sample("hvdm_vm_guest_available_bytes", lv, float(avail_p * page), None, None, None))
                committed.append(
                    Sample("hvdm_vm_guest_committed_bytes", lv, float(committed_p * page), None, None, None)
                )
                if current_p > 0:
                    pressure.append(Sample("hvdm_vm_pressure_ratio", lv, committed_p / current_p, None, None, None))
            state.append(Sample("hvdm_vm_protocol_state", {"vm": vm, "state": proto}, 1.0, None, None, None))
            reports.append(Sample("hvdm_vm_status_reports_total", lv, float(n_reports), None, None, None))
            pages.append(
                Sample("hvdm_vm_balloon_pages_total", {"vm": vm, "direction": "out"}, float(out_p), None, None, None)
            )
            pages.append(
                Sample("hvdm_vm_balloon_pages_total", {"vm": vm, "direction": "in"}, float(in_p), None, None, None)
            )
            for reason, count in viol:
                violations.append(
                    Sample(
                        "hvdm_vm_guest_violations_total",
                        {"vm": vm, "reason": reason},
                        float(count),
                        None,
                        None,
                        None,
                    )
                )
            info.append(Sample("hvdm_vm_info", info_labels(vm, version, caps), 1.0, None, None, None))
        for name, value in (
            ("hvdm_engine_inbox_records_processed_total", snap.consumed),
            ("hvdm_engine_consumer_lag_records", snap.lag),
            ("hvdm_engine_snapshot_age_events", snap.snapshot_age),
            ("hvdm_engine_vms", len(snap.rows)),
        ):
            fam[name.removesuffix("_total")].samples.append(Sample(name, {}, float(value), None, None, None))
        return fam.values()


class EngineMetrics:
    """hvdm's metrics: the state collector plus the batch-latency histogram.

    ``registry`` holds both, for any prometheus-client consumer. ``start_metrics_server(metrics)``
    serves the collector through the fast text writer (``exposition.py``) and the histogram,
    which lives in ``histograms`` as well, through prometheus-client.

    Wiring (embedded service; ``serve_for_service`` does exactly this)::

        metrics = EngineMetrics(service.runner, loop=asyncio.get_running_loop())
        service.on_batch.append(metrics.observe_batch)
        server = start_metrics_server(metrics, host, port)
    """

    def __init__(
        self,
        runner: EngineView,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = HvdmCollector(runner, loop=loop)
        self.registry.register(self.collector)
        self.histograms = CollectorRegistry()
        self.latency = Histogram(LATENCY_METRIC, LATENCY_HELP, registry=self.histograms, buckets=LATENCY_BUCKETS)
        self.registry.register(self.latency)
        log_health = log_health_of(runner)
        if log_health is not None:
            self.add_collector(LogHealthCollector(log_health))

    def add_collector(self, collector: Collector) -> None:
        """Export another collector (e.g. ``rejections.RejectionCollector``) in both ``registry``
        and the scrape served by ``start_metrics_server`` (which renders ``histograms`` after the
        fast path)."""
        self.registry.register(collector)
        self.histograms.register(collector)

    def observe_batch(self, records: int, seconds: float) -> None:
        """The service's per-batch hook: (records processed, wall seconds the batch took)."""
        self.latency.observe(seconds)


def metric_names() -> list[str]:
    """Every sample name hvdm exports (counters with ``_total``, the histogram's series)."""
    names = [f"{n}_total" if typ == "counter" else n for n, (_, typ) in METRICS.items()]
    names += [f"{LATENCY_METRIC}_bucket", f"{LATENCY_METRIC}_sum", f"{LATENCY_METRIC}_count"]
    names += [WRITABLE, f"{WRITE_ERRORS}_total"]  # log_health.py
    return names
