"""``hvdm engine``: the DM engine alone, on the embedded log (``--db``) or on Kafka (``--broker``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

from ..embedded.runner import ARCHIVE_EVERY, EngineRunner
from ..event_log.retry import Backoff
from ..event_log.sqlite_log import LogWriteError, NotAnHvdmLog, SqliteLog, check_log_file
from ..event_log.writer_lock import LogLockError, WriterLock
from ..kafka_engine.worker_options import WorkerOptions
from .arg_types import BROKER, FloatArg, IntArg
from .config_file import add_config_argument, config_of
from .kafka_args import add_compression_flag
from .log_output import add_log_arguments
from .main import EXIT_ERROR, error_line
from .metrics_args import add_metrics_arguments, metrics_labels_of


def _run_sqlite(args: argparse.Namespace) -> int:
    """One engine per log: the writer lock is held while it runs (``hvdm run`` holds it too)."""
    try:
        check_log_file(args.db)  # a foreign file is refused before a lock file is created next to it
        lock = WriterLock.acquire(args.db)
    except (NotAnHvdmLog, LogLockError) as exc:
        print(error_line("engine", exc), file=sys.stderr)
        return EXIT_ERROR
    with lock:
        return _run_locked(args)


def _run_locked(args: argparse.Namespace) -> int:
    try:
        log = SqliteLog(args.db)
    except NotAnHvdmLog as exc:
        print(error_line("engine", exc), file=sys.stderr)
        return EXIT_ERROR
    runner = EngineRunner(log, args.engine_config, snapshot_every=args.snapshot_every, archive_every=args.archive_every)
    try:
        if args.exit_when_idle:
            try:
                n = runner.run_until_idle(args.batch)
            except LogWriteError as exc:
                print(error_line("engine", f"{exc}; processed up to {runner.consumed}"), file=sys.stderr)
                return EXIT_ERROR
            print(f"hvdm engine: processed {n} inbox records; consumed position {runner.consumed}", file=sys.stderr)
            return 0

        on_batch: list[Callable[[int, float], None]] = []

        async def loop() -> None:
            served = None
            if args.metrics_port is not None:
                from ..metrics import serve_for_service

                served = serve_for_service(
                    SimpleNamespace(runner=runner, on_batch=on_batch),
                    args.metrics_host,
                    args.metrics_port,
                    labels=metrics_labels_of(args),
                )
            backoff = Backoff()
            try:
                while True:
                    started = time.perf_counter()
                    try:
                        n = runner.run_batch(args.batch)
                        backoff.reset()
                    except LogWriteError:
                        # A full disk: logged and counted by the log; retried from the committed state.
                        await asyncio.sleep(backoff.next_delay())
                        continue
                    if not n:
                        await asyncio.sleep(args.poll_interval)
                        continue
                    elapsed = time.perf_counter() - started
                    for cb in on_batch:
                        cb(n, elapsed)
            finally:
                if served is not None:
                    served.close()

        asyncio.run(loop())
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        log.close()


def _run(args: argparse.Namespace) -> int:
    args.engine_config = config_of(args).engine_config()
    if args.broker:
        from ..kafka_engine.worker_main import run_worker

        return run_worker(worker_options_of(args))
    return _run_sqlite(args)


def worker_options_of(args: argparse.Namespace) -> WorkerOptions:
    """The Kafka worker's options from validated flags (the metrics labels are checked here too)."""
    return WorkerOptions(
        broker=args.broker,
        engine_config=args.engine_config,
        batch=args.batch,
        snapshot_every=args.snapshot_every,
        verbose=args.verbose,
        metrics=(args.metrics_host, args.metrics_port) if args.metrics_port is not None else None,
        metrics_labels=metrics_labels_of(args),
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("engine", help="run the DM engine on the SQLite log or on Kafka")
    p.add_argument("--db", default="hvdm.db", help="SQLite log (embedded deployment)")
    p.add_argument("--broker", type=BROKER, help="kafka://HOST:PORT (distributed deployment)")
    add_compression_flag(p)
    p.add_argument("--batch", type=IntArg(1, 1_000_000), default=500, help="inbox records per transaction")
    p.add_argument("--snapshot-every", type=IntArg(1, 1 << 31), default=2000, help="events per VM between snapshots")
    p.add_argument(
        "--archive-every",
        type=IntArg(0, 1 << 40),
        default=ARCHIVE_EVERY,
        help="consumed inbox records kept live before history is compressed into a segment (0: never)",
    )
    p.add_argument("--exit-when-idle", action="store_true", help="process the inbox to its end, then exit")
    p.add_argument(
        "--poll-interval",
        type=FloatArg(0.0, 3600.0, low_open=True),
        default=0.05,
        help="seconds between inbox polls when idle",
    )
    add_metrics_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log at info level (see --log-level)")
    add_log_arguments(p)
    add_config_argument(p)
    p.set_defaults(func=_run)
