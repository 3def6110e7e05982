"""A real Linux guest with virtio-balloon under Debian's QEMU, managed through hvdm end to end.

``hvdm run --qemu`` attaches the guest's QMP monitor; the test drives it only through hvdm's own
interfaces (``hvdm ctl`` on hvdm's QMP socket, a real Prometheus scrape, ``hvdm audit --json``)
and checks the result in the guest itself (its MemTotal, read on the serial console) and in QEMU
(``query-balloon`` once hvdm let go of the monitor). Then QEMU is killed under hvdm and a new one
started at the same socket: the VM is detached, re-attached, and the standing target delivered.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from services.dm_engine.records import stored_event_json
from tests.metrics.prometheus_server import free_port, prometheus_binary, start_prometheus
from tests.realguest.kit import Rig, hvdm, start_hvdm, wait_for

# Boots real guests (and rig setup may apt-get install on a fresh machine): beyond the 300 s default.
pytestmark = [pytest.mark.realguest, pytest.mark.timeout(900)]

MIB = 1 << 20
VM = "virtio-qmp"  # no -name: the socket file's name


def qmp(path: str, command: str, args: dict[str, Any] | None = None) -> Any:
    async def go() -> Any:
        client = QMPClient("test")
        await asyncio.wait_for(client.connect(path), 10)
        try:
            return await client.execute(command, args)
        finally:
            await client.disconnect()

    return asyncio.run(go())


def mem_total_kib(rig: Rig) -> int:
    out = rig.exec("virtio", "grep MemTotal /proc/meminfo")
    m = re.search(r"MemTotal:\s+(\d+) kB", out)
    assert m, out
    return int(m[1])


def test_virtio_guest_through_hvdm(rig: Rig, tmp_path: Path) -> None:
    if prometheus_binary() is None:
        pytest.skip("needs the prometheus binary (Debian package 'prometheus'; scripts/test installs it)")
    info = rig.up("virtio", "--mem", "2G")
    qmp_dir = tmp_path / "qmp"
    db = tmp_path / "hvdm.db"
    metrics_port = free_port()
    log = tmp_path / "hvdm.log"
    proc = start_hvdm(
        "run",
        "--db",
        str(db),
        "--socket",
        "",
        "--qemu",
        info["qmp"],
        "--qemu-poll",
        "0.5",
        "--qmp-dir",
        str(qmp_dir),
        "--metrics-port",
        str(metrics_port),
        "--progress-interval",
        "0",
        "--duration",
        "400",
        log=log,
    )
    prom = None
    try:
        sock = qmp_dir / f"{VM}.sock"
        wait_for("hvdm's QMP socket for the real VM", sock.exists, 60, log)
        # Status: virtio guest-stats, mapped to hv-balloon's status report on hvdm's socket.
        status = wait_for(
            "a guest status report",
            lambda: _try_qmp(str(sock), "query-hv-balloon-status-report"),
            60,
            log,
        )
        assert 0 < status["available"] <= 2 << 30 and status["committed"] > 0
        full = mem_total_kib(rig)

        prom = start_prometheus(tmp_path / "prometheus", f"127.0.0.1:{metrics_port}")

        done = hvdm("ctl", "--qmp-dir", str(qmp_dir), VM, "balloon", "1024")
        assert done.returncode == 0, done.stderr
        wait_for(
            "the real guest at 1 GiB (hvdm's view)",
            lambda: qmp(str(sock), "query-balloon")["actual"] == 1024 * MIB,
            120,
            log,
        )
        # The guest itself gave the memory up: virtio_balloon takes it out of MemTotal.
        shrunk = mem_total_kib(rig)
        assert full - shrunk >= 1000 * 1024, (full, shrunk)

        prom.wait_until(
            "Prometheus to scrape the real VM at 1 GiB",
            lambda: _prom_value(prom, f'hvdm_vm_current_bytes{{vm="{VM}"}}') == 1024 * MIB,
        )
        assert _prom_value(prom, f'hvdm_vm_boot_bytes{{vm="{VM}"}}') == 2048 * MIB
        assert _prom_value(prom, f'hvdm_vm_target_bytes{{vm="{VM}"}}') == 1024 * MIB
        prom.wait_until(
            "status reports counted", lambda: (_prom_value(prom, f'hvdm_vm_status_reports_total{{vm="{VM}"}}') or 0) > 0
        )

        done = hvdm("ctl", "--qmp-dir", str(qmp_dir), VM, "balloon", "2048")
        assert done.returncode == 0, done.stderr
        wait_for("grown back", lambda: qmp(str(sock), "query-balloon")["actual"] == 2048 * MIB, 120, log)
        assert mem_total_kib(rig) >= full - 1024

        # QEMU killed under hvdm: detached; a new QEMU at the same socket is re-attached and gets
        # the standing target (set while attached, so the new QEMU is shrunk to it).
        done = hvdm("ctl", "--qmp-dir", str(qmp_dir), VM, "balloon", "1536")
        assert done.returncode == 0, done.stderr
        wait_for("1.5 GiB", lambda: qmp(str(sock), "query-balloon")["actual"] == 1536 * MIB, 120, log)
        rig.down("virtio")
        wait_for("detached", lambda: "detached" in log.read_text(), 30, log)
        info = rig.up("virtio", "--mem", "2G")
        wait_for(
            "re-attached and shrunk to the standing target",
            lambda: qmp(str(sock), "query-balloon")["actual"] == 1536 * MIB,
            120,
            log,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
            proc.wait()
        if prom is not None:
            prom.stop()

    try:
        actual = qmp(info["qmp"], "query-balloon")["actual"]  # hvdm let go: QEMU's own answer
        report = json.loads(hvdm("audit", "--db", str(db), "--json").stdout)
        assert report["replay_matches"] is True
        vm = report["vms"][VM]
        assert vm["replay_matches"] is True
        assert vm["current_bytes"] == actual == 1536 * MIB
        kinds = [json.loads(line)["type"] for line in _events(db, VM)]
        assert kinds.count("QemuAttached") == 2 and "QemuDetached" in kinds
        assert kinds.count("QemuTargetReached") >= 3
        qemu = vm["qemu"]
        assert qemu["device"] == "virtio-balloon" and qemu["findings"] == []
        assert [t["outcome"] for t in qemu["targets"]][:3] == ["reached", "reached", "reached"]
    finally:
        rig.down("virtio")


def _try_qmp(path: str, command: str) -> Any:
    try:
        return qmp(path, command)
    except Exception:
        return None


def _prom_value(prom: Any, expr: str) -> float | None:
    result = prom.api("query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def _events(db: Path, vm: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT record FROM events WHERE vm = ? ORDER BY seq", (vm,))
        return [stored_event_json(row[0]) for row in rows]
