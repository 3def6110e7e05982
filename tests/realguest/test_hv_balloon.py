"""A real Linux guest speaking the Dynamic Memory protocol to a real QEMU 10 hv-balloon (nested).

One guest (``rig hv-up --variant hotadd``: 1 GiB boot memory plus a 2 GiB memory backend) serves
every step, because the nested guest needs about 65 s before it does anything: hvdm attaches
while the guest is still in QEMU's 50 s post-init wait, follows QEMU's hv_balloon trace, sees the
guest's status reports, shrinks the guest by 50 % and grows it back, hot-adds 2 GiB above boot
size, then asks for less than Linux will give (its balloon floor) and records the stalled target.
The page-level set built from the trace must equal what QEMU reports, and the audit must replay.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from services.dm_engine.records import stored_event_json
from tests.realguest.kit import Rig, hvdm, start_hvdm, wait_for
from tests.realguest.test_virtio import qmp

# Boots real guests (and rig setup may apt-get install on a fresh machine): beyond the 300 s default.
# Room for one retried boot (Rig.up) on top of the ~3 min the test takes.
pytestmark = [pytest.mark.realguest, pytest.mark.timeout(1200)]

MIB = 1 << 20
VM = "l2-qmp"


def events(db: Path) -> list[dict[str, Any]]:
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT record FROM events WHERE vm = ? ORDER BY seq", (VM,)).fetchall()
    except sqlite3.OperationalError:
        return []  # hvdm has not created its tables yet
    return [json.loads(stored_event_json(r[0])) for r in rows]


def kinds(db: Path) -> list[str]:
    return [e["type"] for e in events(db)] if db.exists() else []


def floor_stall(db: Path) -> bool:
    stalls = [e for e in events(db) if e["type"] == "QemuTargetStalled"]
    return (
        bool(stalls)
        and stalls[-1]["actual_pages"] * 4096 < 1024 * MIB
        and stalls[-1]["target_pages"] * 4096 == 64 * MIB
    )


def test_hv_balloon_guest_through_hvdm(rig: Rig, tmp_path: Path) -> None:
    info = rig.up("hv", "--variant", "hotadd")
    qmp_dir = tmp_path / "qmp"
    db = tmp_path / "hvdm.db"
    log = tmp_path / "hvdm.log"
    proc = start_hvdm(
        "run",
        "--db",
        str(db),
        "--socket",
        "",
        "--qemu",
        info["qmp"],
        "--qemu-trace",
        info["trace_log"],
        "--qemu-poll",
        "0.5",
        "--qmp-dir",
        str(qmp_dir),
        "--progress-interval",
        "0",
        "--duration",
        "500",
        log=log,
    )
    sock = str(qmp_dir / f"{VM}.sock")
    try:
        # Attached during QEMU's post-init wait (hv-up returns when the driver binds).
        wait_for("attach", lambda: "QemuAttached" in kinds(db), 60, log)
        attached = next(e for e in events(db) if e["type"] == "QemuAttached")
        assert attached["device"] == "hv-balloon" and attached["qemu_version"] == "10.0.13"
        assert attached["boot_pages"] * 4096 == 1024 * MIB and attached["maxmem_pages"] * 4096 == 3072 * MIB
        trace = Path(info["trace_log"]).read_text()
        assert "S_POST_INIT_WAIT" in trace and "-> S_IDLE" not in trace.split("S_POST_INIT_WAIT", 1)[1]

        # A target set during the post-init wait is kept by QEMU and carried out when it ends.
        started = time.monotonic()
        assert hvdm("ctl", "--qmp-dir", str(qmp_dir), VM, "balloon", "512").returncode == 0
        wait_for("shrunk by 50 %", lambda: qmp(sock, "query-balloon")["actual"] == 512 * MIB, 240, log)
        assert time.monotonic() - started > 5  # it did wait for the post-init wait

        # Status reports flow (the guest's first one comes ~45 s after the driver binds).
        wait_for("status reports", lambda: kinds(db).count("StatusReported") >= 3, 90, log)
        status = qmp(sock, "query-hv-balloon-status-report")
        assert status["committed"] > 0 and status["available"] > 0

        assert hvdm("ctl", "--qmp-dir", str(qmp_dir), VM, "balloon", "1024").returncode == 0
        wait_for("grown back", lambda: qmp(sock, "query-balloon")["actual"] == 1024 * MIB, 120, log)

        # Hot-add above boot size from the memory backend.
        assert hvdm("ctl", "--qmp-dir", str(qmp_dir), VM, "balloon", "3072").returncode == 0
        wait_for("hot-added to 3 GiB", lambda: qmp(sock, "query-balloon")["actual"] == 3072 * MIB, 120, log)
        wait_for(
            "the trace's hot-add",
            lambda: any(e["type"] == "QemuPagesTraced" and e["op"] == "hot_added" for e in events(db)),
            60,
            log,
        )

        # Less than Linux gives (its balloon floor): the target stalls and is recorded.
        assert hvdm("ctl", "--qmp-dir", str(qmp_dir), VM, "balloon", "64").returncode == 0
        # A slow guest may pause long enough to be recorded stalled on its way down; the floor
        # is the stall below 1 GiB after which nothing moves any more.
        wait_for("the stall at the guest's floor", lambda: floor_stall(db), 400, log)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
            proc.wait()

    try:
        actual = qmp(info["qmp"], "query-balloon")["actual"]  # QEMU's own answer (through the kit's relay)
        report = json.loads(hvdm("audit", "--db", str(db), "--json").stdout)
        assert report["replay_matches"] is True
        vm = report["vms"][VM]
        assert vm["current_bytes"] == actual
        assert 64 * MIB < actual < 1024 * MIB
        q = vm["qemu"]
        assert {f["finding"] for f in q["findings"]} == {"TARGET_STALLED"}
        assert q["findings"][-1]["target_bytes"] == 64 * MIB and q["findings"][-1]["actual_bytes"] < 1024 * MIB
        # The page-level account from QEMU's trace agrees exactly with QEMU's reported size.
        shadow = q["shadow"]
        assert shadow["divergence_pages"] == 0, shadow
        assert shadow["hot_added_bytes"] == 2048 * MIB
        assert 1024 * MIB + shadow["hot_added_bytes"] - shadow["ballooned_bytes"] == actual
        assert [t["outcome"] for t in q["targets"]][:3] == ["reached", "reached", "reached"]
    finally:
        rig.down("hv")
