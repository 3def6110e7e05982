"""The process of one ``hvdm engine --broker`` worker: options in, Faust's worker run, exit status out.

Why apart from ``worker``: logging, the garbage collector, Faust's ``Worker`` and the /metrics
server are the process's business, not the agent's; the CLI builds a ``WorkerOptions`` and calls
``run_worker``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from typing import TYPE_CHECKING

from ..systemd_notify import Notifier
from .deployment_config import engine_config_of
from .kafka_log import ensure_topics
from .settings import KafkaSettings
from .worker import EngineWorker
from .worker_options import WorkerOptions

if TYPE_CHECKING:
    from ..metrics import MetricsLabels, MetricsServer

#: Young-generation threshold of the cyclic GC in a worker (CPython's default is 700).
GC_THRESHOLD = (20_000, 20, 20)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a worker's allocation pattern.

    Deciding one record allocates a few dozen short-lived containers, so with CPython's default
    thresholds a young collection runs every ~20 records and, with 10,000 VMs' states alive, the
    older generations are scanned often too: measured 5-40 % of the decide loop. The engine makes
    almost no reference cycles, so collecting young objects every 20,000 allocations costs no
    memory worth mentioning; everything alive at start-up (modules, Faust) is frozen out of the
    scans altogether.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run_worker(options: WorkerOptions) -> int:
    """Entry point of ``hvdm engine --broker URL`` (see ``services.cli.engine_cmd``)."""
    notifier = Notifier.from_environ()
    settings = KafkaSettings.from_url(options.broker)
    logging.basicConfig(
        level=logging.INFO if options.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    ensure_topics(settings)
    config = engine_config_of(settings, options.engine_config)
    tune_gc()
    worker = EngineWorker(
        settings, config, batch=options.batch, checkpoint_every=options.snapshot_every, pipeline=options.pipeline
    )
    print(
        f"hvdm engine: group {settings.group_id} on {settings.bootstrap}, inbox {settings.inbox}, "
        f"ticks={settings.ticks} speed x{settings.speed:g}",
        file=sys.stderr,
        flush=True,
    )
    loglevel = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    try:
        return run_app(worker, loglevel, options.metrics, options.metrics_labels, notifier)
    finally:
        notifier.close()


def status_line(worker: EngineWorker) -> str:
    owned = worker.owned
    ready = sum(1 for p in owned.values() if p.ready.is_set())
    return (
        f"{len(owned)} partitions owned ({ready} recovered); "
        f"{worker.records_processed} inbox records processed since start"
    )


async def tell_systemd(worker: EngineWorker, notifier: Notifier) -> None:
    """READY=1 once ``serving``, then watchdog pings and STATUS= lines from the worker's loop (the
    loop that decides the inbox: a blocked loop stops pinging and systemd restarts the worker)."""
    from .worker_metrics import WorkerView

    if not notifier.enabled:
        return
    serving = WorkerView(worker).ready  # joined the group, every owned partition recovered (/-/ready)
    while not serving():
        await asyncio.sleep(0.1)
    notifier.ready(f"serving: {status_line(worker)}")
    await notifier.keep_alive(lambda: status_line(worker))


def run_app(
    worker: EngineWorker,
    loglevel: str,
    metrics: tuple[str, int] | None,
    labels: MetricsLabels | None,
    notifier: Notifier | None = None,
) -> int:
    """Run ``worker``'s Faust app until it stops; its exit status."""
    import faust

    notify = notifier if notifier is not None else Notifier(None)

    class Worker(faust.Worker):
        """Faust's worker, telling systemd when it serves and when it stops (mode's hooks)."""

        async def on_first_start(self) -> None:
            await super().on_first_start()
            self.add_future(tell_systemd(worker, notify))

        async def on_stop(self) -> None:
            notify.stopping("stopping: committing and leaving the consumer group")
            await super().on_stop()

    # Faust (mode) replaces the root logger's handlers with its own on stdout; keep hvdm's
    # (--log-format text|json, on stderr) and only let it set the level.
    worker.app.conf.loghandlers = list(logging.getLogger().handlers)
    faust_worker = Worker(
        worker.app,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        logging_config={"version": 1, "disable_existing_loggers": False, "root": {"level": loglevel}},
    )
    server = _serve_metrics(worker, faust_worker.loop, metrics, labels) if metrics is not None else None
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if server is not None:
            server.stop()
    return 0


def _serve_metrics(
    worker: EngineWorker, loop: asyncio.AbstractEventLoop, at: tuple[str, int], labels: MetricsLabels | None
) -> MetricsServer:
    """/metrics with the VMs of the partitions this worker owns (``worker_metrics``)."""
    from ..metrics import EngineMetrics, start_metrics_server
    from .worker_metrics import WorkerView

    view = WorkerView(worker)
    metrics = EngineMetrics(view, loop=loop, labels=labels, wall_of_tick=view.wall_of_tick)
    worker.on_batch.append(metrics.observe_batch)
    server = start_metrics_server(metrics, at[0], at[1], ready=view.ready)
    print(f"hvdm engine: metrics {server.url}", file=sys.stderr, flush=True)
    return server
