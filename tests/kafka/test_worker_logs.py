"""``hvdm engine --broker --log-format json``: the Faust worker keeps hvdm's log handler.

Faust (mode) replaces the root logger's handlers with a coloured one on stdout when a worker starts;
hvdm's services log on stderr, in the format asked for. A real worker on the tansu broker, stopped
with SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.kafka_engine.tansu import LocalBroker

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]


def test_worker_logs_json_on_stderr_and_nothing_on_stdout(broker: LocalBroker, prefix: str, tmp_path: Path) -> None:
    cfg = tmp_path / "engine.toml"
    cfg.write_text(f'[log]\nlevel = "info"\nformat = "json"\n[engine]\nbroker = "{broker.url}?prefix={prefix}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "hvdm", "engine", "--config", str(cfg)],  # the installed name (cwd is not the checkout)
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(8)  # joins the group and recovers its partitions (info lines)
        running = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert running, err[-2000:]
    assert out.strip() == "", out[:2000]
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records, err[-2000:]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["level"] == "info" for r in records)
    # Faust's and mode's own lines come through hvdm's handler too.
    assert any(r["logger"].startswith(("faust", "mode")) for r in records), {r["logger"] for r in records}
    others = [line for line in err.splitlines() if line.strip() and not line.startswith("{")]
    # The start banner is the one human line; no Faust/mode-formatted log line ([timestamp] [pid] ...).
    assert not [line for line in others if line.startswith("[20")], others[:5]
