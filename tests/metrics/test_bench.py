"""The scrape benchmark runs (small), prints its ratio and machine, and leaves no global switch on."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from bench import metrics_scrape


def test_benchmark_runs_and_reports_a_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert metrics_scrape.main(["--vms", "50", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "served" in out and "Gauge objects" in out and "ratio" in out and "machine:" in out
    # All three ways export the same series.
    first = out.splitlines()[0]
    counts = {part.split()[-1] for part in first.split(": ", 1)[1].split(", ")}
    assert len(counts) == 1
    # disable_created_metrics() is process-wide; the benchmark switches it back on.
    reg = CollectorRegistry()
    Counter("probe", "probe", registry=reg).inc()
    assert b"probe_created" in generate_latest(reg)
