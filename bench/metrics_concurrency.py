"""Do concurrent scrapes slow the engine? Engine batches/s with and without 20 scrapers.

The engine (``EngineRunner`` on SQLite, status reports of ``--vms`` VMs, batches of 500 on an
asyncio loop, as the embedded service runs it) processes the same inbox four times, each from a
copy of the same log:

* ``no scrapers`` (the baseline);
* ``20 scrapers, hvdm server``: 20 threads fetching ``/metrics`` as fast as they can from
  ``start_metrics_server`` (4 worker threads, one render per second shared by every scrape);
* ``20 scrapers, no reuse``: the same server with ``max_age=0`` (concurrent scrapes still share a
  render in flight, but every new scrape renders again);
* ``20 scrapers, thread per scrape``: prometheus-client's ``ThreadingWSGIServer``, a thread and a
  full read + render per scrape: what hvdm served before.

Every scrape reads the states on the engine's loop (between two batches) and formats them on its
own thread while holding the GIL, so what a scrape costs the engine is the read plus the share of
the GIL the formatting takes. Prints batches/s per case and its ratio to the baseline, scrapes
served and renders done.

Run: ``python -m bench.metrics_concurrency`` or ``hvdm bench metrics_concurrency`` (``--vms N``,
``--rounds R`` status reports per VM, ``--scrapers S``).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer

from bench.engine import CONFIG, handshake_inputs, status_inputs
from services.dm_engine.records import to_dict
from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog
from services.metrics.collector import EngineMetrics
from services.metrics.exposition import CONTENT_TYPE, render
from services.metrics.server import start_metrics_server

BATCH = 500


def build_log(path: Path, vms: int, rounds: int) -> int:
    """A log whose VMs are negotiated (processed) and whose inbox holds ``rounds`` status reports
    per VM (not processed yet); returns the number of pending records."""
    log = SqliteLog(path)
    runner = EngineRunner(log, CONFIG)
    for v in range(vms):
        log.append_inputs([(f"vm{v}", r.tick, to_dict(r), None) for r in handshake_inputs(4 << 30)])
    runner.run_until_idle(5000)
    work = status_inputs(vms, rounds)
    log.append_inputs([(vm, r.tick, to_dict(r), None) for vm, r in work])
    log.close()
    return len(work)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _unbounded_server(metrics: EngineMetrics) -> tuple[Any, threading.Thread]:
    """The previous server: a thread per connection and a full scrape per request."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = render(metrics.collector, metrics.extra)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]

    httpd = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread


def _scrape_loop(url: str, stop: Any, served: Any, i: int) -> None:
    headers = {"Accept-Encoding": "gzip"}  # as Prometheus asks
    while not stop.is_set():
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
                resp.read()
            served[i] += 1
        except OSError:
            time.sleep(0.01)


def _scraper_process(url: str, count: int, stop: Any, served: Any) -> None:
    """``count`` threads scraping as fast as they can, in a process of their own (as Prometheus
    servers are), so that only the serving side competes with the engine for the GIL."""
    threads = [threading.Thread(target=_scrape_loop, args=(url, stop, served, i)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_case(path: Path, mode: str, scrapers: int) -> tuple[float, int, int, int]:
    """(seconds, batches, scrapes served, renders) for one pass over the pending inbox."""

    async def main() -> tuple[float, int, int, int]:
        log = SqliteLog(path)
        runner = EngineRunner(log, CONFIG)
        metrics = EngineMetrics(runner, loop=asyncio.get_running_loop())
        server: Any = None
        old: Any = None
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        served: Any = ctx.Array("l", scrapers)
        proc: Any = None
        if mode == "hvdm":
            server = start_metrics_server(metrics, "127.0.0.1", 0)
        elif mode == "no-reuse":
            server = start_metrics_server(metrics, "127.0.0.1", 0, max_age=0.0)
        elif mode == "thread-per-scrape":
            old = _unbounded_server(metrics)
        if server is not None or old is not None:
            port = server.port if server is not None else old[0].server_address[1]
            proc = ctx.Process(
                target=_scraper_process, args=(f"http://127.0.0.1:{port}/metrics", scrapers, stop, served)
            )
            proc.start()
            while sum(served) < scrapers:  # the scrapers are under way before the engine starts
                await asyncio.sleep(0.05)
        batches = 0
        started = time.perf_counter()
        while runner.run_batch(BATCH):
            batches += 1
            await asyncio.sleep(0)  # the service's loop: scrape reads run between batches
        elapsed = time.perf_counter() - started
        stop.set()
        # The scrapers' last requests need the loop to answer them.
        while proc is not None and proc.is_alive():
            await asyncio.sleep(0.01)
        renders = 0
        if server is not None:
            renders = server.cache.renders
            server.stop()
        if old is not None:
            old[0].shutdown()
            old[0].server_close()
            renders = sum(served)
        log.close()
        return elapsed, batches, sum(served) if proc is not None else 0, renders

    return asyncio.run(main())


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="hvdm bench metrics_concurrency", description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=8, help="status reports per VM to process")
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (the median is printed)")
    args = parser.parse_args(list(argv))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.db"
        pending = build_log(base, args.vms, args.rounds)
        print(f"engine: {pending} status reports of {args.vms} VMs in batches of {BATCH}; {args.scrapers} scrapers")
        cases = [
            ("no scrapers", "none"),
            (f"{args.scrapers} scrapers, hvdm server", "hvdm"),
            (f"{args.scrapers} scrapers, no reuse", "no-reuse"),
            (f"{args.scrapers} scrapers, thread per scrape", "thread-per-scrape"),
        ]
        results: dict[str, list[tuple[float, int, int, int]]] = {mode: [] for _, mode in cases}
        for _ in range(args.repeat):  # interleaved, so a noisy neighbour hits every case alike
            for _, mode in cases:
                path = Path(tmp) / f"{mode}.db"
                shutil.copyfile(base, path)
                results[mode].append(run_case(path, mode, args.scrapers))
                os.unlink(path)
        baseline = 0.0
        for name, mode in cases:
            runs = sorted(results[mode], key=lambda r: r[1] / r[0])
            seconds, batches, scrapes, renders = runs[len(runs) // 2]  # the median run
            rate = batches / seconds
            baseline = baseline or rate
            print(
                f"{name:38} {rate:8.1f} batches/s ({pending / seconds:8.0f} records/s)  ratio {rate / baseline:5.2f}"
                f"  scrapes {scrapes:5d}  renders {renders:5d}  (median of {len(runs)})"
            )
    print(
        f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
