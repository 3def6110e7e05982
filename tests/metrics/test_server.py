"""The metrics HTTP server: its paths, its bounded threads and timeouts, one render for many scrapes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.dm_engine.config import EngineConfig
from services.embedded.service import EmbeddedService
from services.metrics import EngineMetrics, serve_for_service, start_metrics_server
from services.metrics.server import ScrapeCache
from tests.metrics.fleet import drive_fleet

FROZEN = 1e-9
FAST = EngineConfig(post_init_wait_ticks=1)


def get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def test_only_metrics_serves_metrics_and_health_paths_answer(tmp_path: Path) -> None:
    ready = {"now": False}

    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        served = serve_for_service(service, "127.0.0.1", 0, ready=lambda: ready["now"])
        base = served.server.base_url
        try:
            await drive_fleet(service)
            status, body = await asyncio.to_thread(get, f"{base}/metrics")
            assert status == 200 and b"hvdm_vm_current_bytes" in body
            for path in ("/", "/metric", "/metrics/", "/favicon.ico", "/-/metrics"):
                status, body = await asyncio.to_thread(get, base + path)
                assert status == 404 and b"hvdm_" not in body, path
            assert (await asyncio.to_thread(get, f"{base}/metrics", "POST"))[0] == 405
            # Healthy: the engine's loop answers (the probe runs on it, from the server thread).
            assert await asyncio.to_thread(get, f"{base}/-/healthy") == (200, b"hvdm is Healthy.\n")
            assert (await asyncio.to_thread(get, f"{base}/-/ready"))[0] == 503
            ready["now"] = True
            assert await asyncio.to_thread(get, f"{base}/-/ready") == (200, b"hvdm is Ready.\n")
        finally:
            served.close()
            await service.stop()

    asyncio.run(scenario())


def test_a_blocked_engine_loop_is_unhealthy_and_a_scrape_fails_cleanly(tmp_path: Path) -> None:
    """The health probe and the scrape read on the engine's loop; a loop that does not answer is
    reported (503), never waited for forever."""

    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        metrics = EngineMetrics(service.runner, loop=asyncio.get_running_loop())
        metrics.collector._read_timeout = 0.5
        server = start_metrics_server(metrics, "127.0.0.1", 0)
        try:
            result: dict[str, tuple[int, bytes]] = {}

            def probe() -> None:
                result["healthy"] = get(f"{server.base_url}/-/healthy")
                result["metrics"] = get(server.url)

            thread = threading.Thread(target=probe)
            thread.start()
            time.sleep(3.0)  # the loop is blocked on purpose: this is the engine stuck in a batch
            thread.join(10)
            assert result["healthy"][0] == 503
            assert result["metrics"][0] == 503 and b"scrape failed" in result["metrics"][1]
        finally:
            server.stop()
            await service.stop()

    asyncio.run(scenario())


def test_silent_connections_hold_no_worker_and_are_cut_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        metrics = EngineMetrics(service.runner, loop=asyncio.get_running_loop())
        server = start_metrics_server(
            metrics, "127.0.0.1", 0, threads=2, backlog=2, head_timeout=0.5, max_pending=8
        )  # fmt: skip
        idle: list[socket.socket] = []
        try:
            threads_before = threading.active_count()
            for _ in range(30):  # connections that never send a request
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            await asyncio.sleep(0.1)
            # No thread per connection, and no worker either: their heads are read by the selector.
            assert threading.active_count() == threads_before
            # A scrape is answered at once meanwhile (a newcomer evicts the oldest silent one).
            started = time.monotonic()
            status, body = await asyncio.to_thread(get, server.url)
            assert status == 200 and b"hvdm_engine_vms" in body
            assert time.monotonic() - started < 1.0
            # Every silent connection is closed by the server: evicted, or cut at its deadline.
            for sock in idle:
                sock.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1) == b""
            rejected = server.httpd.rejected
            assert rejected["head_evicted"] >= 1 and rejected["head_evicted"] + rejected["head_timeout"] == 30
            assert server.httpd.refused == 0
        finally:
            for sock in idle:
                sock.close()
            server.stop()
            await service.stop()
        assert not [t for t in threading.enumerate() if t.name.startswith("hvdm-metrics")]

    asyncio.run(scenario())


def test_concurrent_scrapes_share_one_render() -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow_render() -> bytes:
        calls.append(1)
        release.wait(5)
        return b"x" * 1000

    cache = ScrapeCache(slow_render, max_age=60)
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(cache.get(gzipped=False))) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join(5)
    assert len(bodies) == 20 and set(bodies) == {b"x" * 1000}
    assert len(calls) == 1 and cache.renders == 1
    assert cache.get(gzipped=True) != cache.get(gzipped=False)  # served again, gzipped once
    assert cache.renders == 1
    cache.max_age = 0
    time.sleep(0.01)
    cache.get()
    assert cache.renders == 2


def test_twenty_scrapers_cost_the_engine_about_one_read_per_second(tmp_path: Path) -> None:
    """The engine loop serves one state read per ``max_age`` however many scrape (the ratio of
    engine batches/s with and without scrapers is measured by bench/metrics_concurrency)."""

    async def scenario() -> None:
        service = EmbeddedService.open(tmp_path / "hvdm.db", speed=FROZEN, config=FAST)
        await service.start()
        reads: list[float] = []
        served = serve_for_service(service, "127.0.0.1", 0)
        original = served.metrics.collector._extract

        def counted_extract() -> Any:
            reads.append(time.monotonic())
            return original()

        served.metrics.collector._extract = counted_extract  # type: ignore[method-assign]
        try:
            await drive_fleet(service)
            stop = time.monotonic() + 2.5
            counts = [0] * 20

            def scrape(i: int) -> None:
                while time.monotonic() < stop:
                    status, _ = get(served.url)
                    assert status == 200
                    counts[i] += 1

            await asyncio.gather(*(asyncio.to_thread(scrape, i) for i in range(20)))
        finally:
            served.close()
            await service.stop()
        assert sum(counts) >= 20
        assert len(reads) <= 4  # 2.5 s at one read per second (+1 for the edges)
        assert sum(counts) > 2 * len(reads)

    asyncio.run(scenario())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_both_address_families(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    from prometheus_client import CollectorRegistry

    try:
        server = start_metrics_server(CollectorRegistry(), host, 0)
    except OSError:
        pytest.skip(f"cannot listen on {host}")
    try:
        assert get(server.url)[0] == 200
        assert get(f"{server.base_url}/-/ready")[0] == 200
    finally:
        server.stop()
