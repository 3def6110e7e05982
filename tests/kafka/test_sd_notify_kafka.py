"""sd_notify in the Kafka deployment: ``hvdm gateway`` and ``hvdm engine --broker`` on a real tansu.

Each process gets its own notify socket (bound by the test, as systemd binds its own). Checked:
READY=1 arrives only once the process serves (the gateway's socket accepts guests and its /metrics
answers; the worker has joined the group, recovered its partitions and answers /-/ready), watchdog
pings follow from its loop, and SIGTERM brings STOPPING=1 before a clean exit.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.kafka_engine.tansu import LocalBroker
from tests.deploy.notify_socket import NotifySocket
from tests.kafka.test_metrics_prometheus import fetch
from tests.metrics.prometheus_server import free_port

pytestmark = [pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 400_000


def start(args: list[str], notify: NotifySocket, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services", *args],
            cwd=ROOT, env=notify.env(WATCHDOG_USEC), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def check_lifecycle(proc: subprocess.Popen[bytes], notify: NotifySocket, log: Path, serves: list[str]) -> None:
    """After READY=1: pings, then SIGTERM -> STOPPING=1 -> exit 0."""
    started = time.monotonic()
    for _ in range(3):
        notify.wait_for("WATCHDOG=1", 3, alive=lambda: proc.poll() is None)
    assert time.monotonic() - started < 3.0
    while notify.receive(0.01) is not None:  # the kernel queues 10 datagrams: room for STOPPING=1
        pass
    proc.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING=1", 30)
    assert proc.wait(40) == 0, log.read_text(errors="replace")[-3000:]
    assert "systemd_notify_failed" not in log.read_text(errors="replace")
    assert serves


def test_gateway_and_engine_worker_tell_systemd_when_they_serve(
    broker: LocalBroker, prefix: str, tmp_path: Path
) -> None:
    url = f"{broker.url}?prefix={prefix}&partitions=2&session_timeout=3&heartbeat=0.5&rebalance_timeout=3"
    sock, gw_port, kw_port = tmp_path / "gw.sock", free_port(), free_port()
    gw_notify, kw_notify = NotifySocket(tmp_path / "gw.notify"), NotifySocket(tmp_path / "kw.notify")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        gw_log, kw_log = tmp_path / "gateway.log", tmp_path / "engine.log"
        gateway = start(
            ["gateway", "--broker", url, "--socket", str(sock), "--metrics-port", str(gw_port)], gw_notify, gw_log
        )
        procs.append(gateway)
        ready = gw_notify.wait_for("READY=1", 90, alive=lambda: gateway.poll() is None)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as guest:
            guest.connect(str(sock))
        assert fetch(f"http://127.0.0.1:{gw_port}/metrics")[0] == 200
        assert "STATUS=serving: 0 guests connected" in ready, ready

        worker = start(["engine", "--broker", url, "--metrics-port", str(kw_port)], kw_notify, kw_log)
        procs.append(worker)
        ready = kw_notify.wait_for("READY=1", 120, alive=lambda: worker.poll() is None)
        # READY=1 means joined and recovered: /-/ready says the same at that moment.
        assert fetch(f"http://127.0.0.1:{kw_port}/-/ready")[0] == 200
        assert "STATUS=serving: 2 partitions owned (2 recovered)" in ready, ready
        assert kw_notify.messages[0][1] == ready, "nothing is sent before READY=1"

        check_lifecycle(worker, kw_notify, kw_log, ["engine"])
        check_lifecycle(gateway, gw_notify, gw_log, ["gateway"])
        assert not sock.exists()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        gw_notify.close()
        kw_notify.close()
