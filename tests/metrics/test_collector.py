"""The exporter against a real EmbeddedService: values, names, restarts, VMs leaving, threads."""

from __future__ import annotations

import asyncio
import platform
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.dm_engine.config import EngineConfig
from services.embedded.runner import EngineRunner
from services.embedded.service import EmbeddedService
from services.event_log.sqlite_log import SqliteLog
from services.metrics import (
    METRICS,
    EngineMetrics,
    HvdmCollector,
    LabelError,
    MetricsLabels,
    metric_names,
    serve_for_service,
)
from services.metrics.collector import PROTOCOL_STATES, hvdm_version
from services.metrics.exposition import render
from services.metrics.server import start_metrics_server
from tests.metrics.fleet import BOOT, drive_fleet
from tests.metrics.guest_driver import GIB, MIB

FROZEN = 1e-9
FAST = EngineConfig(post_init_wait_ticks=1)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str | bytes, *, hvdm_only: bool = False) -> Samples:
    if isinstance(text, bytes):
        text = text.decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if hvdm_only and "latency" in s.name:
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        body: bytes = resp.read()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return body.decode()


def value(s: Samples, name: str, **labels: str) -> float:
    return s[(name, tuple(sorted(labels.items())))]


def series(s: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in s if n == name]


def test_a_scrape_exports_every_metric_of_a_real_engine(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        served = serve_for_service(service, "127.0.0.1", 0)
        try:
            before = time.time()
            await drive_fleet(service)
            # Scraped over HTTP from another thread, as Prometheus does, while the loop runs.
            s = samples(await asyncio.to_thread(fetch, served.url))
            consumed = service.runner.consumed
        finally:
            served.close()
            await service.stop()

        created = {n for n, _ in s if n.endswith("_created")}
        only_elsewhere = {n for n in metric_names() if n.startswith(("hvdm_gateway_", "hvdm_qmp_"))}
        assert {n for n, _ in s} - created == set(metric_names()) - only_elsewhere
        a = {"vm": "vm-a"}
        assert value(s, "hvdm_vm_boot_bytes", **a) == BOOT
        assert value(s, "hvdm_vm_maxmem_bytes", **a) == 64 * GIB
        assert value(s, "hvdm_vm_current_bytes", **a) == BOOT - 256 * MIB
        assert value(s, "hvdm_vm_target_bytes", **a) == BOOT - 256 * MIB
        assert value(s, "hvdm_vm_ballooned_bytes", **a) == 256 * MIB
        assert value(s, "hvdm_vm_hot_added_bytes", **a) == 0
        assert value(s, "hvdm_vm_guest_available_bytes", **a) == 3 * GIB
        assert value(s, "hvdm_vm_guest_committed_bytes", **a) == 3 * GIB
        # Demand is committed minus ballooned (Linux counts its ballooned pages as committed), and
        # the pressure is demand / current: a VM shrunk on purpose does not read as starving.
        assert value(s, "hvdm_vm_guest_demand_bytes", **a) == 3 * GIB - 256 * MIB
        assert value(s, "hvdm_vm_pressure_ratio", **a) == pytest.approx((3 * GIB - 256 * MIB) / (BOOT - 256 * MIB))
        assert value(s, "hvdm_vm_connected", **a) == 1
        assert value(s, "hvdm_vm_connected", vm="vm-c") == 1
        assert before - 1 <= value(s, "hvdm_vm_last_status_report_timestamp_seconds", **a) <= time.time()
        assert value(s, "hvdm_vm_status_reports_total", **a) == 1
        assert value(s, "hvdm_vm_balloon_bytes_total", direction="out", **a) == 256 * MIB
        assert value(s, "hvdm_vm_balloon_bytes_total", direction="in", **a) == 0
        assert value(s, "hvdm_vm_guest_violations_total", reason="TRUNCATED", **a) == 1
        assert value(s, "hvdm_vm_hot_added_bytes", vm="vm-b") == GIB
        assert value(s, "hvdm_vm_current_bytes", vm="vm-b") == BOOT + GIB
        # The protocol state is a state set: one series per state and VM, 1 for the current one.
        states = series(s, "hvdm_vm_protocol_state")
        assert len(states) == 3 * len(PROTOCOL_STATES)
        assert sorted((d["vm"], d["state"]) for d in states if value(s, "hvdm_vm_protocol_state", **d) == 1) == [
            ("vm-a", "IDLE"),
            ("vm-b", "IDLE"),
            ("vm-c", "VERSION"),
        ]
        assert value(s, "hvdm_vm_protocol_state", vm="vm-c", state="IDLE") == 0
        assert value(s, "hvdm_build_info", version=hvdm_version(), python_version=platform.python_version()) == 1
        assert s[("process_resident_memory_bytes", ())] > 0
        info = {d["vm"]: d for d in series(s, "hvdm_vm_info")}
        assert info["vm-a"] == {
            "vm": "vm-a",
            "protocol_version": "2.0",
            "balloon": "true",
            "hot_add": "true",
            "hot_remove": "false",
            "hot_add_alignment": str(128 * MIB),
        }
        assert info["vm-c"]["protocol_version"] == "" and info["vm-c"]["hot_add"] == ""
        # Only what is known is exported: vm-c has no status report and no target yet.
        assert [d["vm"] for d in series(s, "hvdm_vm_guest_committed_bytes")] == ["vm-a"]
        assert {d["vm"] for d in series(s, "hvdm_vm_target_bytes")} == {"vm-a", "vm-b"}
        assert s[("hvdm_engine_vms", ())] == 3
        assert s[("hvdm_engine_consumer_lag_records", ())] == 0
        assert s[("hvdm_engine_inbox_records_processed_total", ())] == consumed
        assert s[("hvdm_engine_snapshot_age_events", ())] > 0
        assert s[("hvdm_engine_processing_latency_seconds_count", ())] > 0

    asyncio.run(scenario())


def test_fast_exposition_equals_generate_latest_of_the_collector(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        try:
            await drive_fleet(service)
            metrics = EngineMetrics(service.runner, loop=asyncio.get_running_loop())
            fast = _stable(samples(render(metrics.collector, metrics.extra)))
            generic = _stable(samples(generate_latest(metrics.registry)))
        finally:
            await service.stop()
        assert fast == generic
        assert any(name == "hvdm_vm_guest_demand_bytes" for name, _ in fast)

    asyncio.run(scenario())


def _stable(s: Samples) -> Samples:
    """Without the series that change between two collections (process CPU, memory, GC, created)."""
    return {k: v for k, v in s.items() if not k[0].startswith(("process_", "python_gc_")) and "_created" not in k[0]}


def test_host_domain_and_uuid_labels_join_libvirt_exporters(tmp_path: Path) -> None:
    uuid = "5A2B1C3D-0000-4000-8000-00000000000A"
    labels = MetricsLabels(host="hv07", vm_labels=("vm", "domain"), uuids={"vm-a": uuid})

    async def scenario() -> tuple[Samples, Samples]:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        try:
            await drive_fleet(service)
            metrics = EngineMetrics(service.runner, labels=labels)
            return _stable(samples(render(metrics.collector, metrics.extra))), _stable(
                samples(generate_latest(metrics.registry))
            )
        finally:
            await service.stop()

    fast, generic = asyncio.run(scenario())
    assert fast == generic
    a = {"host": "hv07", "vm": "vm-a", "domain": "vm-a", "uuid": uuid.lower()}
    assert value(fast, "hvdm_vm_current_bytes", **a) == BOOT - 256 * MIB
    assert value(fast, "hvdm_vm_balloon_bytes_total", direction="out", **a) == 256 * MIB
    assert value(fast, "hvdm_vm_current_bytes", host="hv07", vm="vm-b", domain="vm-b") == BOOT + GIB
    assert fast[("hvdm_engine_vms", (("host", "hv07"),))] == 3
    assert any(name == "hvdm_build_info" and ("host", "hv07") in lv for name, lv in fast)
    # Every series carries the host label.
    assert all(("host", "hv07") in lv for name, lv in fast if name.startswith("hvdm_"))
    only_domain = EngineMetrics(_EmptyRunner(), labels=MetricsLabels(vm_labels=("domain",)))
    assert only_domain.labels.vm("x") == {"domain": "x"}
    with pytest.raises(LabelError):
        MetricsLabels(vm_labels=("name",))
    with pytest.raises(LabelError):
        MetricsLabels(uuids={"vm-a": "not-a-uuid"})


def test_label_values_are_escaped(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        try:
            from tests.metrics.guest_driver import GuestDriver

            await GuestDriver(service, 'we"ird\\vm\nname').open()
            metrics = EngineMetrics(service.runner)
            s = samples(render(metrics.collector))
        finally:
            await service.stop()
        assert value(s, "hvdm_vm_boot_bytes", vm='we"ird\\vm\nname') == BOOT

    asyncio.run(scenario())


def _without_process_local(s: Samples) -> Samples:
    return {k: v for k, v in s.items() if "latency" not in k[0]}


def test_values_are_a_projection_of_the_log_and_survive_a_restart(tmp_path: Path) -> None:
    async def first() -> Samples:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST, snapshot_every=7)
        await service.start()
        try:
            await drive_fleet(service)
            return _without_process_local(samples(render(EngineMetrics(service.runner).collector)))
        finally:
            await service.stop()

    async def second() -> Samples:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST, snapshot_every=7)
        await service.start()
        try:
            return _without_process_local(samples(render(EngineMetrics(service.runner).collector)))
        finally:
            await service.stop()

    before = asyncio.run(first())
    after = asyncio.run(second())
    assert after == before


def test_a_vm_that_goes_away_stops_being_exported(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        try:
            await drive_fleet(service)
            collector = EngineMetrics(service.runner).collector
            assert any(d.get("vm") == "vm-b" for d in _all_labels(collector.collect()))
            del service.runner.states["vm-b"]
            labels = _all_labels(collector.collect())
            assert not any(d.get("vm") == "vm-b" for d in labels)
            assert any(d.get("vm") == "vm-a" for d in labels)
            s = samples(render(collector))
            assert not [k for k in s if ("vm", "vm-b") in k[1]]
            assert s[("hvdm_engine_vms", ())] == 2
        finally:
            await service.stop()

    asyncio.run(scenario())


def _all_labels(families: Iterable[Any]) -> list[dict[str, str]]:
    return [dict(s.labels) for f in families for s in f.samples]


def test_scrapes_from_other_threads_read_the_states_on_the_engine_loop(tmp_path: Path) -> None:
    """The engine mutates states on its loop; a scrape thread must never read them mid-batch."""
    seen: list[int] = []

    class Recording(HvdmCollector):
        def _extract(self) -> Any:
            seen.append(threading.get_ident())
            return super()._extract()

    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        try:
            await drive_fleet(service)
            collector = Recording(service.runner, loop=asyncio.get_running_loop())
            loop_thread = threading.get_ident()
            await asyncio.to_thread(lambda: list(collector.collect()))  # from a worker thread
            list(collector.collect())  # on the loop itself: read directly, no deadlock
            assert seen == [loop_thread, loop_thread]
        finally:
            await service.stop()

    asyncio.run(scenario())
    # Without a running loop (tools, benchmarks) the states are read in place.
    runner = EngineRunner(SqliteLog(tmp_path / "hvdm.db"))
    try:
        list(Recording(runner).collect())
    finally:
        runner.log.close()
    assert seen[-1] == threading.get_ident()


def test_registry_rejects_a_second_exporter_and_plain_registries_are_served(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        try:
            await drive_fleet(service)
            metrics = EngineMetrics(service.runner, loop=asyncio.get_running_loop())
            with pytest.raises(ValueError, match="Duplicated timeseries"):
                EngineMetrics(service.runner, registry=metrics.registry)
            # Any registry can be served too (prometheus-client's own formatter).
            server = start_metrics_server(metrics.registry, "127.0.0.1", 0, max_age=0)
            try:
                s = samples(await asyncio.to_thread(fetch, server.url))
            finally:
                server.stop()
            assert value(s, "hvdm_vm_current_bytes", vm="vm-a") == BOOT - 256 * MIB
            with pytest.raises(urllib.error.URLError):
                await asyncio.to_thread(fetch, server.url)  # stopped means stopped
        finally:
            await service.stop()

    asyncio.run(scenario())


def test_every_documented_metric_has_help_and_a_type() -> None:
    for name, (doc, typ) in METRICS.items():
        assert name.startswith(("hvdm_vm_", "hvdm_engine_"))
        assert "never ballooned below" not in doc
        assert doc.endswith(".") and typ in ("gauge", "counter")
        assert not name.endswith("_total")  # counters get _total from the exposition
    text = render(HvdmCollector(_EmptyRunner())).decode()
    registry = CollectorRegistry()
    registry.register(HvdmCollector(_EmptyRunner()))
    assert samples(text) == samples(generate_latest(registry))


class _EmptyRunner:
    states: dict[str, Any] = {}
    consumed = 0

    def lag(self) -> int:
        return 0

    def events_since_snapshot(self) -> int:
        return 0
