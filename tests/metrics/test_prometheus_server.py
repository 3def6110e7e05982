"""A real Prometheus scrapes a running hvdm; every Grafana panel's query must return data.

The service is a real EmbeddedService with VMs driven through the engine (see fleet.py), its
clock running at 20x so ticks, batches and the latency histogram keep moving while Prometheus
scrapes every second. The Prometheus config is rendered from deploy/ and loads deploy's rules, so
the rules are evaluated against real series too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from services.dm_engine.config import EngineConfig
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.service import EmbeddedService
from services.metrics import MetricsLabels, serve_for_service
from services.qmp import QmpServers, socket_path, start_qmp_servers
from services.vmbus_gateway.hello import Hello
from services.vmbus_gateway.server import GatewayServer
from tests.deploy.dashboard import load_dashboard, panel_queries, substitute
from tests.metrics.fleet import BOOT, drive_fleet
from tests.metrics.guest_driver import MIB
from tests.metrics.prometheus_server import PrometheusServer

pytestmark = pytest.mark.prometheus

SELECTIONS = [
    {"host": "hv-test", "vm": "vm-a", "__rate_interval": "30s"},  # one VM picked in the $vm drop-down
    {"host": ".*", "vm": ".*", "__rate_interval": "30s"},  # "All"
]


def _has_data(prom: PrometheusServer, expr: str, instant: bool) -> list[Any]:
    if instant:
        result: list[Any] = prom.api("query", query=expr)["result"]
    else:
        now = time.time()
        result = prom.api("query_range", query=expr, start=str(now - 20), end=str(now), step="1")["result"]
    return result


def check_prometheus(prom: PrometheusServer) -> None:
    def target_up() -> bool:
        targets = prom.api("targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    prom.wait_until("the hvdm target to be up", target_up)
    dashboard = load_dashboard()

    # The $vm variable's query (label_values(metric, label)) lists every VM.
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "vm")
    assert variable["query"]["query"] == 'label_values(hvdm_vm_current_bytes{host=~"$host"}, vm)'
    vms = prom.wait_until(
        "the VM label values",
        lambda: set(prom.api("label/vm/values", **{"match[]": "hvdm_vm_current_bytes"})) >= {"vm-a", "vm-b", "vm-c"},
    )
    assert vms
    hosts = prom.api("label/host/values", **{"match[]": "hvdm_build_info"})
    assert hosts == ["hv-test"]

    queries = panel_queries(dashboard)
    assert len(queries) >= 20
    for selection in SELECTIONS:
        for q in queries:
            expr = substitute(q.expr, selection)
            prom.wait_until(
                f"data for panel {q.panel!r} {q.ref}: {expr}", lambda e=expr, i=q.instant: _has_data(prom, e, i)
            )

    # The values are the engine's, end to end.
    current = prom.api("query", query='hvdm_vm_current_bytes{vm="vm-a"}')["result"]
    assert float(current[0]["value"][1]) == BOOT - 256 * MIB

    # Every recording and alerting rule evaluates without error against the real series.
    def rules_evaluated() -> list[Any]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        if all(r["health"] == "ok" for r in rules):
            return rules
        assert not [r for r in rules if r["health"] == "err"], rules
        return []

    rules = prom.wait_until("the rules to be evaluated", rules_evaluated)
    assert len(rules) == 15
    recorded = prom.api("query", query="hvdm:fleet_current_bytes:sum")["result"]
    assert recorded, "recording rules produce series"


def test_every_dashboard_panel_returns_data(tmp_path: Path, prometheus: Callable[[str], PrometheusServer]) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=20.0, config=EngineConfig(post_init_wait_ticks=1))
        await service.start()
        gateway = GatewayServer(EmbeddedBackend(service))
        await gateway.start(unix_path=str(tmp_path / "gw.sock"))
        qmp = await start_qmp_servers(service, tmp_path / "qmp")
        served = serve_for_service(
            service, "127.0.0.1", 0, labels=MetricsLabels(host="hv-test"), gateway=gateway, qmp=qmp
        )
        try:
            await drive_fleet(service)
            await exercise_gateway_and_qmp(tmp_path, qmp)
            prom = await asyncio.to_thread(prometheus, f"127.0.0.1:{served.server.port}")
            # Prometheus is polled from a worker thread: the engine loop stays free to serve scrapes.
            await asyncio.to_thread(check_prometheus, prom)
        finally:
            served.close()
            await qmp.close()
            await gateway.close()
            await service.stop()

    asyncio.run(scenario())


async def exercise_gateway_and_qmp(tmp_path: Path, qmp: QmpServers) -> None:
    """One refused hello, one guest that connects and leaves, and one QMP command."""
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "gw.sock"))
    writer.write(b"not a hello\n")
    await writer.drain()
    assert b'"ok":false' in await reader.readline()
    writer.close()
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "gw.sock"))
    hello = Hello(vm="vm-g", boot_bytes=BOOT, maxmem_bytes=4 * BOOT)
    writer.write(hello.to_line())
    await writer.drain()
    assert b'"ok":true' in await reader.readline()
    writer.close()
    await qmp.sync()
    client = QMPClient("metrics-test")
    await client.connect(str(socket_path(tmp_path / "qmp", "vm-a")))
    try:
        await client.execute("query-balloon")
    finally:
        await client.disconnect()
