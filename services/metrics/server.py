"""Serve the metrics over HTTP from a fixed pool of threads, and stop it cleanly.

Paths: ``/metrics`` (the scrape), ``/-/healthy`` (the process's engine loop answers) and
``/-/ready`` (the service is ready: recovered, partitions assigned); anything else is 404.

Why not prometheus-client's ``start_http_server``: it starts a thread per connection, with no
limit and no timeout, so any peer that can reach the port can make the process start threads
without bound or hold them forever. Here:

* **bounded threads**: ``threads`` workers take complete requests from a queue of at most
  ``backlog``; a request beyond that is closed at once (counted as ``queue_full``);
* **deadlines, not idle timeouts**: a connection has ``head_timeout`` seconds *in total* to send its
  request head, and the heads of all connections are read by one selector thread, never by a
  worker; a response has ``write_timeout`` seconds in total to be taken. A client dripping one
  byte every 9 s (which a per-read timeout of 10 s never cuts) is cut off at its deadline and
  never holds a worker meanwhile, so four of them (or sixty) cannot starve a scrape; a client
  that does not read its response holds a worker for ``write_timeout`` at most. Every cut-off is
  counted in ``hvdm_metrics_http_rejected_total{reason}`` (``HTTP_REJECT_REASONS``);
* **paced requests**: at most ``max_rate`` requests per second are answered, the rest wait (sleeping);
* **one render for concurrent scrapes** (:class:`ScrapeCache`): a scrape reads the states on the
  engine's loop and formats them while holding the GIL; twenty Prometheus servers scraping at once
  must not cost the engine twenty reads. Scrapes that arrive while a render runs wait for it, and
  a render younger than ``max_age`` seconds is served again. ``bench/metrics_scrape.py
  --concurrent`` measures the engine's batch rate with and without 20 scrapers.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import io
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, generate_latest

from .collector import EngineMetrics, read_on_loop
from .exposition import CONTENT_TYPE, GZIP_LEVEL, render
from .rejections import HttpRejectionCollector

#: hvdm's default ``--metrics-port``.
DEFAULT_METRICS_PORT = 9722
#: Worker threads of the metrics server, and connections that may wait for one.
DEFAULT_THREADS = 4
DEFAULT_BACKLOG = 16
#: Seconds a connection has to send its whole request head (a slow-drip client is cut off then).
DEFAULT_HEAD_TIMEOUT = 10.0
#: Seconds the whole response may take to write (a client that does not read is cut off then).
DEFAULT_WRITE_TIMEOUT = 10.0
#: Connections whose request head is being read at once; a newcomer beyond it evicts the oldest.
DEFAULT_MAX_PENDING = 64
#: A request head longer than this is refused (Prometheus sends a few hundred bytes).
MAX_HEAD_BYTES = 16 * 1024
#: Reasons a connection is cut off or refused (``hvdm_metrics_http_rejected_total{reason}``).
HTTP_REJECT_REASONS = ("queue_full", "head_timeout", "head_too_large", "head_evicted", "write_timeout")
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


class _Request:
    """A connection whose request head has arrived whole, handed from the head reader to a worker."""

    __slots__ = ("head", "sock", "timed_out")

    def __init__(self, sock: socket.socket, head: bytes) -> None:
        self.sock = sock
        self.head = head
        #: Set when the response could not be written within the write deadline.
        self.timed_out = False


class _DeadlineWriter:
    """The response side of a connection: every write must finish within ``timeout`` seconds of
    the first one (a client that reads slowly, or not at all, holds a worker that long at most).

    A missed deadline is raised as ``ConnectionAbortedError``, which wsgiref treats as a client
    gone away (no traceback on stderr); ``request.timed_out`` says why, for the counter."""

    def __init__(self, request: _Request, timeout: float) -> None:
        self._request = request
        self._timeout = timeout
        self._deadline: float | None = None
        self.closed = False

    def write(self, data: bytes) -> int:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._timeout
        remaining = self._deadline - now
        sock = self._request.sock
        try:
            if remaining <= 0:
                raise TimeoutError
            # sendall's timeout bounds the whole call (Python >= 3.5), not each send.
            sock.settimeout(remaining)
            sock.sendall(data)
        except TimeoutError:
            self._request.timed_out = True
            raise ConnectionAbortedError("response write deadline passed") from None
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _Handler(WSGIRequestHandler):
    """One request whose head the server has read already: parsed from memory, answered through a
    ``_DeadlineWriter``; no access log for every scrape."""

    write_timeout = DEFAULT_WRITE_TIMEOUT

    def setup(self) -> None:
        request: _Request = self.request
        self.connection = request.sock
        request.sock.setblocking(True)
        self.rfile = io.BytesIO(request.head)
        self.wfile = cast(io.BufferedIOBase, _DeadlineWriter(request, self.write_timeout))

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _head_end(buffer: bytearray) -> int:
    """Length of the request head in ``buffer`` (through its blank line), or -1 while incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = buffer.find(b"\n\n")  # bare newlines (printf | nc): HTTP allows them
    return end + 2 if end >= 0 else -1


class _Pending:
    """A connection whose request head is still arriving."""

    __slots__ = ("address", "buffer", "deadline", "sock")

    def __init__(self, sock: socket.socket, address: Any, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.buffer = bytearray()


class BoundedWSGIServer(WSGIServer):
    """A WSGI server whose requests are answered by a fixed pool of threads (see module doc).

    One thread (``serve_forever``) accepts connections and reads their request heads with a
    selector, many at once, each within ``head_timeout`` seconds in total; only a complete head is
    queued for the ``threads`` workers. So a client that drips its request a byte at a time, or
    sends nothing, costs a socket in the selector for ``head_timeout`` seconds and never a worker:
    a scrape arriving meanwhile is answered at once. At most ``max_pending`` heads are read at a
    time; a newcomer beyond that evicts the oldest (the one closest to its deadline).
    """

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[WSGIRequestHandler],
        *,
        threads: int,
        backlog: int,
        max_rate: float = DEFAULT_MAX_RATE,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.request_queue_size = backlog + max_pending  # the kernel's accept queue (listen)
        self._interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self._next_slot = 0.0
        self._pace = threading.Lock()
        self._queue: queue.Queue[tuple[_Request, Any] | None] = queue.Queue(backlog)
        self.head_timeout = head_timeout
        self.max_pending = max_pending
        #: Connections cut off or refused, by reason (``HTTP_REJECT_REASONS``):
        #: ``hvdm_metrics_http_rejected_total{reason}``.
        self.rejected: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()
        self.errors = 0
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        super().__init__(address, handler)
        self._workers = [
            threading.Thread(target=self._work, name=f"hvdm-metrics-worker-{i}", daemon=True) for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def refused(self) -> int:
        """Connections closed at once because every worker was busy and the queue full."""
        return self.rejected["queue_full"]

    def reject(self, reason: str) -> None:
        with self._count_lock:
            self.rejected[reason] += 1

    # ------------------------------------------------------------------ the head reader
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        pending: dict[socket.socket, _Pending] = {}  # arrival order: the oldest first
        try:
            with selectors.DefaultSelector() as sel:
                self.socket.setblocking(False)
                sel.register(self.socket, selectors.EVENT_READ, "accept")
                sel.register(self._wake_r, selectors.EVENT_READ, "wake")
                while not self._stop.is_set():
                    timeout = poll_interval
                    if pending:
                        oldest = next(iter(pending.values()))
                        timeout = min(timeout, max(0.0, oldest.deadline - time.monotonic()))
                    for key, _ in sel.select(timeout):
                        if key.data == "accept":
                            self._accept(sel, pending)
                        elif key.data == "wake":
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(4096)
                        else:
                            self._read_head(sel, pending, pending.get(key.fileobj))  # type: ignore[call-overload]
                    now = time.monotonic()
                    while pending:
                        oldest = next(iter(pending.values()))
                        if oldest.deadline > now:
                            break
                        self._drop(sel, pending, oldest, "head_timeout")
                for p in list(pending.values()):
                    self._drop(sel, pending, p, None)
        finally:
            self._stopped.set()

    def _accept(self, sel: selectors.BaseSelector, pending: dict[socket.socket, _Pending]) -> None:
        for _ in range(64):  # what arrived since the last select, in one go
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1  # EMFILE and kin: the listen backlog keeps the rest
                return
            sock.setblocking(False)
            if len(pending) >= self.max_pending:
                self._drop(sel, pending, next(iter(pending.values())), "head_evicted")
            entry = _Pending(sock, address, time.monotonic() + self.head_timeout)
            pending[sock] = entry
            sel.register(sock, selectors.EVENT_READ, "head")

    def _read_head(
        self, sel: selectors.BaseSelector, pending: dict[socket.socket, _Pending], entry: _Pending | None
    ) -> None:
        if entry is None:
            return
        try:
            data = entry.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the peer went away before asking anything: nothing to answer or count
            self._drop(sel, pending, entry, None)
            return
        entry.buffer += data
        end = _head_end(entry.buffer)
        if end < 0:
            if len(entry.buffer) > MAX_HEAD_BYTES:
                self._drop(sel, pending, entry, "head_too_large")
            return
        sel.unregister(entry.sock)
        del pending[entry.sock]
        try:
            self._queue.put_nowait((_Request(entry.sock, bytes(entry.buffer)), entry.address))
        except queue.Full:
            self.reject("queue_full")
            self._close(entry.sock)

    def _drop(
        self, sel: selectors.BaseSelector, pending: dict[socket.socket, _Pending], entry: _Pending, reason: str | None
    ) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(entry.sock)
        pending.pop(entry.sock, None)
        if reason is not None:
            self.reject(reason)
        self._close(entry.sock)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (from another thread) and wait until it has returned."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._stopped.wait(10.0)

    # ------------------------------------------------------------------ the workers
    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            request, address = item
            self._wait_turn()
            try:
                self.finish_request(request, address)  # type: ignore[arg-type]
            except Exception:
                self.errors += 1  # a peer that hung up: nothing to report
            finally:
                if request.timed_out:
                    self.reject("write_timeout")
                self._close(request.sock)

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
        while True:  # requests still queued: close them
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._close(item[0].sock)
        self._wake_r.close()
        self._wake_w.close()

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
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    max_pending: int = DEFAULT_MAX_PENDING,
    max_age: float = DEFAULT_MAX_AGE,
    max_rate: float = DEFAULT_MAX_RATE,
    labels: Mapping[str, str] | None = None,
) -> MetricsServer:
    """Serve ``source`` at ``http://host:port/metrics`` (port 0: any free port, see ``.port``).

    ``EngineMetrics`` is served through hvdm's fast text writer; a plain registry through
    prometheus-client's. ``healthy`` defaults to "the engine's loop answers within 2 s" for
    ``EngineMetrics`` (always true for a registry); ``ready`` defaults to ``healthy``. The server's
    own refusals are exported with the rest (``hvdm_metrics_http_rejected_total{reason}``), with
    the ``EngineMetrics``' common labels or, for a registry, ``labels`` (the ``host`` label).
    """
    server_class = _Server6 if ":" in host else _Server4

    class Handler(_Handler):
        pass

    Handler.write_timeout = write_timeout
    httpd = server_class(
        (host, port),
        Handler,
        threads=threads,
        backlog=backlog,
        max_rate=max_rate,
        head_timeout=head_timeout,
        max_pending=max_pending,
    )
    if isinstance(source, EngineMetrics):
        metrics = source
        metrics.add_collector(HttpRejectionCollector(httpd, HTTP_REJECT_REASONS, metrics.labels.common()))
        cache = ScrapeCache(lambda: render(metrics.collector, metrics.extra), max_age)
        if healthy is None:
            loop = metrics.collector.loop
            healthy = lambda: read_on_loop(loop, _always, 2.0)  # noqa: E731
    else:
        registry = source
        registry.register(HttpRejectionCollector(httpd, HTTP_REJECT_REASONS, labels))
        cache = ScrapeCache(lambda: generate_latest(registry), max_age)
    healthy = healthy or _always
    app = make_app(cache, healthy=healthy, ready=ready or healthy)
    httpd.set_app(app)
    thread = threading.Thread(target=httpd.serve_forever, name=f"hvdm-metrics-{port}", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread, cache)
