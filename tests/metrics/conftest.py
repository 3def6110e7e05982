"""Fixtures of the metrics tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.metrics.prometheus_server import PrometheusServer, prometheus_binary, start_prometheus


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str | Sequence[str]], PrometheusServer]]:
    """Start a Prometheus (Debian package ``prometheus``) scraping ``target`` (one ``host:port`` or
    several); stopped at teardown."""
    if prometheus_binary() is None:
        pytest.skip("needs the prometheus binary (Debian package 'prometheus')")
    started: list[PrometheusServer] = []

    def start(target: str | Sequence[str]) -> PrometheusServer:
        server = start_prometheus(tmp_path / f"prometheus{len(started)}", target)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
