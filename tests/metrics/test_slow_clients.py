"""Slow clients against the real metrics server over real sockets: dripping request heads, responses
nobody reads, oversized heads. None of them may starve a scrape; each is cut off and counted in
``hvdm_metrics_http_rejected_total{reason}``, which a real scrape then shows."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from services.dm_engine.config import EngineConfig
from services.embedded.service import EmbeddedService
from services.metrics import EngineMetrics, start_metrics_server
from services.metrics.server import DEFAULT_THREADS, HTTP_REJECT_REASONS, MetricsServer
from tests.metrics.fleet import drive_fleet

FAST = EngineConfig(post_init_wait_ticks=1)
HEAD_TIMEOUT = 1.5
#: One byte every DRIP seconds: far under any per-read timeout, so only a total deadline cuts it.
DRIP = 0.3


def scrape(url: str) -> tuple[int, str, float]:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(resp.status), resp.read().decode(), time.monotonic() - started


def rejected(text: str) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "hvdm_metrics_http_rejected_total"
    }


class Dripper(threading.Thread):
    """Sends a request head one byte every ``DRIP`` seconds until the server cuts it off."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.connected = time.monotonic()
        self.cut_after: float | None = None
        self.sent = 0

    def run(self) -> None:
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"d" * 1000
        try:
            for byte in head:
                self.sock.sendall(bytes([byte]))
                self.sent += 1
                # The server's close shows as EOF (or a reset) on a read that does not wait long.
                self.sock.settimeout(DRIP)
                try:
                    if self.sock.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
        except OSError:
            pass
        self.cut_after = time.monotonic() - self.connected
        self.sock.close()


def test_four_drip_clients_cannot_starve_a_scrape_and_are_cut_off_and_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=1e-9, config=FAST)
        await service.start()
        metrics = EngineMetrics(service.runner, loop=asyncio.get_running_loop())
        server = start_metrics_server(metrics, "127.0.0.1", 0, head_timeout=HEAD_TIMEOUT, max_age=0)
        try:
            await drive_fleet(service)
            drippers = [Dripper(server.port) for _ in range(DEFAULT_THREADS)]
            for d in drippers:
                d.start()
            await asyncio.sleep(0.5)  # every one of them is mid-head now, holding a connection
            assert all(d.cut_after is None and d.sent >= 2 for d in drippers)
            # The scrape is answered at once: the drippers hold no worker.
            status, body, took = await asyncio.to_thread(scrape, server.url)
            assert status == 200 and "hvdm_vm_current_bytes" in body and took < 1.0, took
            for d in drippers:
                await asyncio.to_thread(d.join, 10)
            # Each was cut at its deadline (1.5 s), long before its 1,000-byte head was out.
            cut = [d.cut_after for d in drippers]
            assert all(c is not None and HEAD_TIMEOUT - 0.2 < c < HEAD_TIMEOUT + 1.5 for c in cut), cut
            assert all(d.sent < 20 for d in drippers)
            status, body, _ = await asyncio.to_thread(scrape, server.url)
            counts = rejected(body)
            assert set(counts) == set(HTTP_REJECT_REASONS)
            assert counts["head_timeout"] == DEFAULT_THREADS, counts
            assert sum(counts.values()) == DEFAULT_THREADS
        finally:
            server.stop()
            await service.stop()

    asyncio.run(scenario())


class BigCollector(Collector):
    """A scrape of about 12 MB, more than the kernel buffers between a writer and a peer that reads
    nothing (a 4 KiB receive buffer)."""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("big", "A large scrape.", labels=["pad"])
        pad = "p" * 200
        for i in range(50_000):
            family.add_metric([f"{pad}{i}"], float(i))
        return [family]


def stalled_reader(server: MetricsServer) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def test_a_client_that_does_not_read_is_cut_off_at_the_write_deadline() -> None:
    registry = CollectorRegistry()
    registry.register(BigCollector())
    server = start_metrics_server(registry, "127.0.0.1", 0, threads=1, write_timeout=1.0, max_age=60)
    stalled: list[socket.socket] = []
    try:
        status, body, _ = scrape(server.url)  # rendered once (cached for 60 s), read in full
        assert status == 200 and len(body) > 10_000_000
        stalled.append(stalled_reader(server))
        time.sleep(0.3)
        # The only worker is writing to the stalled reader; a scrape waits for the deadline, no longer.
        status, body, took = scrape(f"{server.base_url}/-/healthy")
        assert status == 200 and took < 2.5, took
        deadline = time.monotonic() + 5
        while server.httpd.rejected["write_timeout"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The stalled connection was closed: what it can read ends (or is reset) well short of 12 MB.
        got = 0
        stalled[0].settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while chunk := stalled[0].recv(65536):
                got += len(chunk)
        assert got < 10_000_000
        # (The scrape is cached for 60 s here; the registry renders the counter afresh.)
        assert rejected(generate_latest(registry).decode())["write_timeout"] == 1
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


def test_an_oversized_head_is_refused_and_counted() -> None:
    server = start_metrics_server(CollectorRegistry(), "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 40_000)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
        assert rejected(scrape(server.url)[1])["head_too_large"] == 1
        # Bare newlines end a head too (printf ... | nc).
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /-/healthy HTTP/1.0\n\n")
            assert sock.recv(100).startswith(b"HTTP/1.0 200")
    finally:
        server.stop()
