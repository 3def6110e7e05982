"""sd_notify: ``hvdm run`` tells a real notify socket READY=1 only once it serves, pings the watchdog
from its loop, says STOPPING=1 on SIGTERM; a broken ``$NOTIFY_SOCKET`` never stops the service.

The protocol side (``services.systemd_notify``) is tested with real datagram sockets too: abstract
addresses, a peer that never reads (no blocking), a loop that reports itself unhealthy (no pings).
The Kafka services (``hvdm gateway``, ``hvdm engine --broker``) are in tests/kafka/test_sd_notify_kafka.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from services.systemd_notify import Notifier, notify_address, watchdog_interval
from tests.deploy.notify_socket import NotifySocket
from tests.metrics.prometheus_server import free_port

ROOT = Path(__file__).resolve().parents[2]
#: 0.3 s watchdog: pings every 0.15 s.
WATCHDOG_USEC = 300_000


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except OSError as e:
        return int(getattr(e, "code", 0) or 0)


def start_run(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[str], Path, int]:
    sock, port = tmp_path / "gw.sock", free_port()
    args = ["run", "--db", str(tmp_path / "hvdm.db"), "--socket", str(sock), "--qmp-dir", str(tmp_path / "qmp")]
    args += ["--metrics-port", str(port), "--progress-interval", "0", *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, sock, port


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---------------------------------------------------------------------------------------- hvdm run, for real
@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_run_is_ready_only_once_it_serves_pings_the_watchdog_and_says_stopping(tmp_path: Path, abstract: bool) -> None:
    notify = NotifySocket(abstract=f"hvdm-test-{uuid.uuid4().hex}") if abstract else NotifySocket(tmp_path / "n")
    proc, sock, port = start_run(tmp_path, notify.env(WATCHDOG_USEC))
    try:
        ready = notify.wait_for("READY=1", 60, alive=lambda: proc.poll() is None)
        # Everything the service serves answers the moment READY=1 arrives.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as guest:
            guest.connect(str(sock))
        assert http_status(f"http://127.0.0.1:{port}/metrics") == 200
        assert http_status(f"http://127.0.0.1:{port}/-/ready") == 200
        assert notify.messages[0][1] == ready, "nothing is sent before READY=1"
        assert any(line.startswith("STATUS=serving: 0 VMs") for line in ready.splitlines()), ready
        # Watchdog pings, about every 0.15 s (half of WATCHDOG_USEC), from the service's loop.
        started = time.monotonic()
        for _ in range(4):
            notify.wait_for("WATCHDOG=1", 2)
        assert time.monotonic() - started < 2.0
        proc.send_signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING=1", 20)
        assert "SIGTERM received" in stopping
        _out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)
        notify.close()
    assert proc.returncode == 0, err
    assert "systemd_notify_failed" not in err
    # Once STOPPING=1 is out, no watchdog ping follows it.
    texts = [m for _, m in notify.messages]
    after = texts[next(i for i, m in enumerate(texts) if "STOPPING=1" in m) :]
    assert not any("WATCHDOG=1" in m for m in after[1:]), after


@pytest.mark.parametrize("kind", ["missing", "regular_file", "relative", "stream_socket", "hostile_watchdog"])
def test_a_broken_notify_socket_is_logged_once_and_the_service_runs(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "notify"
    listener: socket.socket | None = None
    watchdog_usec = "100000"
    if kind in ("missing", "hostile_watchdog"):
        value = str(tmp_path / "no" / "such" / "socket")
        if kind == "hostile_watchdog":
            watchdog_usec = "9" * 5000  # beyond int()'s digit limit
    elif kind == "regular_file":
        target.write_text("not a socket")
        value = str(target)
    elif kind == "relative":
        value = "notify.sock"
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(target))
        listener.listen()
        value = str(target)
    env = dict(os.environ, NOTIFY_SOCKET=value, WATCHDOG_USEC=watchdog_usec)
    proc, sock, port = start_run(tmp_path, env, "--guests", "1", "--speed", "20")
    try:
        deadline = time.monotonic() + 60
        while http_status(f"http://127.0.0.1:{port}/-/ready") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
        time.sleep(1.0)  # ~10 watchdog pings that all fail
        assert proc.poll() is None and sock.exists()
        out, err = stop(proc)
    finally:
        stop(proc)
        if listener is not None:
            listener.close()
    assert proc.returncode == 0, err
    assert err.count("systemd_notify_failed") == 1, err
    assert "Traceback" not in err
    assert "summary:" in out and "vm1" in out


# ---------------------------------------------------------------------------------------- the protocol
def test_addresses_and_watchdog_settings() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@x") == b"\0x"
    for bad in ("relative/path", "@", "", "/a\0b", "/" + "x" * 200, "vsock:2:1"):
        with pytest.raises(ValueError):
            notify_address(bad)
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 1) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 1) == 15.0
    other_pid = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}
    for off in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, other_pid):
        assert watchdog_interval(off, 1) is None
    assert watchdog_interval({"WATCHDOG_USEC": str(2**64 - 2)}, 1) == (2**64 - 2) / 2e6
    for hostile in ("nan", "1e6", "1.5", " 100", "\u0661\u0662\u0663", str(2**64 - 1), str(2**64), "9" * 5000):
        assert watchdog_interval({"WATCHDOG_USEC": hostile}, 1) is None, hostile


def test_the_environment_is_consumed_so_children_do_not_speak_for_the_service(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(env)
    assert notifier.enabled and notifier.watchdog_seconds == 0.5 and env == {}
    assert not Notifier.from_environ({}).enabled


def test_a_peer_that_never_reads_does_not_block_the_sender(tmp_path: Path) -> None:
    peer = NotifySocket(tmp_path / "n")
    notifier = Notifier(str(tmp_path / "n"))
    try:
        started = time.monotonic()
        results = [notifier.send("STATUS=" + "x" * 1000) for _ in range(5000)]
        assert time.monotonic() - started < 5.0
        assert results[0] is True and results[-1] is False  # the queue filled up: dropped, not waited for
        assert notifier.dropped > 0 and notifier.failures == 0  # not a fault of the socket: nothing logged
    finally:
        notifier.close()
        peer.close()


def test_no_pings_while_the_service_says_it_is_unhealthy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    peer = NotifySocket(tmp_path / "n")
    notifier = Notifier(str(tmp_path / "n"), watchdog_seconds=0.02)
    healthy = True

    async def scenario() -> None:
        nonlocal healthy
        task = asyncio.create_task(notifier.keep_alive(lambda: "working", healthy=lambda: healthy))
        await asyncio.sleep(0.2)
        healthy = False
        await asyncio.sleep(0.05)  # a ping already on its way may land
        drain(peer)
        count = len(peer.lines("WATCHDOG=1"))
        await asyncio.sleep(0.3)
        drain(peer)
        assert len(peer.lines("WATCHDOG=1")) == count
        task.cancel()

    def drain(p: NotifySocket) -> None:
        while p.receive(0.01) is not None:
            pass

    try:
        asyncio.run(scenario())
        assert len(peer.lines("WATCHDOG=1")) >= 5 and peer.lines("STATUS=") == ["STATUS=working"]
    finally:
        notifier.close()
        peer.close()


def test_failures_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hvdm.systemd")
    notifier = Notifier(str(tmp_path / "missing"))
    for _ in range(10):
        assert notifier.send("WATCHDOG=1") is False
    notifier.close()
    assert notifier.failures == 10
    assert [r.getMessage().split()[0] for r in caplog.records] == ["event=systemd_notify_failed"]


def test_a_blocked_loop_stops_pinging(tmp_path: Path) -> None:
    """The pings come from the service's own loop: a call that hangs it (here 0.6 s of
    ``time.sleep`` on the loop, as a stuck engine batch would) leaves a gap systemd notices."""
    peer = NotifySocket(tmp_path / "n")
    notifier = Notifier(str(tmp_path / "n"), watchdog_seconds=0.02)

    async def scenario() -> None:
        task = asyncio.create_task(notifier.keep_alive())
        await asyncio.sleep(0.2)
        time.sleep(0.6)  # the loop is stuck
        await asyncio.sleep(0.2)
        task.cancel()

    done = threading.Event()

    def receive() -> None:  # on its own thread, so each ping is timed when it arrives
        while not done.is_set():
            peer.receive(0.05)

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        asyncio.run(scenario())
        done.set()
        receiver.join(5)
        times = [t for t, m in peer.messages if m == "WATCHDOG=1\n"]
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        assert len(times) >= 10 and gaps[-1] >= 0.5 and gaps[-2] < 0.2, gaps[-3:]
    finally:
        done.set()
        notifier.close()
        peer.close()
