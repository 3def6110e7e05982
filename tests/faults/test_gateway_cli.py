"""The gateway's security flags through the real CLI: simulated guests over TCP with tokens, and
configurations that cannot authenticate anyone refused with one line before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def hvdm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_simulated_guests_connect_over_tcp_with_their_tokens(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    run = hvdm(
        "run", "--db", str(tmp_path / "hvdm.db"), "--socket", "", "--tcp", "127.0.0.1:0",
        "--token-secret-file", str(secret), "--guests", "2", "--guest-memory", "1G", "--speed", "10",
        "--duration", "4", "--progress-interval", "0", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(report["vms"]) == {"vm1", "vm2"}
    for v in report["vms"].values():
        assert v["protocol_state"] in ("POST_INIT_WAIT", "IDLE"), v  # negotiated over TCP
        assert v["violations"] == {}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tcp", "127.0.0.1:0"], "--insecure"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--tcp", "127.0.0.1:0", "--token-secret-file", "/nonexistent/secret"], "cannot read the token secret"),
    ],
)
def test_configurations_that_authenticate_nobody_are_refused(tmp_path: Path, flags: list[str], message: str) -> None:
    run = hvdm("run", "--db", str(tmp_path / "hvdm.db"), "--socket", "", *flags, "--duration", "1")
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "hvdm.db").exists()


def test_gateway_command_refuses_plain_tcp_before_connecting_to_kafka() -> None:
    run = hvdm("gateway", "--broker", "kafka://127.0.0.1:1", "--tcp", "127.0.0.1:0")
    assert run.returncode == 2
    assert "--insecure" in run.stderr and "Traceback" not in run.stderr
