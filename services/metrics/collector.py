"""Prometheus metrics as a projection of the engine's state, built at scrape time.

Nothing is updated while the engine runs: every scrape reads the per-VM states (the fold of the
event log), so a restarted engine exports the same values, a VM that disappears from the engine
simply stops being exported, and 10,000 VMs cost no metric objects at all between scrapes (see
``bench/metrics_scrape.py`` for the comparison with labelled ``Gauge`` objects).

The states belong to the asyncio loop that runs the engine, while the HTTP server scrapes from
its own threads. So the collector copies what it needs into plain tuples *on the loop* (between
two engine batches, hence a consistent cut), and formats them on the scrape thread.

Two figures are not projections of the log: the processing-latency histogram, which measures this
process (the service calls :meth:`EngineMetrics.observe_batch` after every batch), and the wall
time of a VM's last status report, which maps the engine tick the report was stamped with to
wall-clock time through the service's clock (``wall_of_tick``); the log itself holds ticks only.

What a series means, in the words an operator needs (README and deploy/README.md list them):
``demand`` is what the guest needs: its committed memory minus the pages the host has ballooned
out of it, because Linux's ``hv_balloon`` counts ballooned pages as committed (the rebalancer's
figure, ``services/rebalancer/fleet_view.py``). ``pressure`` is demand / current size, so a VM
that was deliberately shrunk does not read as starving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import platform
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ..dm_engine.state import Capabilities, ProtocolState, VmState
from ..units import MIB, PAGE_SIZE
from .log_health import WRITABLE, WRITE_ERRORS, LogHealthCollector, log_health_of
from .rejections import HTTP_REJECTED

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

#: Every protocol state, in the order ``hvdm_vm_protocol_state`` lists them (a state set).
PROTOCOL_STATES: tuple[str, ...] = tuple(s.value for s in ProtocolState)

#: Label names that may carry the VM id (``--metrics-vm-label``): hvdm's own, and libvirt's.
VM_LABEL_NAMES = ("vm", "domain")

T = TypeVar("T")


class EngineView(Protocol):
    """What the collector reads from an engine runner (``EngineRunner`` has all of it)."""

    @property
    def states(self) -> Mapping[str, VmState]: ...

    @property
    def consumed(self) -> int: ...

    def lag(self) -> int: ...

    def events_since_snapshot(self) -> int: ...


#: Maps (VM, engine tick) to Unix time; None where the service has no wall clock to offer.
WallOfTick = Callable[[str, int], float | None]


# ---------------------------------------------------------------------------------------- labels
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class LabelError(ValueError):
    """A label option that cannot be honoured (unknown label name, malformed UUID)."""


@dataclass(frozen=True, slots=True)
class MetricsLabels:
    """The labels that place a series: which host exported it and which VM it is about.

    * ``host``: the ``host`` label of every hvdm series (``--metrics-host-label``, default the
      machine's hostname; "" leaves it out). On a Kafka worker it names the worker's machine.
    * ``vm_labels``: the label name(s) carrying the VM id: ``vm`` (hvdm's, what the shipped
      dashboard and rules use), ``domain`` (libvirt exporters' name for it, so series join), or
      both.
    * ``uuids``: VM id -> QEMU/libvirt UUID (``--metrics-uuid-file``); VMs listed get a ``uuid``
      label. Other VMs get the UUID the log recorded for them (a hello's ``uuid``, QEMU's
      ``query-uuid``), if any.
    """

    host: str = ""
    vm_labels: tuple[str, ...] = ("vm",)
    uuids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vm_labels or any(n not in VM_LABEL_NAMES for n in self.vm_labels):
            raise LabelError(f"VM label names must be among {', '.join(VM_LABEL_NAMES)}: {self.vm_labels!r}")
        if len(set(self.vm_labels)) != len(self.vm_labels):
            raise LabelError(f"VM label named twice: {self.vm_labels!r}")
        for vm, uuid in self.uuids.items():
            if not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
                raise LabelError(f"VM {vm!r}: {uuid!r} is not a UUID (8-4-4-4-12 hex digits)")

    @classmethod
    def default(cls) -> MetricsLabels:
        return cls(host=socket.gethostname())

    def common(self) -> dict[str, str]:
        """Labels of every series this process exports (engine-wide, gateway, build info)."""
        return {"host": self.host} if self.host else {}

    def vm(self, vm: str, recorded_uuid: str | None = None) -> dict[str, str]:
        """Labels that identify one VM's series. ``recorded_uuid``: the UUID the log recorded for it
        (``VmIdentified``, from its hello or QEMU's ``query-uuid``); ``uuids`` (the file) wins."""
        out = self.common()
        for name in self.vm_labels:
            out[name] = vm
        uuid = self.uuids.get(vm, recorded_uuid)
        if uuid is not None:
            out["uuid"] = uuid.lower()
        return out


def parse_vm_labels(text: str) -> tuple[str, ...]:
    """``--metrics-vm-label``: "vm", "domain" or "vm,domain".

    >>> parse_vm_labels("vm,domain")
    ('vm', 'domain')
    """
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    MetricsLabels(vm_labels=names)  # validates
    return names


# ---------------------------------------------------------------------------------------- families
#: (help, type) of every per-VM and engine family the state collector yields, in exposition order.
METRICS: dict[str, tuple[str, str]] = {
    "hvdm_vm_boot_bytes": ("Boot RAM of the VM: the memory it started with, before hot-add or ballooning.", "gauge"),
    "hvdm_vm_maxmem_bytes": ("Maximum memory of the VM (maxmem): boot RAM plus its hot-add window.", "gauge"),
    "hvdm_vm_current_bytes": ("Memory the guest can use now: boot + hot-added - ballooned.", "gauge"),
    "hvdm_vm_target_bytes": ("Size the operator asked for with balloon (absent until set).", "gauge"),
    "hvdm_vm_ballooned_bytes": ("Guest memory the host has taken back by ballooning.", "gauge"),
    "hvdm_vm_hot_added_bytes": ("Memory hot-added to the guest through vDIMMs and still in it.", "gauge"),
    "hvdm_vm_guest_available_bytes": ("Available memory in the guest's last status report.", "gauge"),
    "hvdm_vm_guest_committed_bytes": (
        "Committed memory in the guest's last status report (Linux guests count ballooned pages in it).",
        "gauge",
    ),
    "hvdm_vm_guest_demand_bytes": (
        "Memory the guest needs: committed minus ballooned (the rebalancer's demand), from its last report.",
        "gauge",
    ),
    "hvdm_vm_pressure_ratio": ("Guest demand divided by its current size (1 = it uses all it has).", "gauge"),
    "hvdm_vm_connected": ("1 while the guest's Dynamic Memory channel is open, 0 when it is closed.", "gauge"),
    "hvdm_vm_last_status_report_timestamp_seconds": (
        "Unix time of the guest's last status report (the wall time of the engine tick it arrived at).",
        "gauge",
    ),
    "hvdm_vm_protocol_state": ("Host protocol state of the VM: one series per state, 1 for the current one.", "gauge"),
    "hvdm_vm_status_reports": ("Guest memory status reports accepted.", "counter"),
    "hvdm_vm_balloon_bytes": ("Memory ballooned out of (direction=out) or returned to (in) the guest.", "counter"),
    "hvdm_vm_guest_violations": ("Guest protocol violations, by reason code.", "counter"),
    "hvdm_vm_inputs_rejected": (
        "Inputs the engine rejected for this VM because processing them raised (InputRejected events).",
        "counter",
    ),
    "hvdm_vm_needs_attention": ("1 once an input for this VM was rejected: an operator should look.", "gauge"),
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

BUILD_INFO = "hvdm_build_info"
BUILD_INFO_HELP = "hvdm's version and the Python it runs on (value 1)."

#: The gateway's families (``services.metrics.sources.GatewayCollector``).
GATEWAY_METRICS: dict[str, tuple[str, str]] = {
    "hvdm_gateway_connections": ("Guest connections open now.", "gauge"),
    "hvdm_gateway_connections_accepted": ("Guest connections accepted (hello answered ok).", "counter"),
    "hvdm_gateway_refusals": ("Guest connections refused before a channel opened, by reason.", "counter"),
    "hvdm_gateway_disconnects": ("Guest connections closed after the hello, by reason.", "counter"),
    "hvdm_gateway_frames_received": ("VMBus frames read from guests.", "counter"),
    "hvdm_gateway_frames_sent": ("VMBus frames written to guests.", "counter"),
    "hvdm_gateway_status_reports_coalesced": (
        "Guest status reports not stored because a newer one arrived within the interval.",
        "counter",
    ),
    "hvdm_gateway_undecodable_messages": ("Well-framed guest messages that do not decode.", "counter"),
    "hvdm_gateway_accept_errors": ("accept() failures (EMFILE: out of descriptors), by errno.", "counter"),
}

#: QMP command counts (``services.metrics.sources.QmpCollector``).
QMP_METRICS: dict[str, tuple[str, str]] = {
    "hvdm_qmp_commands": ("QMP commands executed, by command and result (ok or the QMP error class).", "counter"),
}

#: What prometheus-client's default collectors export on Linux (process, platform, GC).
DEFAULT_COLLECTOR_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
    "process_max_fds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
)


def hvdm_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("hvdm")
    except (ImportError, PackageNotFoundError):  # a source checkout that was never installed
        return "unknown"


# ---------------------------------------------------------------------------------------- reading on the loop
def read_on_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run ``fn`` on ``loop`` (from any thread) and return its result.

    The engine's and the gateway's objects change only on their loop, so a scrape thread reads them
    there, between two steps. Without a running loop (tools, benchmarks) ``fn`` runs in place.
    """
    if loop is None or loop.is_closed() or not loop.is_running():
        return fn()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return fn()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as e:
            future.set_exception(e)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(timeout=timeout)
    finally:
        future.cancel()  # a read that timed out must not run later on the loop


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


def info_labels(version: int | None, caps: Capabilities | None) -> dict[str, str]:
    """``hvdm_vm_info``'s own labels (the VM's identifying labels come on top)."""
    if caps is None:
        return {
            "protocol_version": _version_label(version),
            "balloon": "",
            "hot_add": "",
            "hot_remove": "",
            "hot_add_alignment": "",
        }
    return {
        "protocol_version": _version_label(version),
        "balloon": "true" if caps.balloon else "false",
        "hot_add": "true" if caps.hot_add else "false",
        "hot_remove": "true" if caps.hot_remove else "false",
        # Bytes (2^n MiB on the wire), so the label states its own unit.
        "hot_add_alignment": str(MIB << caps.hot_add_alignment),
    }


def demand_pages(committed_pages: int, ballooned_pages: int) -> int:
    """The guest's demand: committed minus ballooned, never negative (the rebalancer's rule).

    >>> demand_pages(699, 242), demand_pages(10, 50)
    (457, 0)
    """
    return max(0, committed_pages - ballooned_pages)


def _sample(name: str, labels: dict[str, str], value: float) -> Sample:
    return Sample(name, labels, value, None, None, None)


class HvdmCollector(Collector):
    """Yields every hvdm per-VM and engine family from the runner's states at scrape time.

    ``loop``: the asyncio loop that owns the runner; scrapes from other threads read the states
    on it. Without a loop (benchmarks, synchronous tools) the states are read directly.
    ``wall_of_tick``: maps a VM's engine tick to Unix time, for the last status report's timestamp.
    """

    def __init__(
        self,
        runner: EngineView,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        read_timeout: float = 10.0,
        labels: MetricsLabels | None = None,
        wall_of_tick: WallOfTick | None = None,
    ) -> None:
        self._runner = runner
        self._loop = loop
        self._read_timeout = read_timeout
        self.labels = labels if labels is not None else MetricsLabels()
        self._wall_of_tick = wall_of_tick

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    # ------------------------------------------------------------------ reading the states
    def _extract(self) -> Snapshot:
        """Copy what the scrape needs into immutable tuples. Must run where the states live."""
        runner = self._runner
        wall = self._wall_of_tick
        rows: list[tuple[Any, ...]] = []
        append = rows.append  # hot loop over every VM: bind once
        for vm, s in runner.states.items():
            status = s.status
            append(
                (
                    vm,
                    s.boot_pages,
                    s.maxmem_pages,
                    s.current_pages,
                    s.target_pages,
                    s.ballooned_pages,
                    s.hot_added_pages,
                    None if status is None else status.available_pages,
                    None if status is None else status.committed_pages,
                    None if status is None or wall is None else wall(vm, status.tick),
                    s.protocol.value,
                    s.counters.status_reports_total,
                    s.counters.balloon_out_pages_total,
                    s.counters.balloon_in_pages_total,
                    tuple(s.counters.violations.items()) if s.counters.violations else (),
                    s.version,
                    s.caps,
                    s.counters.inputs_rejected_total,
                    s.needs_attention,
                    s.uuid,
                )
            )
        return Snapshot(rows, runner.consumed, runner.lag(), runner.events_since_snapshot())

    def snapshot(self) -> Snapshot:
        """A consistent copy of the states, read on the engine's loop when called from elsewhere."""
        return read_on_loop(self._loop, self._extract, self._read_timeout)

    # ------------------------------------------------------------------ the Collector API
    def describe(self) -> Iterable[Metric]:
        """The families without samples, so the registry can detect duplicate names."""
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        for name, (doc, typ) in METRICS.items():
            yield CounterMetricFamily(name, doc) if typ == "counter" else GaugeMetricFamily(name, doc)

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        families = list(self._families())
        fam = {f.name: f.samples for f in families}
        page = PAGE_SIZE
        vm_labels = self.labels.vm
        for (
            vm,
            boot_p,
            maxmem_p,
            current_p,
            target_p,
            ballooned_p,
            hot_added_p,
            avail_p,
            committed_p,
            status_time,
            proto,
            n_reports,
            out_p,
            in_p,
            viol,
            version,
            caps,
            n_rejected,
            needs_attention,
            uuid,
        ) in snap.rows:
            lv = vm_labels(vm, uuid)
            fam["hvdm_vm_boot_bytes"].append(_sample("hvdm_vm_boot_bytes", lv, float(boot_p * page)))
            if maxmem_p:
                fam["hvdm_vm_maxmem_bytes"].append(_sample("hvdm_vm_maxmem_bytes", lv, float(maxmem_p * page)))
            fam["hvdm_vm_current_bytes"].append(_sample("hvdm_vm_current_bytes", lv, float(current_p * page)))
            if target_p is not None:
                fam["hvdm_vm_target_bytes"].append(_sample("hvdm_vm_target_bytes", lv, float(target_p * page)))
            fam["hvdm_vm_ballooned_bytes"].append(_sample("hvdm_vm_ballooned_bytes", lv, float(ballooned_p * page)))
            fam["hvdm_vm_hot_added_bytes"].append(_sample("hvdm_vm_hot_added_bytes", lv, float(hot_added_p * page)))
            if avail_p is not None:
                demand = demand_pages(committed_p, ballooned_p)
                fam["hvdm_vm_guest_available_bytes"].append(
                    _sample("hvdm_vm_guest_available_bytes", lv, float(avail_p * page))
                )
                fam["hvdm_vm_guest_committed_bytes"].append(
                    _sample("hvdm_vm_guest_committed_bytes", lv, float(committed_p * page))
                )
                fam["hvdm_vm_guest_demand_bytes"].append(
                    _sample("hvdm_vm_guest_demand_bytes", lv, float(demand * page))
                )
                if current_p > 0:
                    fam["hvdm_vm_pressure_ratio"].append(_sample("hvdm_vm_pressure_ratio", lv, demand / current_p))
            fam["hvdm_vm_connected"].append(_sample("hvdm_vm_connected", lv, 0.0 if proto == "CLOSED" else 1.0))
            if status_time is not None:
                name = "hvdm_vm_last_status_report_timestamp_seconds"
                fam[name].append(_sample(name, lv, float(status_time)))
            for st in PROTOCOL_STATES:
                fam["hvdm_vm_protocol_state"].append(
                    _sample("hvdm_vm_protocol_state", {**lv, "state": st}, 1.0 if st == proto else 0.0)
                )
            fam["hvdm_vm_status_reports"].append(_sample("hvdm_vm_status_reports_total", lv, float(n_reports)))
            for direction, pages in (("out", out_p), ("in", in_p)):
                fam["hvdm_vm_balloon_bytes"].append(
                    _sample("hvdm_vm_balloon_bytes_total", {**lv, "direction": direction}, float(pages * page))
                )
            for reason, count in viol:
                fam["hvdm_vm_guest_violations"].append(
                    _sample("hvdm_vm_guest_violations_total", {**lv, "reason": reason}, float(count))
                )
            fam["hvdm_vm_inputs_rejected"].append(_sample("hvdm_vm_inputs_rejected_total", lv, float(n_rejected)))
            fam["hvdm_vm_needs_attention"].append(
                _sample("hvdm_vm_needs_attention", lv, 1.0 if needs_attention else 0.0)
            )
            fam["hvdm_vm_info"].append(_sample("hvdm_vm_info", {**lv, **info_labels(version, caps)}, 1.0))
        common = self.labels.common()
        for name, value in (
            ("hvdm_engine_inbox_records_processed_total", snap.consumed),
            ("hvdm_engine_consumer_lag_records", snap.lag),
            ("hvdm_engine_snapshot_age_events", snap.snapshot_age),
            ("hvdm_engine_vms", len(snap.rows)),
        ):
            fam[name.removesuffix("_total")].append(_sample(name, common, float(value)))
        return families


class BuildInfoCollector(Collector):
    """``hvdm_build_info{version, python_version}`` = 1, as every Prometheus exporter offers."""

    def __init__(self, labels: MetricsLabels | None = None) -> None:
        common = (labels or MetricsLabels()).common()
        self._labels = {**common, "version": hvdm_version(), "python_version": platform.python_version()}

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(BUILD_INFO, BUILD_INFO_HELP)
        family.samples.append(_sample(BUILD_INFO, dict(self._labels), 1.0))
        return [family]


def process_registry(labels: MetricsLabels | None = None) -> CollectorRegistry:
    """prometheus-client's default process, platform and GC collectors plus hvdm's build info.

    A registry of its own (not the global ``REGISTRY``), so two exporters in one process (tests)
    never collide.
    """
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(BuildInfoCollector(labels))
    return registry


class EngineMetrics:
    """hvdm's engine metrics: the state collector, the batch-latency histogram and the process's.

    ``registry`` holds everything, for any prometheus-client consumer. ``start_metrics_server``
    serves the state collector through the fast text writer (``exposition.py``) and ``extra`` (the
    histogram, build info, process/GC collectors and whatever a service adds, such as the gateway's
    and QMP's counters) through prometheus-client.

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
        labels: MetricsLabels | None = None,
        wall_of_tick: WallOfTick | None = None,
        process_collectors: bool = True,
    ) -> None:
        self.labels = labels if labels is not None else MetricsLabels()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector = HvdmCollector(runner, loop=loop, labels=self.labels, wall_of_tick=wall_of_tick)
        self.registry.register(self.collector)
        self.extra = process_registry(self.labels) if process_collectors else CollectorRegistry()
        common = list(self.labels.common())
        self.latency = Histogram(LATENCY_METRIC, LATENCY_HELP, common, registry=self.extra, buckets=LATENCY_BUCKETS)
        self._latency = self.latency.labels(*self.labels.common().values()) if common else self.latency
        self.registry.register(_Forward(self.extra))
        log_health = log_health_of(runner)
        if log_health is not None:
            self.add_collector(LogHealthCollector(log_health, self.labels.common()))

    def add_collector(self, collector: Collector) -> None:
        """Export another source from this process (gateway, QMP, ``rejections``) beside the engine's
        series: in ``registry`` and in the scrape ``start_metrics_server`` serves."""
        self.extra.register(collector)

    def observe_batch(self, records: int, seconds: float) -> None:
        """The service's per-batch hook: (records processed, wall seconds the batch took)."""
        self._latency.observe(seconds)


class _Forward(Collector):
    """Makes ``extra``'s collectors part of ``registry`` too, without registering them twice."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return list(self._registry.collect())


def metric_names() -> list[str]:
    """Every sample name hvdm exports (counters with ``_total``, the histogram's series), from
    every source: engine, gateway, QMP, build info and prometheus-client's default collectors."""
    names = [f"{n}_total" if typ == "counter" else n for n, (_, typ) in METRICS.items()]
    names += [f"{LATENCY_METRIC}_bucket", f"{LATENCY_METRIC}_sum", f"{LATENCY_METRIC}_count"]
    names += [f"{n}_total" if typ == "counter" else n for n, (_, typ) in {**GATEWAY_METRICS, **QMP_METRICS}.items()]
    names.append(BUILD_INFO)
    names += DEFAULT_COLLECTOR_METRICS
    names += [WRITABLE, f"{WRITE_ERRORS}_total"]  # log_health.py
    names.append(f"{HTTP_REJECTED}_total")  # rejections.py: the /metrics server's own cut-offs
    return names
