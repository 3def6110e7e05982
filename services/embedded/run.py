"""``hvdm run``: the embedded service with optional simulated guests and the demo scenario.

Everything a single host needs in one process: the SQLite log, the engine loop, the gateway
socket, and (when asked) metrics, QMP sockets, simulated guests connected over the real gateway
socket, and a scripted demo per VM with a live progress table.

It runs until the scenario or ``--duration`` ends, or until SIGINT or SIGTERM (either one: the
same clean stop, exit 0). A stop closes every guest channel still open in the log (reason "host
shutdown"), processes the inbox to its end, removes the gateway and QMP sockets and prints the
summary. Refused before anything starts (``NotAnHvdmLog``, ``LogLockError``, ``SocketPathInUse``,
which the CLI turns into one line on stderr and exit 1): a ``--db`` that is not an hvdm log, a
``--db`` another process writes (its writer lock, ``services.event_log.writer_lock``, is held; also
before ``--fresh`` moves anything), and a ``--socket`` path holding anything but a stale socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ..demo.host import DemoHost
from ..demo.loop import Refresh, rebooter, run_scripts, vm_lines, vm_summary
from ..demo.scenario import DemoScript
from ..dm_engine.config import EngineConfig
from ..event_log.sqlite_log import check_log_file
from ..event_log.writer_lock import WriterLock
from ..metrics import MetricsLabels, ServedMetrics, serve_for_service
from ..qemu_agent import QemuAgent
from ..qmp import QmpServers, start_qmp_servers
from ..socket_files import SocketPathInUse, remove_stale_socket
from ..systemd_notify import Notifier
from ..vmbus_gateway.auth import AuthConfigError, GatewayAuth, vm_token
from ..vmbus_gateway.client import GuestLink
from ..vmbus_gateway.hello import Hello
from ..vmbus_gateway.server import GatewayLimits, GatewayServer
from .gateway_backend import EmbeddedBackend
from .log_file import describe_log, move_aside
from .qemu_sink import attach_to_service
from .service import EmbeddedService
from .stop_signals import StopSignals


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
    #: Move an existing log aside (``PATH.<timestamp>.bak``) and start a new one.
    fresh: bool = False
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


async def connect_sim_guests(
    cfg: RunConfig,
    host: DemoHost,
    endpoint: Mapping[str, Any],
    links: dict[str, GuestLink],
    scripts: dict[str, DemoScript],
    *,
    reboot_wait_seconds: float,
    refresh: Refresh | None = None,
) -> None:
    """Connect ``cfg.guests`` simulated guests to the gateway, with a demo script each under ``--scenario demo``.

    Both deployments run their simulated guests this way; ``links`` and ``scripts`` are filled as
    guests connect, so the caller's shutdown sees every guest that got that far.
    """
    if not cfg.guests:
        return
    from ..guest_sim import GuestConfig, SimulatedGuest

    for i in range(cfg.guests):
        vm = f"vm{i + 1}"
        guest = SimulatedGuest(
            GuestConfig(
                boot_bytes=cfg.guest_memory, profile=cfg.guest_profile, workload=cfg.workload, seed=cfg.seed + i
            )
        )
        link = GuestLink(guest, sim_hello(cfg, vm), host.now_seconds)
        await link.open(**endpoint)
        links[vm] = link
        if cfg.scenario == "demo":
            reboot = rebooter(link, guest, host, endpoint, wait_seconds=reboot_wait_seconds, refresh=refresh)
            scripts[vm] = DemoScript(vm, cfg.guest_memory, reboot)


def summary(service: EmbeddedService, scripts: dict[str, DemoScript]) -> dict[str, Any]:
    vms = {vm: vm_summary(s, scripts.get(vm)) for vm, s in sorted(service.states.items())}
    return {
        "ticks": service.now_tick(),
        "inbox_records": service.log.inbox_high_watermark(),
        "events": service.log.event_count(),
        "scenario_completed": all(s.done for s in scripts.values()) if scripts else None,
        "vms": vms,
    }


def status_line(service: EmbeddedService, gateway: GatewayServer) -> str:
    """``systemctl status``'s line for ``hvdm run``: what it serves and whether the engine keeps up."""
    return (
        f"{len(service.states)} VMs, {len(gateway.connections)} guests connected; "
        f"inbox lag {service.runner.lag()} records"
    )


async def run_service(cfg: RunConfig, out: TextIO = sys.stdout, notifier: Notifier | None = None) -> int:
    """``notifier``: systemd's (``Notifier.from_environ``): READY=1 once the log is recovered and the
    gateway, QMP sockets, metrics and QEMU monitors are served; STOPPING=1 when a stop begins;
    watchdog pings from the engine's loop while no service loop has failed."""
    check_gateway_config(cfg)
    notifier = notifier or Notifier(None)
    existed = check_log_file(cfg.db)
    service = EmbeddedService.open(cfg.db, speed=cfg.speed, config=cfg.engine_config)
    stop = StopSignals().install()
    stop.on_stop.append(lambda name: notifier.stopping(f"{name} received: closing channels, draining the inbox"))
    await service.start()
    gateway = GatewayServer(EmbeddedBackend(service), run_gateway_limits(cfg), cfg.auth)
    served: ServedMetrics | None = None
    qmp: QmpServers | None = None
    agent: QemuAgent | None = None
    links: dict[str, GuestLink] = {}
    scripts: dict[str, DemoScript] = {}
    keep_alive: asyncio.Task[None] | None = None
    try:
        await gateway.start(unix_path=cfg.socket, tcp=cfg.tcp)
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
        if cfg.qemu or cfg.qemu_dir:
            agent = await attach_to_service(
                service, cfg.qemu, directory=cfg.qemu_dir, poll_seconds=cfg.qemu_poll, trace_file=cfg.qemu_trace
            )
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
            f"{cfg.socket or f'tcp://127.0.0.1:{gateway.tcp_port}'}; speed x{cfg.speed:g}{extras}\n"
            f"hvdm: {describe_log(service.log, existed)}",
            file=human,
            flush=True,
        )
        notifier.ready(f"serving: {status_line(service, gateway)}")
        keep_alive = asyncio.create_task(
            notifier.keep_alive(lambda: status_line(service, gateway), healthy=lambda: service.failure is None),
            name="hvdm-systemd-notify",
        )
        await connect_sim_guests(cfg, service, endpoint, links, scripts, reboot_wait_seconds=10)
        await run_scripts(
            service,
            scripts,
            human,
            progress_interval=cfg.progress_interval,
            duration=cfg.duration,
            poll_seconds=0.02,
            stop=lambda: _stop_reason(service, stop),
        )
    finally:
        notifier.stopping("stopping: closing channels, draining the inbox")
        if keep_alive is not None:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive
        # The summary describes the run, not its teardown (closing links closes channels).
        report = summary(service, scripts)
        report["stopped_by"] = stop.received
        # The gateway goes first, so every channel still open is closed as one host shutdown
        # (by ``service.stop`` below), the in-process guests' included.
        await gateway.close()
        for link in links.values():
            await link.stop()
        if agent is not None:
            await agent.close()
        if served is not None:
            served.close()
        if qmp is not None:
            await qmp.close()
        clean = await service.stop(close_channels=True)
        stop.uninstall()
    if cfg.json_summary:
        print(json.dumps(report, sort_keys=True), file=out)
    else:
        print(progress_table_from_summary(report), file=out)
    return _exit_code(service, clean, stop, scripts, report)


def _stop_reason(service: EmbeddedService, stop: StopSignals) -> str | None:
    if stop.received is not None:
        return f"{stop.received} received"
    if service.failure is not None:
        return "a service loop failed"
    return None


def _exit_code(
    service: EmbeddedService, clean: bool, stop: StopSignals, scripts: dict[str, DemoScript], report: dict[str, Any]
) -> int:
    """0, 3 for an unfinished scenario, 1 when the service failed or could not stop cleanly."""
    if service.failure is not None:
        print(f"hvdm run: error: the service stopped on an error: {service.failure!r}", file=sys.stderr)
        return 1
    if not clean:
        print("hvdm run: error: the log could not be written at shutdown (see the log lines above)", file=sys.stderr)
        return 1
    if stop.received is None and scripts and not report["scenario_completed"]:
        return 3
    return 0


def progress_table_from_summary(report: dict[str, Any]) -> str:
    lines = [
        f"summary: {report['inbox_records']} inbox records, {report['events']} events, {report['ticks']} ticks"
        + ("" if report["scenario_completed"] is None else f", scenario completed: {report['scenario_completed']}")
    ]
    return "\n".join(lines + vm_lines(report))


def check_paths(cfg: RunConfig) -> None:
    """Refuse, before anything starts, paths a run must not touch: a ``--socket`` that is not a
    stale socket (removing it then) and a ``--db`` that is not an hvdm log."""
    if cfg.socket and Path(cfg.socket).resolve() == Path(cfg.db).resolve():
        raise SocketPathInUse(f"--socket and --db name the same file ({cfg.db})")
    if cfg.socket:
        remove_stale_socket(cfg.socket)
    check_log_file(cfg.db)


def start_fresh(cfg: RunConfig, out: TextIO = sys.stdout) -> None:
    """``--fresh``: the old log (if any) is moved aside, never deleted."""
    moved = move_aside(cfg.db)
    if moved is not None:
        print(f"hvdm: --fresh: moved the old log {cfg.db} to {moved}", file=out, flush=True)


def main_run(cfg: RunConfig, serve: Callable[..., Coroutine[Any, Any, int]] | None = None) -> int:
    """Run ``hvdm run``: the embedded service, or ``serve`` (the CLI passes the Kafka deployment's
    ``run_on_broker`` for ``--broker``, so this package never imports the other deployment), called
    as ``serve(cfg, notifier=...)`` with systemd's ``Notifier``."""
    # Read (and removed from the environment) before anything starts a child process.
    notifier = Notifier.from_environ()
    try:
        if serve is not None:
            return asyncio.run(serve(cfg, notifier=notifier))
        # A foreign file is refused before anything (the lock file) is created next to it.
        check_log_file(cfg.db)
        # Held from before --fresh moves the old log until the summary is printed (issue 9 §4).
        with WriterLock.acquire(cfg.db):
            check_paths(cfg)
            if cfg.fresh:
                start_fresh(cfg, sys.stderr if cfg.json_summary else sys.stdout)
            return asyncio.run(run_service(cfg, notifier=notifier))
    except AuthConfigError as e:
        print(f"hvdm: run error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        notifier.close()
