"""Serve the metrics over HTTP on prometheus-client's threaded WSGI server, and stop it cleanly.

``start_metrics_server(EngineMetrics)`` serves hvdm's fast text writer (``exposition.py``);
``start_metrics_server(CollectorRegistry)`` serves any registry through prometheus-client's own
WSGI app. Both run on prometheus-client's ``ThreadingWSGIServer`` in one daemon thread, like
``prometheus_client.start_http_server``; :class:`MetricsServer` keeps the server and the thread so
a service (or a test) can shut the listener down and join the thread instead of leaking it.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client import make_wsgi_app as prometheus_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from services.metrics.collector import EngineMetrics
from services.metrics.exposition import make_wsgi_app

#: hvdm's default ``--metrics-port``.
DEFAULT_METRICS_PORT = 9722


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server4(ThreadingWSGIServer):
    address_family = socket.AF_INET


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


@dataclass(slots=True)
class MetricsServer:
    httpd: WSGIServer
    thread: threading.Thread

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting scrapes, close the socket and join the serving thread."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout)


def start_metrics_server(
    source: EngineMetrics | CollectorRegistry, host: str = "127.0.0.1", port: int = DEFAULT_METRICS_PORT
) -> MetricsServer:
    """Serve ``source`` at ``http://host:port/metrics`` (port 0: any free port, see ``.port``)."""
    if isinstance(source, EngineMetrics):
        app = make_wsgi_app(source.collector, source.histograms)
    else:
        app = prometheus_wsgi_app(source)
    server_class = _Server6 if ":" in host else _Server4
    httpd = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name=f"hvdm-metrics-{port}", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
