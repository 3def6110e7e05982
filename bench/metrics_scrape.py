"""What does a Prometheus scrape of 10,000 VMs cost? The state collector against labelled Gauges.

hvdm's exporter (``services.metrics``) keeps no metric objects: each scrape walks the engine's
per-VM states and yields 24 series per VM. The obvious alternative keeps one labelled child per
VM and series in ``Gauge``/``Counter`` objects and updates them as events happen. Three ways to
export the same series for the same 10,000 synthetic VMs are timed:

* ``served``: what ``start_metrics_server(EngineMetrics)`` answers a scrape with (state snapshot
  plus hvdm's own text writer);
* ``collector``: the same collector formatted by prometheus-client's ``generate_latest``;
* ``Gauge objects`` (the baseline): labelled children, formatted by ``generate_latest``.

Figures: scrape time (median of ``--repeat``), exposition size (plain, and gzip level 1 as the
server sends it to Prometheus), memory held between scrapes, and ratios to the baseline measured in
this same process. ``_created`` series are disabled so all three export the same series.

Run: ``python -m bench.metrics_scrape`` or ``hvdm bench metrics_scrape`` (``--vms N``, ``--repeat R``).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)

from services.dm_engine.state import Capabilities, GuestStatus, ProtocolState, VmCounters, VmState
from services.metrics.collector import EngineMetrics, MetricsLabels, info_labels
from services.metrics.exposition import GZIP_LEVEL, render
from services.range_store import PageRangeSet
from services.units import MIB
from services.units import PAGE_SIZE as PAGE

GIB_PAGES = 1 << 18
HOST = "hv01"
_STATES = list(ProtocolState)


class _Runner:
    """Just what the collector reads: states, a consumed position, a lag and the snapshot age."""

    def __init__(self, states: dict[str, VmState]) -> None:
        self.states = states
        self.consumed = 123_456_789
        self._events_since_snapshot = {vm: 1000 for vm in states}

    def lag(self) -> int:
        return 0

    def events_since_snapshot(self) -> int:
        return sum(self._events_since_snapshot.values())


def build_states(n: int) -> dict[str, VmState]:
    """``n`` plausible VMs: 4-16 GiB boot, some ballooned, some hot-added, a few misbehaving."""
    states: dict[str, VmState] = {}
    for i in range(n):
        vm = f"vm-{i:05d}"
        boot = (4 + i % 13) * GIB_PAGES
        hot = (i % 3) * GIB_PAGES
        owned = PageRangeSet([(0, boot)])
        if hot:
            owned.add(32 * GIB_PAGES, hot)
        ballooned = PageRangeSet()
        if i % 2:
            ballooned.add(boot - (i % 7 + 1) * 4096, (i % 7 + 1) * 4096)
        caps = Capabilities(
            balloon=True,
            hot_add=bool(i % 5),
            hot_add_alignment=7,
            hot_remove=False,
            min_page_cnt=0,
            max_page_number=(1 << 64) - 1,
        )
        states[vm] = VmState(
            vm_id=vm,
            described=True,
            boot_pages=boot,
            maxmem_pages=64 * GIB_PAGES,
            protocol=_STATES[i % len(_STATES)],
            version=0x00020000,
            caps=caps,
            target_pages=boot + hot - (i % 7) * 4096,
            ballooned=ballooned,
            owned=owned,
            status=GuestStatus(tick=i, available_pages=boot // 2, committed_pages=boot // 3 + i),
            counters=VmCounters(
                status_reports_total=i * 3,
                balloon_out_pages_total=i * 4096,
                balloon_in_pages_total=i * 1024,
                violations={"DOUBLE_FREE": i % 4} if i % 97 == 0 else {},
            ),
        )
    return states


def build_baseline(states: dict[str, VmState]) -> CollectorRegistry:
    """The same series as labelled prometheus-client metric objects, one child per VM and series."""
    reg = CollectorRegistry()
    vm = ["host", "vm"]
    g = {
        name: Gauge(name, name, vm, registry=reg)
        for name in (
            "hvdm_vm_boot_bytes",
            "hvdm_vm_maxmem_bytes",
            "hvdm_vm_current_bytes",
            "hvdm_vm_target_bytes",
            "hvdm_vm_ballooned_bytes",
            "hvdm_vm_hot_added_bytes",
            "hvdm_vm_guest_available_bytes",
            "hvdm_vm_guest_committed_bytes",
            "hvdm_vm_guest_demand_bytes",
            "hvdm_vm_pressure_ratio",
            "hvdm_vm_connected",
        )
    }
    proto = Gauge("hvdm_vm_protocol_state", "state", [*vm, "state"], registry=reg)
    reports = Counter("hvdm_vm_status_reports", "reports", vm, registry=reg)
    traffic = Counter("hvdm_vm_balloon_bytes", "bytes", [*vm, "direction"], registry=reg)
    viol = Counter("hvdm_vm_guest_violations", "violations", [*vm, "reason"], registry=reg)
    rejected = Counter("hvdm_vm_inputs_rejected", "rejected", vm, registry=reg)
    attention = Gauge("hvdm_vm_needs_attention", "attention", vm, registry=reg)
    info_names = ["protocol_version", "balloon", "hot_add", "hot_remove", "hot_add_alignment"]
    info = Gauge("hvdm_vm_info", "info", [*vm, *info_names], registry=reg)
    for name, s in states.items():
        assert s.status is not None and s.target_pages is not None
        ids = (HOST, name)
        demand = max(0, s.status.committed_pages - s.ballooned_pages)
        g["hvdm_vm_boot_bytes"].labels(*ids).set(s.boot_pages * PAGE)
        g["hvdm_vm_maxmem_bytes"].labels(*ids).set(s.maxmem_pages * PAGE)
        g["hvdm_vm_current_bytes"].labels(*ids).set(s.current_pages * PAGE)
        g["hvdm_vm_target_bytes"].labels(*ids).set(s.target_pages * PAGE)
        g["hvdm_vm_ballooned_bytes"].labels(*ids).set(s.ballooned_pages * PAGE)
        g["hvdm_vm_hot_added_bytes"].labels(*ids).set(s.hot_added_pages * PAGE)
        g["hvdm_vm_guest_available_bytes"].labels(*ids).set(s.status.available_pages * PAGE)
        g["hvdm_vm_guest_committed_bytes"].labels(*ids).set(s.status.committed_pages * PAGE)
        g["hvdm_vm_guest_demand_bytes"].labels(*ids).set(demand * PAGE)
        g["hvdm_vm_pressure_ratio"].labels(*ids).set(demand / s.current_pages)
        g["hvdm_vm_connected"].labels(*ids).set(0 if s.protocol is ProtocolState.CLOSED else 1)
        for st in _STATES:
            proto.labels(*ids, st.value).set(1 if st is s.protocol else 0)
        reports.labels(*ids).inc(s.counters.status_reports_total)
        traffic.labels(*ids, "out").inc(s.counters.balloon_out_pages_total * PAGE)
        traffic.labels(*ids, "in").inc(s.counters.balloon_in_pages_total * PAGE)
        for reason, count in s.counters.violations.items():
            viol.labels(*ids, reason).inc(count)
        rejected.labels(*ids).inc(s.counters.inputs_rejected_total)
        attention.labels(*ids).set(1 if s.needs_attention else 0)
        labels = info_labels(s.version, s.caps)
        info.labels(*ids, *(labels[k] for k in info_names)).set(1)
    return reg


def _median_seconds(fn: Callable[[], bytes], repeat: int) -> tuple[float, bytes]:
    times = []
    out = b""
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _held_bytes(build: Callable[[], object]) -> tuple[int, object]:
    """Bytes still allocated once ``build`` returns (what lives between two scrapes)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    obj = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, obj


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hvdm bench metrics_scrape", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10_000, help="number of VMs (default 10000)")
    parser.add_argument("--repeat", type=int, default=5, help="scrapes per registry (median)")
    args = parser.parse_args(list(argv))
    disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        _run(args.vms, args.repeat)
    finally:
        enable_created_metrics()  # type: ignore[no-untyped-call]  # a process-wide switch
    return 0


def _run(vms: int, repeat: int) -> None:
    states = build_states(vms)
    runner = _Runner(states)

    held_ours, ours_obj = _held_bytes(
        lambda: EngineMetrics(runner, labels=MetricsLabels(host=HOST), process_collectors=False)
    )
    assert isinstance(ours_obj, EngineMetrics)
    ours = ours_obj
    t0 = time.perf_counter()
    held_base, base_obj = _held_bytes(lambda: build_baseline(states))
    populate_s = time.perf_counter() - t0
    assert isinstance(base_obj, CollectorRegistry)
    base = base_obj

    extract_s, _ = _median_seconds(lambda: (ours.collector.snapshot(), b"")[1], repeat)
    served_s, served_text = _median_seconds(lambda: render(ours.collector, ours.extra), repeat)
    served_gz_s, _ = _median_seconds(lambda: gzip.compress(render(ours.collector, ours.extra), GZIP_LEVEL), repeat)
    coll_s, coll_text = _median_seconds(lambda: generate_latest(ours.registry), repeat)
    base_s, base_text = _median_seconds(lambda: generate_latest(base), repeat)

    def series(text: bytes) -> int:
        return sum(1 for line in text.splitlines() if line.startswith(b"hvdm_vm_"))

    def gz(text: bytes) -> int:
        return len(gzip.compress(text, GZIP_LEVEL))

    rows = [("served", served_s, served_text), ("collector", coll_s, coll_text), ("Gauge objects", base_s, base_text)]
    print(f"metrics scrape, {vms} VMs, per-VM series: " + ", ".join(f"{n} {series(t)}" for n, _, t in rows))
    print(f"{'':16}{'scrape (median)':>17}{'ratio':>7}{'plain':>12}{'gzip':>11}{'ratio':>7}{'bytes/VM':>10}")
    for name, secs, text in rows:
        print(
            f"{name:16}{secs * 1000:>14.1f} ms{secs / base_s:>7.2f}{len(text) / MIB:>8.2f} MiB"
            f"{gz(text) / MIB:>7.2f} MiB{gz(text) / gz(base_text):>7.2f}{len(text) / vms:>10.0f}"
        )
    print(
        f"served = {extract_s * 1000:.1f} ms reading the states (on the engine's loop) + formatting; "
        f"{served_gz_s * 1000:.1f} ms including gzip, as Prometheus asks for it"
    )
    print(
        f"held between scrapes: collector {held_ours / MIB:.2f} MiB, Gauge objects {held_base / MIB:.2f} MiB "
        f"(baseline spent {populate_s * 1000:.0f} ms creating and setting its children)"
    )
    print(
        f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
