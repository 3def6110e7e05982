"""``hvdm run --broker``: the demo story on the Kafka deployment with wall-clock ticks, through the
real CLI (gateway in-process, an ``hvdm engine --broker`` child, simulated guests), ends with the
same accounting as the deterministic runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.kafka_engine.tansu import LocalBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def test_run_broker_demo_completes_with_the_embedded_accounting(
    broker: LocalBroker, prefix: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "services",
            "run",
            "--broker",
            f"{broker.url}?prefix={prefix}&partitions=2",
            "--guests",
            "2",
            "--scenario",
            "demo",
            "--socket",
            str(tmp_path / "gw.sock"),
            "--json",
            "--progress-interval",
            "0",
            "--duration",
            "300",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    report = json.loads(last[last.index("{") :])  # a child may have written terminal escapes first
    assert report["scenario_completed"] is True
    for vm in ("vm1", "vm2"):
        v = report["vms"][vm]
        # The lockstep runs (embedded and Kafka) end here too: boot 4 GiB + half the 2 GiB backend.
        assert (v["protocol_state"], v["current_bytes"], v["hot_added_bytes"], v["ballooned_bytes"]) == (
            "IDLE",
            5 * GIB,
            GIB,
            0,
        ), v
        assert v["violations"] == {}
