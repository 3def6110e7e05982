"""``--log-format json`` / ``--log-level`` and the QMP directory ``hvdm run`` and ``hvdm ctl`` share,
with a real ``hvdm run`` (simulated guest over the real gateway socket) and a real ``hvdm ctl``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from services.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_run_and_ctl_default_to_the_same_qmp_directory() -> None:
    run = build_parser("run").parse_args(["run"])
    ctl = build_parser("ctl").parse_args(["ctl", "vm1", "info", "balloon"])
    assert Path(run.qmp_dir) == Path(ctl.qmp_dir) == Path(os.environ["HVDM_QMP_DIR"])


def test_json_logs_name_the_vm_and_ctl_finds_the_vm_without_flags(tmp_path: Path) -> None:
    qmp_dir = Path(os.environ["HVDM_QMP_DIR"])
    cmd = [
        sys.executable, "-m", "services", "run",
        "--db", str(tmp_path / "hvdm.db"),
        "--socket", str(tmp_path / "gw.sock"),
        "--guests", "1", "--guest-memory", "2G", "--speed", "20",
        "--duration", "60", "--progress-interval", "0",
        "--log-level", "info", "--log-format", "json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sock = qmp_dir / "vm1.sock"
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert sock.exists(), "hvdm run did not serve vm1's QMP socket in the default directory"
        ctl = subprocess.run(
            [sys.executable, "-m", "services", "ctl", "vm1", "info", "balloon"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ctl.returncode == 0, ctl.stderr
        assert "balloon: actual=" in ctl.stdout
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert records, stderr
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all(r["time"].endswith("Z") and r["level"] in ("debug", "info", "warning", "error") for r in records)
    connected = [r for r in records if "event=connected" in r["message"]]
    assert connected and connected[0]["vm"] == "vm1" and connected[0]["level"] == "info"
    assert not any(r["level"] == "debug" for r in records)
    # Every log line is JSON; the human banner and summary are the only other stderr lines.
    others = [line for line in stderr.splitlines() if line and not line.startswith("{")]
    assert all(not line.startswith(("INFO", "WARNING", "20")) for line in others), others
