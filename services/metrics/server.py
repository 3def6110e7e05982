"""Serve the metrics over HTTP from a fixed pool of threads, and stop it cleanly.

Paths: ``/metrics`` (the scrape), ``/-/healthy`` (the process's engine loop answers) and
``/-/ready`` (the service is ready: recovered, partitions assigned); anything else is 404.

Why not prometheus-client's ``start_http_server``: it starts a thread per connection, with no
limit and no timeout, so any peer that can reach the port can make the process start threads
without bound or hold them forever. Here:

* **bounded threads**: ``threads`` workers take accepted connections from a queue of at most
  ``backlog``; a connection beyond that is closed at once (and counted in ``refused``);
* **idle timeouts**: a connection that sends nothing for ``idle_timeout`` seconds is dropped, so a
  silent peer holds a worker for at most that long;
* **paced requests**: at most ``max_rate`` requests per second are answered, the rest wait (sleeping);
* **one render for concurrent scrapes** (:class:`ScrapeCache`): a scrape reads the states on the
  engine's loop and formats them while holding the GIL; twenty Prometheus servers scraping at once
  must not cost the engine twenty reads. Scrapes that arrive while a render runs wait for it, and
  a render younger than ``max_age`` seconds is served again. ``bench/metrics_scrape.py
  --concurrent`` measures the engine's batch rate with and without 20 scrapers.
"""

from __future__ import annotations

import gzip
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, generate_latest

from .collector import EngineMetrics, read_on_loop
from .exposition import CONTENT_TYPE, GZIP_LEVEL, render

#: hvdm's default ``--metrics-port``.
DEFAULT_METRICS_PORT = 9722
#: Worker threads of the metrics server, and connections that may wait for one.
DEFAULT_THREADS = 4
DEFAULT_BACKLOG = 16
#: Seconds a connection may stay silent before it is dropped.
DEFAULT_IDLE_TIMEOUT = 10.0
#: A render this young is served again instead of reading the engine once more.
DEFAULT_MAX_AGE = 1.0
#: Requests answered per second, all paths and peers together (20 Prometheus servers scraping
#: every second fit); beyond it requests wait their turn, sleeping, not spinning.
DEFAULT_MAX_RATE = 25.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Probe = Callable[[], bool]


class ScrapeCache:
    """Single-flight rendering with a maximum age.

    ``get()`` returns the latest body if it was rendered less than ``max_age`` seconds ago;
    otherwise one caller renders while the others wait for that same render (never for a second
    one). The gzip form is computed once per body.
    """

    def __init__(self, render: Callable[[], bytes], max_age: float = DEFAULT_MAX_AGE) -> None:
        self._render = render
        self.max_age = max_age
        self._cond = threading.Condition()
        self._body: bytes | None = None
        self._gzipped: bytes | None = None
        self._at = 0.0
        self._generation = 0
        self._rendering = False
        self.renders = 0
        self.served = 0

    def get(self, gzipped: bool = False) -> bytes:
        with self._cond:
            entered = self._generation
            while True:
                fresh = self._body is not None and time.monotonic() - self._at <= self.max_age
                if fresh or self._generation > entered:
                    return self._serve(gzipped)
                if not self._rendering:
                    self._rendering = True
                    break
                self._cond.wait()
        started = time.monotonic()
        try:
            body = self._render()
        except BaseException:
            with self._cond:
                self._rendering = False
                self._cond.notify_all()
            raise
        with self._cond:
            self._body, self._gzipped, self._at = body, None, started
            self._generation += 1
            self._rendering = False
            self.renders += 1
            self._cond.notify_all()
            return self._serve(gzipped)

    def _serve(self, gzipped: bool) -> bytes:
        """Called with the lock held and a body present."""
        assert self._body is not None
        self.served += 1
        if not gzipped:
            return self._body
        if self._gzipped is None:
            self._gzipped = gzip.compress(self._body, GZIP_LEVEL)
        return self._gzipped


def _status(ok: bool) -> str:
    return "200 OK" if ok else "503 Service Unavailable"


WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(cache: ScrapeCache, *, healthy: Probe, ready: Probe) -> WsgiApp:
    """The WSGI app: ``/metrics``, ``/-/healthy``, ``/-/ready``; 404 elsewhere, 405 for writes."""

    def text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
        data = body.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
        return [data]

    def probe(check: Probe) -> bool:
        try:
            return bool(check())
        except Exception:
            return False

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return text(start_response, "405 Method Not Allowed", "only GET\n")
        if path == "/-/healthy":
            ok = probe(healthy)
            return text(start_response, _status(ok), f"hvdm is {'Healthy' if ok else 'Unhealthy'}.\n")
        if path == "/-/ready":
            ok = probe(ready)
            return text(start_response, _status(ok), f"hvdm is {'Ready' if ok else 'not ready'}.\n")
        if path != "/metrics":
            return text(start_response, "404 Not Found", "metrics are at /metrics\n")
        gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        try:
            body = cache.get(gzipped)
        except Exception as e:  # the engine loop did not answer in time: say so, do not crash the thread
            return text(start_response, "503 Service Unavailable", f"scrape failed: {type(e).__name__}\n")
        headers = [("Content-Type", CONTENT_TYPE)]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    return app


class _Handler(WSGIRequestHandler):
    """No access log for every scrape; a silent connection is dropped after ``timeout`` seconds."""

    timeout = DEFAULT_IDLE_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


class BoundedWSGIServer(WSGIServer):
    """A WSGI server whose connections are handled by a fixed pool of threads (see module doc)."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[WSGIRequestHandler],
        *,
        threads: int,
        backlog: int,
        max_rate: float = DEFAULT_MAX_RATE,
    ) -> None:
        self.request_queue_size = backlog
        self._interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self._next_slot = 0.0
        self._pace = threading.Lock()
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue(backlog)
        self.refused = 0
        self.errors = 0
        super().__init__(address, handler)
        self._workers = [
            threading.Thread(target=self._work, name=f"hvdm-metrics-worker-{i}", daemon=True) for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            self.refused += 1
            self.shutdown_request(request)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            request, address = item
            self._wait_turn()
            try:
                self.finish_request(request, address)
            except Exception:
                self.errors += 1  # a peer that timed out or hung up: nothing to report
            finally:
                self.shutdown_request(request)

    def _wait_turn(self) -> None:
        """Pace requests to ``max_rate`` per second: parsing HTTP in Python holds the GIL, so a
        peer hammering even a cached ``/metrics`` would otherwise take the engine's CPU."""
        if not self._interval:
            return
        with self._pace:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._interval
        if slot > now:
            time.sleep(slot - now)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors += 1

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(5.0)
        while True:  # connections still queued: close them
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])

    @property
    def busy_threads(self) -> int:
        return sum(1 for w in self._workers if w.is_alive())


class _Server4(BoundedWSGIServer):
    address_family = socket.AF_INET


class _Server6(BoundedWSGIServer):
    address_family = socket.AF_INET6


@dataclass(slots=True)
class MetricsServer:
    httpd: BoundedWSGIServer
    thread: threading.Thread
    cache: ScrapeCache
    _stopped: bool = field(default=False)

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/metrics"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting scrapes, close the socket and join every thread."""
        if self._stopped:
            return
        self._stopped = True
        self.httpd.shutdown()
        self.thread.join(timeout)
        self.httpd.server_close()


def _always() -> bool:
    return True


def start_metrics_server(
    source: EngineMetrics | CollectorRegistry,
    host: str = "127.0.0.1",
    port: int = DEFAULT_METRICS_PORT,
    *,
    ready: Probe | None = None,
    healthy: Probe | None = None,
    threads: int = DEFAULT_THREADS,
    backlog: int = DEFAULT_BACKLOG,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_age: float = DEFAULT_MAX_AGE,
    max_rate: float = DEFAULT_MAX_RATE,
) -> MetricsServer:
    """Serve ``source`` at ``http://host:port/metrics`` (port 0: any free port, see ``.port``).

    ``EngineMetrics`` is served through hvdm's fast text writer; a plain registry through
    prometheus-client's. ``healthy`` defaults to "the engine's loop answers within 2 s" for
    ``EngineMetrics`` (always true for a registry); ``ready`` defaults to ``healthy``.
    """
    if isinstance(source, EngineMetrics):
        metrics = source
        cache = ScrapeCache(lambda: render(metrics.collector, metrics.extra), max_age)
        if healthy is None:
            loop = metrics.collector.loop
            healthy = lambda: read_on_loop(loop, _always, 2.0)  # noqa: E731
    else:
        registry = source
        cache = ScrapeCache(lambda: generate_latest(registry), max_age)
    healthy = healthy or _always
    app = make_app(cache, healthy=healthy, ready=ready or healthy)
    server_class = _Server6 if ":" in host else _Server4

    class Handler(_Handler):
        timeout = idle_timeout

    httpd = server_class((host, port), Handler, threads=threads, backlog=backlog, max_rate=max_rate)
    httpd.set_app(app)
    thread = threading.Thread(target=httpd.serve_forever, name=f"hvdm-metrics-{port}", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread, cache)
