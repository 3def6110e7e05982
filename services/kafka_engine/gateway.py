"""``hvdm gateway --broker``: the VMBus gateway on the Kafka backend, until SIGINT or SIGTERM.

The gateway server is the same one the embedded deployment runs (``vmbus_gateway.server``); only
its backend differs. A stop closes the listening sockets and the guests' connections without
closing their channels (guests resume against the next gateway) and flushes every input
already read to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass

from ..embedded.stop_signals import StopSignals
from ..metrics import MetricsLabels, serve_gateway
from ..systemd_notify import Notifier
from ..vmbus_gateway.auth import GatewayAuth
from ..vmbus_gateway.server import GatewayLimits, GatewayServer
from .gateway_backend import KafkaBackend
from .settings import KafkaSettings


@dataclass(frozen=True, slots=True)
class QemuOptions:
    """Real QEMU VMs on this host (``--qemu``, ``--qemu-dir``, ``--qemu-poll``, ``--qemu-trace``)."""

    addresses: tuple[str, ...] = ()
    directory: str | None = None
    poll: float = 1.0
    trace: str | None = None


async def start_gateway(
    settings: KafkaSettings,
    *,
    unix_path: str | None,
    tcp: tuple[str, int] | None,
    backend: KafkaBackend | None = None,
    auth: GatewayAuth | None = None,
    limits: GatewayLimits | None = None,
) -> tuple[GatewayServer, KafkaBackend]:
    """Load the outbox, then accept guests. The caller stops both with ``stop_gateway``.

    ``backend`` replaces the plain Kafka backend, e.g. the rebalancer's ``HostedKafkaBackend``
    (``services.rebalancer.kafka_hosts.HostSpec.backend``), which also says which host the gateway
    serves and which VMs open channels here; nothing the engine reads.
    """
    if tcp:
        (auth or GatewayAuth()).check_tcp()  # before connecting to anything
    if backend is None:
        backend = KafkaBackend(settings)
    await backend.start()
    server = GatewayServer(backend, limits, auth)
    try:
        await server.start(unix_path=unix_path, tcp=tcp)
    except BaseException:
        await backend.close()
        raise
    return server, backend


async def stop_gateway(server: GatewayServer, backend: KafkaBackend) -> None:
    await server.close()
    await backend.close()


async def serve(
    settings: KafkaSettings,
    *,
    unix_path: str | None,
    tcp: tuple[str, int] | None,
    metrics: tuple[str, int] | None = None,
    metrics_labels: MetricsLabels | None = None,
    backend: KafkaBackend | None = None,
    auth: GatewayAuth | None = None,
    limits: GatewayLimits | None = None,
    qemu: QemuOptions | None = None,
    notifier: Notifier | None = None,
) -> int:
    """Run until SIGINT/SIGTERM; ``metrics`` = (host, port) serves the gateway's /metrics; ``qemu``
    attaches this host's real QEMU VMs (``services.qemu_agent``); ``notifier`` tells systemd
    READY=1 once the outbox is loaded and the sockets and /metrics listen, STOPPING=1 on a stop,
    and pings its watchdog from the gateway's loop."""
    notify = notifier if notifier is not None else Notifier(None)
    stop = StopSignals().install()
    stop.on_stop.append(lambda name: notify.stopping(f"{name} received: closing connections, flushing the inbox"))
    server, backend = await start_gateway(
        settings, unix_path=unix_path, tcp=tcp, backend=backend, auth=auth, limits=limits
    )
    served = serve_gateway(server, metrics[0], metrics[1], labels=metrics_labels) if metrics is not None else None
    agent = None
    if qemu is not None and (qemu.addresses or qemu.directory):
        from .qemu_sink import attach_to_backend

        agent = await attach_to_backend(
            backend, qemu.addresses, directory=qemu.directory, poll_seconds=qemu.poll, trace_file=qemu.trace
        )
    where = [p for p in (unix_path, f"tcp://{tcp[0]}:{server.tcp_port}" if tcp else None) if p]
    if served is not None:
        where.append(f"metrics {served.url}")
    print(
        f"hvdm gateway: {', '.join(where)} -> {settings.bootstrap} ({settings.prefix}.*)", file=sys.stderr, flush=True
    )

    def status() -> str:
        return f"{len(server.connections)} guests connected; {server.counters.accepted} accepted since start"

    notify.ready(f"serving: {status()}")
    keep_alive = asyncio.create_task(notify.keep_alive(status), name="hvdm-systemd-notify")
    try:
        await stop.event.wait()
    finally:
        notify.stopping("stopping: closing connections, flushing the inbox")
        keep_alive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keep_alive
        stop.uninstall()
        if agent is not None:
            await agent.close()  # its QemuDetached inputs are flushed with the backend
        if served is not None:
            served.close()
        await stop_gateway(server, backend)
    return 0
