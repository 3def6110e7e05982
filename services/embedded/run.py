"""``hvdm run``: the embedded service with optional simulated guests and the demo scenario.

Everything a single host needs in one process: the SQLite log, the engine loop, the gateway
socket, and (when asked) metrics, QMP sockets, simulated guests connected over the real gateway
socket, and a scripted demo per VM with a live progress table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TextIO

from services.demo.loop import rebooter, run_scripts, vm_lines, vm_summary
from services.demo.scenario import DemoScript
from services.dm_engine.config import EngineConfig
from services.embedded.gateway_backend import EmbeddedBackend
from services.embedded.qemu_sink import attach_to_service
from services.embedded.service import EmbeddedService
from services.metrics import MetricsLabels, ServedMetrics, serve_for_service
from services.qemu_agent import QemuAgent
from services.qmp import QmpServers, start_qmp_servers
from services.vmbus_gateway.auth import AuthConfigError, GatewayAuth, vm_token
from services.vmbus_gateway.client import GuestLink
from services.vmbus_gateway.hello import Hello
from services.vmbus_gateway.server import GatewayLimits, GatewayServer

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class RunConfig:
    db: str = "hvdm.db"
    socket: str | None = "hvdm.sock"
    tcp: tuple[str, int] | None = None
    guests: int = 0
    guest_memory: int = 4 << 30
    guest_maxmem: int = 64 << 30
    guest_profile: str = "linux"
    workload: str = "steady"
    speed: float = 1.0
    scenario: str = "none"
    duration: float | None = None
    seed: int = 1
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: host / VM / UUID labels of the exported series (None: the machine's hostname, label ``vm``).
    metrics_labels: MetricsLabels | None = None
    qmp_dir: str | None = None
    progress_interval: float = 2.0
    json_summary: bool = False
    #: Distributed deployment (``kafka://HOST:PORT``): ``services.kafka_engine.run.run_on_broker``.
    broker: str | None = None
    #: Who may connect to the gateway (None: the UNIX socket for this uid and root, TCP refused).
    auth: GatewayAuth | None = None
    gateway_limits: GatewayLimits | None = None
    #: Real QEMU VMs (see ``services.qemu_agent``): monitor addresses, a directory of them, the
    #: poll interval and an hv-balloon trace file.
    qemu: tuple[str, ...] = ()
    qemu_dir: str | None = None
    qemu_poll: float = 1.0
    qemu_trace: str | None = None
    #: The engine config a new log is created with (None: the defaults); a log keeps its own.
    engine_config: EngineConfig | None = None


def run_gateway_limits(cfg: RunConfig) -> GatewayLimits:
    """The configured limits with one stored status report per simulated second (QEMU's rate)."""
    return replace(cfg.gateway_limits or GatewayLimits(), status_interval_s=1.0 / cfg.speed)


def check_gateway_config(cfg: RunConfig) -> None:
    """Refuse, before anything starts, a TCP listener without authentication and simulated guests
    that could not connect (they use the UNIX socket, or TCP with tokens or --insecure)."""
    auth = cfg.auth or GatewayAuth()
    if cfg.tcp:
        auth.check_tcp()
    if cfg.guests and not cfg.socket and auth.tls is not None:
        raise AuthConfigError("simulated guests connect over the UNIX socket, or TCP without TLS: keep --socket")


def sim_endpoint(cfg: RunConfig, tcp_port: int | None) -> dict[str, Any]:
    """Where simulated guests connect: the UNIX socket (same uid), else TCP (tokens or --insecure)."""
    return {"unix_path": cfg.socket} if cfg.socket else {"tcp": ("127.0.0.1", tcp_port)}


def sim_hello(cfg: RunConfig, vm: str) -> Hello:
    """A simulated guest's hello; over TCP with tokens it carries the VM's token."""
    secret = cfg.auth.token_secret if cfg.auth is not None else None
    token = vm_token(secret, vm) if secret is not None and not cfg.socket else None
    return Hello(vm=vm, boot_bytes=cfg.guest_memory, maxmem_bytes=cfg.guest_maxmem, token=token)


def summary(service: EmbeddedService, scripts: dict[str, DemoScript]) -> dict[str, Any]:
    vms = {vm: vm_summary(s, scripts.get(vm)) for vm, s in sorted(service.states.items())}
    return {
        "ticks": service.now_tick(),
        "inbox_records": service.log.inbox_high_watermark(),
        "events": service.log.event_count(),
        "scenario_completed": all(s.done for s in scripts.values()) if scripts else None,
        "vms": vms,
    }


async def run_service(cfg: RunConfig, out: TextIO = sys.stdout) -> int:
    check_gateway_config(cfg)
    service = EmbeddedService.open(cfg.db, speed=cfg.speed, config=cfg.engine_config)
    await service.start()
    gateway = GatewayServer(EmbeddedBackend(service), run_gateway_limits(cfg), cfg.auth)
    await gateway.start(unix_path=cfg.socket, tcp=cfg.tcp)
    served: ServedMetrics | None = None
    qmp: QmpServers | None = None
    if cfg.qmp_dir:
        qmp = await start_qmp_servers(service, cfg.qmp_dir)
    if cfg.metrics_port is not None:
        served = serve_for_service(
            service,
            cfg.metrics_host,
            cfg.metrics_port,
            labels=cfg.metrics_labels or MetricsLabels.default(),
            gateway=gateway,
            qmp=qmp,
        )
    agent: QemuAgent | None = None
    if cfg.qemu or cfg.qemu_dir:
        agent = await attach_to_service(
            service, cfg.qemu, directory=cfg.qemu_dir, poll_seconds=cfg.qemu_poll, trace_file=cfg.qemu_trace
        )
    links: dict[str, GuestLink] = {}
    scripts: dict[str, DemoScript] = {}
    endpoint = sim_endpoint(cfg, gateway.tcp_port) if cfg.guests else {}
    # With --json, stdout carries the JSON summary only; everything for humans goes to stderr.
    human = sys.stderr if cfg.json_summary else out
    extras = "".join(
        [
            f"; metrics {served.url}" if served is not None else "",
            f"; QMP sockets in {cfg.qmp_dir}" if cfg.qmp_dir else "",
        ]
    )
    print(
        f"hvdm: embedded service on {cfg.db}; gateway "
        f"{cfg.socket or f'tcp://127.0.0.1:{gateway.tcp_port}'}; speed x{cfg.speed:g}{extras}",
        file=human,
        flush=True,
    )
    try:
        if cfg.guests:
            from services.guest_sim import GuestConfig, SimulatedGuest

            for i in range(cfg.guests):
                vm = f"vm{i + 1}"
                guest = SimulatedGuest(
                    GuestConfig(
                        boot_bytes=cfg.guest_memory,
                        profile=cfg.guest_profile,
                        workload=cfg.workload,
                        seed=cfg.seed + i,
                    )
                )
                link = GuestLink(guest, sim_hello(cfg, vm), service.now_seconds)
                await link.open(**endpoint)
                links[vm] = link
                if cfg.scenario == "demo":
                    reboot = rebooter(link, guest, service, endpoint, wait_seconds=10)
                    scripts[vm] = DemoScript(vm, cfg.guest_memory, reboot)
        await run_scripts(
            service,
            scripts,
            human,
            progress_interval=cfg.progress_interval,
            duration=cfg.duration,
            poll_seconds=0.02,
        )
    finally:
        # The summary describes the run, not its teardown (closing links closes channels).
        report = summary(service, scripts)
        for link in links.values():
            await link.stop()
        if agent is not None:
            await agent.close()
        await gateway.close()
        if served is not None:
            served.close()
        if qmp is not None:
            await qmp.close()
        await service.stop()
    if cfg.json_summary:
        print(json.dumps(report, sort_keys=True), file=out)
    else:
        print(progress_table_from_summary(report), file=out)
    if scripts and not report["scenario_completed"]:
        return 3
    return 0


def progress_table_from_summary(report: dict[str, Any]) -> str:
    lines = [
        f"summary: {report['inbox_records']} inbox records, {report['events']} events, {report['ticks']} ticks"
        + ("" if report["scenario_completed"] is None else f", scenario completed: {report['scenario_completed']}")
    ]
    return "\n".join(lines + vm_lines(report))


def main_run(cfg: RunConfig, serve: Callable[[RunConfig], Coroutine[Any, Any, int]] | None = None) -> int:
    """Run ``hvdm run``: the embedded service, or ``serve`` (the CLI passes the Kafka deployment's
    ``run_on_broker`` for ``--broker``, so this package never imports the other deployment)."""
    with contextlib.suppress(FileNotFoundError):
        if cfg.socket and os.path.exists(cfg.socket):
            os.unlink(cfg.socket)
    try:
        return asyncio.run((serve or run_service)(cfg))
    except (AuthConfigError, FileExistsError) as e:
        print(f"hvdm: run error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
