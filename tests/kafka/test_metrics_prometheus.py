"""Monitoring the Kafka deployment: a real Prometheus scrapes two engine workers and a gateway.

Everything is real and separate, as in deploy/docker-compose.yml: tansu, ``hvdm gateway`` and two
``hvdm engine --broker`` processes each with ``--metrics-port``, simulated Linux guests connected
to the gateway's socket, operator inputs published to the inbox, and Prometheus (configured from
deploy/, with deploy's rules) scraping the three endpoints. Checked: when the second worker joins,
the partitions it takes are no longer exported by the first, so each VM is exported by exactly
one worker; every dashboard query returns data (the QMP and event-log-health panels aside: QMP
sockets and the SQLite log belong to the embedded deployment).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.dm_engine import inputs as inp
from services.dm_engine.records import to_dict
from services.embedded.clock import TickClock
from services.guest_sim import GuestConfig, SimulatedGuest
from services.kafka_engine import envelope
from services.kafka_engine.kafka_log import new_producer
from services.kafka_engine.settings import KafkaSettings
from services.kafka_engine.tansu import LocalBroker
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import Hello
from tests.deploy.dashboard import load_dashboard, panel_queries, substitute
from tests.deploy.notify_socket import NotifySocket
from tests.metrics.prometheus_server import PrometheusServer, free_port, prometheus_binary, start_prometheus

pytestmark = [pytest.mark.kafka, pytest.mark.prometheus]

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
BOOT = 2 * GIB
SPEED = 25.0
VMS = [f"vm{i}" for i in range(1, 9)]
#: vm1's hello names its UUID: the engine records it (``VmIdentified``) and the owning worker's
#: series carry it as the ``uuid`` label, also after its partition moved to the other worker.
VM1_UUID = "6b29fc40-ca47-1067-b31d-00dd010662da"
#: Metric families only the embedded deployment exports (per-VM QMP sockets, the SQLite log's health).
EMBEDDED_ONLY = ("hvdm_qmp_", "hvdm_log_")


class Proc:
    """An ``hvdm`` child process with its log; stopped (SIGTERM, then SIGKILL) by ``stop``."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services", *args], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except OSError as e:
        code = getattr(e, "code", 0)
        return int(code or 0), ""


def vms_of(port: int) -> set[str]:
    status, text = fetch(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return set()
    return {
        s.labels["vm"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hvdm_vm_current_bytes"
    }


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0, procs: Sequence[Proc] = ()) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.log_path.name} exited:\n{p.log_path.read_text(errors='replace')[-3000:]}")
        last = check()
        if last:
            return last
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-2000:]}" for p in procs)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{logs}")


async def drive_guests(settings: KafkaSettings, sock: str) -> list[GuestLink]:
    """Guests on the gateway; one balloons, one hot-adds, one misbehaves, one leaves; a bad hello is
    refused."""
    clock = TickClock(speed=SPEED)
    links: list[GuestLink] = []
    for i, vm in enumerate(VMS):
        profile = "malicious" if vm == "vm8" else "linux"
        guest = SimulatedGuest(GuestConfig(boot_bytes=BOOT, profile=profile, seed=i))
        uuid = VM1_UUID if vm == "vm1" else None  # recorded in the log: every worker owning vm1 labels it
        hello = Hello(vm=vm, boot_bytes=BOOT, maxmem_bytes=4 * BOOT, uuid=uuid)
        link = GuestLink(guest, hello, clock.now_seconds)
        await link.open(unix_path=sock)
        links.append(link)
    # One guest that connects and leaves: its VM stays known, disconnected.
    gone = GuestLink(
        SimulatedGuest(GuestConfig(boot_bytes=BOOT)),
        Hello(vm="vm-gone", boot_bytes=BOOT, maxmem_bytes=BOOT),
        clock.now_seconds,
    )
    await gone.open(unix_path=sock)
    await asyncio.sleep(0.5)
    await gone.stop()
    # A hello the gateway refuses.
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(b"not a hello\n")
    await writer.drain()
    assert b'"ok":false' in await reader.readline()
    writer.close()
    # Past the post-init wait (50 ticks), the operator shrinks vm1 and grows vm2 by hot-add.
    await asyncio.sleep(60 / SPEED)
    producer = new_producer(settings)
    try:
        for vm, record in (
            ("vm1", inp.SetTarget(target_bytes=BOOT - 512 * (1 << 20))),
            ("vm2", inp.AddBackend(backend_id="mem1", size_bytes=GIB)),
            ("vm2", inp.PlugBackend(backend_id="mem1")),
            ("vm2", inp.SetTarget(target_bytes=BOOT + GIB)),
            # The malicious guest misbehaves in its answers to host requests: give it one.
            ("vm8", inp.SetTarget(target_bytes=BOOT - 256 * (1 << 20))),
        ):
            producer.send(settings.inbox, key=vm.encode(), value=envelope.inbox_value(vm, to_dict(record)))
        await asyncio.to_thread(producer.flush)
    finally:
        producer.close()
    return links


def check_dashboard(prom: PrometheusServer) -> None:
    # QMP sockets and the SQLite event log belong to the embedded deployment: their panels stay empty here.
    queries = [q for q in panel_queries(load_dashboard()) if not any(m in q.expr for m in EMBEDDED_ONLY)]
    assert len(queries) >= 30
    selection = {"host": ".*", "vm": ".*", "__rate_interval": "30s"}
    for q in queries:
        expr = substitute(q.expr, selection)

        def has_data(e: str = expr, instant: bool = q.instant) -> Any:
            if instant:
                return prom.api("query", query=e)["result"]
            now = time.time()
            return prom.api("query_range", query=e, start=str(now - 20), end=str(now), step="1")["result"]

        prom.wait_until(f"data for panel {q.panel!r} {q.ref}: {expr}", has_data, timeout=90)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Sequence[str]], PrometheusServer]]:
    """A real Prometheus scraping the given targets (tests/metrics' fixture, for this directory)."""
    if prometheus_binary() is None:
        pytest.skip("needs the prometheus binary (Debian package 'prometheus')")
    started: list[PrometheusServer] = []

    def start(targets: Sequence[str]) -> PrometheusServer:
        server = start_prometheus(tmp_path / "prometheus", targets)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_prometheus_scrapes_two_workers_and_a_gateway(
    broker: LocalBroker, prefix: str, tmp_path: Path, prometheus: Callable[[Sequence[str]], PrometheusServer]
) -> None:
    url = (
        f"{broker.url}?prefix={prefix}&partitions=4&speed={SPEED:g}"
        "&session_timeout=3&heartbeat=0.5&rebalance_timeout=3&commit_interval=0.05"
    )
    settings = KafkaSettings.from_url(url)
    sock = str(tmp_path / "gw.sock")
    ports = [free_port() for _ in range(4)]
    procs: list[Proc] = []

    def hvdm(name: str, *args: str) -> None:
        procs.append(Proc(args, tmp_path / f"{name}.log"))

    def endpoint(i: int) -> str:
        return f"http://127.0.0.1:{ports[i]}"

    async def scenario() -> None:
        hvdm(
            "gateway",
            "gateway",
            "--broker",
            url,
            "--socket",
            sock,
            "--metrics-port",
            str(ports[0]),
            "--metrics-host-label",
            "gw",
        )
        hvdm("engine1", "engine", "--broker", url, "--metrics-port", str(ports[1]), "--metrics-host-label", "kw1", "-v")
        await asyncio.to_thread(wait_for, "the gateway socket", lambda: Path(sock).exists(), procs=procs)
        for i in range(2):
            ready_url = f"{endpoint(i)}/-/ready"

            def ready(url: str = ready_url) -> bool:
                return fetch(url)[0] == 200

            await asyncio.to_thread(wait_for, f"/-/ready of {endpoint(i)}", ready, procs=procs)
        assert (await asyncio.to_thread(fetch, f"{endpoint(0)}/-/healthy"))[0] == 200
        assert (await asyncio.to_thread(fetch, f"{endpoint(1)}/"))[0] == 404  # only /metrics serves metrics

        links = await drive_guests(settings, sock)
        try:
            await asyncio.to_thread(check_deployment)
        finally:
            for link in links:
                await link.stop()

    def check_deployment() -> None:
        everyone = {*VMS, "vm-gone"}
        wait_for("the first worker to export every VM", lambda: vms_of(ports[1]) == everyone, procs=procs)
        # A second worker joins: it takes partitions, and the first stops exporting their VMs, so
        # each VM is exported by exactly one worker (the owner of its partition).
        hvdm("engine2", "engine", "--broker", url, "--metrics-port", str(ports[2]), "--metrics-host-label", "kw2", "-v")

        def split() -> Any:
            a, b = vms_of(ports[1]), vms_of(ports[2])
            return (a, b) if a and b and a | b == everyone and not a & b else None

        wait_for("the partitions to be shared without double counting", split, timeout=120, procs=procs)
        assert fetch(f"{endpoint(2)}/-/ready")[0] == 200

        prom = prometheus([f"127.0.0.1:{p}" for p in ports[:3]])
        prom.wait_until(
            "the three targets up",
            lambda: len(t := prom.api("targets")["activeTargets"]) == 3 and all(x["health"] == "up" for x in t),
        )
        assert sorted(prom.api("label/host/values", **{"match[]": "hvdm_build_info"})) == ["gw", "kw1", "kw2"]
        prom.wait_until(
            "no VM counted twice",
            lambda: (
                [r["value"][1] for r in prom.api("query", query="sum(hvdm_engine_vms)")["result"]]
                == [str(len(everyone))]
            ),
        )
        assert not prom.api("query", query="count by (vm) (hvdm_vm_current_bytes) > 1")["result"]
        labelled = prom.api("query", query='hvdm_vm_current_bytes{vm=~"vm1|vm2"}')["result"]
        assert {r["metric"]["vm"]: r["metric"].get("uuid") for r in labelled} == {"vm1": VM1_UUID, "vm2": None}
        check_dashboard(prom)
        refused = prom.api("query", query='hvdm_gateway_refusals_total{reason="not_json"}')["result"]
        assert refused and float(refused[0]["value"][1]) == 1

    try:
        asyncio.run(scenario())
    finally:
        for p in procs:
            p.stop()


def test_run_broker_serves_the_gateways_and_the_engines_metrics(
    broker: LocalBroker, prefix: str, tmp_path: Path
) -> None:
    """``hvdm run --broker --metrics-port P``: the in-process gateway on P, engine worker 0 on P+1;
    systemd's notify socket hears READY=1, watchdog pings and STOPPING=1 (its workers stay silent)."""
    notify = NotifySocket(tmp_path / "notify")
    base = free_port()
    while True:  # P and P+1 both free
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", base + 1))
            break
        base = free_port()
    run = Proc(
        [
            "run",
            "--broker",
            f"{broker.url}?prefix={prefix}&partitions=2",
            "--guests",
            "1",
            "--socket",
            str(tmp_path / "gw.sock"),
            "--duration",
            "60",
            "--progress-interval",
            "0",
            "--metrics-port",
            str(base),
            "--metrics-host-label",
            "h1",
        ],
        tmp_path / "run.log",
        env=notify.env(watchdog_usec=400_000),  # as under systemd (Type=notify, WatchdogSec)
    )
    try:
        notify.wait_for("READY=1", 120, alive=lambda: run.proc.poll() is None)
        assert fetch(f"http://127.0.0.1:{base}/-/ready")[0] == 200  # the gateway listens at READY=1
        notify.wait_for("WATCHDOG=1", 3)
        wait_for("the engine to export vm1", lambda: vms_of(base + 1) == {"vm1"}, procs=[run])
        status, text = fetch(f"http://127.0.0.1:{base}/metrics")
        assert status == 200 and 'hvdm_gateway_connections{host="h1"} 1.0' in text
        assert "hvdm_vm_" not in text  # the gateway exports no VM state: the engines do
    finally:
        # SIGTERM, as systemd or docker stop it (the same handler as an operator's ^C): hvdm run
        # stops its engine children on the way out.
        while notify.receive(0.01) is not None:  # room in the socket's queue for STOPPING=1
            pass
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(30)
        stopped_by_itself = run.proc.poll() is not None
        run.stop()
        with contextlib.suppress(AssertionError):
            notify.wait_for("STOPPING=1", 1)
        notify.close()
    assert stopped_by_itself, "hvdm run --broker did not stop within 30 s of SIGTERM"
    assert notify.lines("STOPPING=1") == ["STOPPING=1"]
    assert notify.lines("READY=1") == ["READY=1"]  # the engine children did not inherit the socket
    assert "SIGTERM received" in run.log_path.read_text(errors="replace")
    # Nothing left listening: the engine child was stopped with its parent.
    assert fetch(f"http://127.0.0.1:{base + 1}/-/healthy")[0] == 0
