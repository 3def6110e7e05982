"""``hvdm run --broker``: the demo deployment on Kafka -- gateway, engine worker(s), simulated guests.

The same story as the embedded ``hvdm run`` (``services.demo``, one loop), but every input
goes through the topics: the gateway runs in this process on the Kafka backend, the engine runs as
``hvdm engine --broker`` child processes (``engines``, default 1) that tick their partitions, and
the script reads the VMs' states from a projection of the events topic. Operator inputs are
published to the inbox like a QMP server would. Every child process is stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from ..demo.loop import run_scripts, vm_lines, vm_summary
from ..demo.scenario import DemoScript
from ..dm_engine.inputs import Input
from ..dm_engine.records import to_dict
from ..dm_engine.state import VmState
from ..embedded.clock import TickClock
from ..embedded.run import check_gateway_config, connect_sim_guests, run_gateway_limits, sim_endpoint
from ..embedded.stop_signals import StopSignals
from ..metrics import serve_gateway
from ..systemd_notify import Notifier
from ..vmbus_gateway.client import GuestLink
from . import envelope
from .deployment_config import engine_config_of
from .gateway import start_gateway, stop_gateway
from .kafka_log import GroupOffsets, PartitionReader, ensure_topics, new_producer
from .projection import EventsProjection
from .settings import KafkaSettings

#: The import name this package runs under (``hvdm`` when installed, ``services`` in a checkout):
#: the engine workers are started as ``python -m ROOT_PACKAGE engine``.
ROOT_PACKAGE = __name__.split(".")[0]


class BrokerService:
    """The demo's host (``services.demo.host.DemoHost``) over the topics: states come from a
    projection of the events topic, ``consumed`` from the engine group's committed offsets."""

    def __init__(self, settings: KafkaSettings, partitions: int, clock: TickClock) -> None:
        self.settings = settings
        self.clock = clock
        self.producer = new_producer(settings)
        self.reader = PartitionReader(settings)
        self.group = GroupOffsets(settings)
        self.projection = EventsProjection(settings, partitions)
        self.partitions = partitions
        self._pending: list[tuple[int, int, int]] = []  # (token, partition, offset) not yet consumed
        self._tokens = 0
        self.consumed = 0

    @property
    def states(self) -> dict[str, VmState]:
        return self.projection.states

    def submit(self, vm: str, record: Input) -> int:
        metadata = self.producer.send(
            self.settings.inbox, key=vm.encode(), value=envelope.inbox_value(vm, to_dict(record))
        ).get(30)
        self._tokens += 1
        self._pending.append((self._tokens, int(metadata.partition), int(metadata.offset)))
        return self._tokens

    def now_tick(self) -> int:
        return self.clock.now_tick()

    def now_seconds(self) -> float:
        return self.clock.now_seconds()

    def refresh(self) -> None:
        """Blocking: read new events and the engine group's progress (run it in a thread)."""
        self.projection.catch_up(self.reader)
        committed = self.group.committed(self.partitions)
        while self._pending and self._pending[0][2] < committed[self._pending[0][1]]:
            self.consumed = self._pending.pop(0)[0]
        if not self._pending:
            self.consumed = self._tokens

    def close(self) -> None:
        self.producer.close()
        self.reader.close()
        self.group.close()


def summary(service: BrokerService, scripts: dict[str, DemoScript]) -> dict[str, Any]:
    vms = {vm: vm_summary(s, scripts.get(vm)) for vm, s in sorted(service.states.items())}
    return {
        "broker": service.settings.bootstrap,
        "events_records": service.projection.records_read,
        "scenario_completed": all(s.done for s in scripts.values()) if scripts else None,
        "vms": vms,
    }


async def run_on_broker(
    cfg: Any, out: TextIO = sys.stdout, *, engines: int = 1, notifier: Notifier | None = None
) -> int:
    """``cfg`` is ``hvdm run``'s ``RunConfig`` with ``broker`` set. ``notifier``: systemd's; READY=1
    once the gateway listens and every engine worker processes its partitions."""
    notify = notifier if notifier is not None else Notifier(None)

    check_gateway_config(cfg)
    settings = replace(KafkaSettings.from_url(cfg.broker), speed=cfg.speed)
    counts = await asyncio.to_thread(ensure_topics, settings)
    config = await asyncio.to_thread(engine_config_of, settings, cfg.engine_config)
    clock = TickClock(tick_seconds=config.tick_seconds, speed=cfg.speed)
    stop = StopSignals().install()
    stop.on_stop.append(lambda name: notify.stopping(f"{name} received: stopping the gateway and the workers"))
    preexec = _die_with_parent()
    children = [
        subprocess.Popen(
            [sys.executable, "-m", ROOT_PACKAGE, "engine", "--broker", settings.url, *_metrics_args(cfg, i)],
            preexec_fn=preexec,
        )
        for i in range(engines)
    ]
    server, backend = await start_gateway(
        settings, unix_path=cfg.socket, tcp=cfg.tcp, auth=cfg.auth, limits=run_gateway_limits(cfg)
    )
    # --metrics-port P: the gateway (this process) on P, engine worker i on P + 1 + i.
    gateway_metrics = (
        serve_gateway(server, cfg.metrics_host, cfg.metrics_port, labels=cfg.metrics_labels)
        if cfg.metrics_port is not None
        else None
    )
    service = BrokerService(settings, counts[settings.inbox], clock)
    endpoint = sim_endpoint(cfg, server.tcp_port)
    human = sys.stderr if cfg.json_summary else out  # --json: stdout carries the JSON only
    print(
        f"hvdm: Kafka deployment on {settings.bootstrap} ({settings.prefix}.*), {engines} engine worker(s); "
        f"gateway {cfg.socket or f'tcp://127.0.0.1:{server.tcp_port}'}; speed x{cfg.speed:g}"
        + (f"; metrics {gateway_metrics.url} (gateway), engine i on port +1+i" if gateway_metrics else ""),
        file=human,
        flush=True,
    )
    links: dict[str, GuestLink] = {}
    scripts: dict[str, DemoScript] = {}

    async def refresh() -> None:
        await asyncio.to_thread(service.refresh)

    keep_alive: asyncio.Task[None] | None = None
    try:
        await _workers_processing(service, children, stop)
        if not stop.received:
            notify.ready(f"serving: gateway and {engines} engine worker(s) on {settings.bootstrap}")
            alive = lambda: all(p.poll() is None for p in children)  # noqa: E731 -- a worker died: no pings
            keep_alive = asyncio.create_task(notify.keep_alive(healthy=alive), name="hvdm-systemd-notify")
        await connect_sim_guests(cfg, service, endpoint, links, scripts, reboot_wait_seconds=30, refresh=refresh)

        def worker_exited() -> str | None:
            if stop.received:
                return f"{stop.received} received"
            return "an engine worker exited" if any(p.poll() is not None for p in children) else None

        await run_scripts(
            service,
            scripts,
            human,
            progress_interval=cfg.progress_interval,
            duration=cfg.duration,
            poll_seconds=0.1,
            refresh=refresh,
            stop=worker_exited,
        )
    finally:
        notify.stopping("stopping the gateway and the workers")
        if keep_alive is not None:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive
        stop.uninstall()
        report = summary(service, scripts)
        for link in links.values():
            await link.stop()
        if gateway_metrics is not None:
            gateway_metrics.close()
        await stop_gateway(server, backend)
        service.close()
        for p in children:
            if p.poll() is None:
                p.terminate()
        for p in children:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    if cfg.json_summary:
        print(json.dumps(report, sort_keys=True), file=out)
    else:
        print("\n".join(vm_lines(report)), file=out)
    return 3 if scripts and not report["scenario_completed"] else 0


async def _workers_processing(
    service: BrokerService, children: list[subprocess.Popen[bytes]], stop: StopSignals
) -> None:
    """Wait until every partition has a tick processed (or a stop is asked for).

    Guests time out a silent host within seconds of guest time, so they connect only once the
    workers are up.
    """
    deadline = time.monotonic() + 120
    while min((await asyncio.to_thread(service.group.committed, service.partitions)).values()) == 0:
        if stop.received:
            return
        if time.monotonic() > deadline or any(p.poll() is not None for p in children):
            raise RuntimeError("the engine workers did not start processing")
        await asyncio.sleep(0.2)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the kernel send an engine child SIGTERM when this process dies.

    Why: the parent stops its workers on the way out, but a parent killed with SIGKILL (or stuck
    and then killed by its supervisor) would leave them running, holding partitions and metrics
    ports. ``PR_SET_PDEATHSIG`` is Linux's; elsewhere the orderly stop is all there is. libc is
    resolved here, in the parent: the child between fork and exec must not import anything.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return preexec


def _metrics_args(cfg: Any, i: int) -> list[str]:
    """``hvdm engine`` flags serving worker ``i``'s metrics next to the gateway's port."""
    if cfg.metrics_port is None:
        return []
    args = [
        "--metrics-port",
        str(cfg.metrics_port + 1 + i if cfg.metrics_port else 0),
        "--metrics-host",
        cfg.metrics_host,
    ]
    labels = cfg.metrics_labels
    if labels is not None:
        args += ["--metrics-host-label", labels.host, "--metrics-vm-label", ",".join(labels.vm_labels)]
    return args
