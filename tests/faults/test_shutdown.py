"""A clean stop, by SIGTERM as by SIGINT: channels closed in the log, sockets removed, a summary.

And a restart on an existing log says what it continues; ``--fresh`` moves the old log aside.
Everything through a real ``hvdm run`` child process and the log it leaves behind.
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import pytest

from tests.faults.run_process import audit_json, hvdm, read_only, start_hvdm, wait_until


def channel_closes(db: Path) -> dict[str, list[str]]:
    with contextlib.closing(read_only(db)) as conn:
        rows = conn.execute("SELECT vm, record FROM inbox WHERE kind = 'ChannelClosed' ORDER BY pos").fetchall()
    closes: dict[str, list[str]] = {}
    for vm, record in rows:
        closes.setdefault(vm, []).append(json.loads(record)["reason"])
    return closes


def idle_vms(db: Path) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(read_only(db)) as conn:
        try:
            return int(
                conn.execute("SELECT COUNT(DISTINCT vm) FROM events WHERE kind = 'CapabilitiesAccepted'").fetchone()[0]
            )
        except Exception:
            return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_cleanly_and_closes_every_channel(tmp_path: Path, sig: signal.Signals) -> None:
    db, sock, qmp_dir = tmp_path / "hvdm.db", tmp_path / "gw.sock", tmp_path / "qmp"
    proc = start_hvdm(
        "run",
        "--db",
        str(db),
        "--socket",
        str(sock),
        "--qmp-dir",
        str(qmp_dir),
        "--guests",
        "2",
        "--speed",
        "20",
        "--progress-interval",
        "0",
        "--json",
    )
    try:
        wait_until(lambda: idle_vms(db) == 2, what="both guests through the handshake")
        assert sock.exists() and sorted(p.name for p in qmp_dir.iterdir()) == ["vm1.sock", "vm2.sock"]
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["stopped_by"] == sig.name and sorted(summary["vms"]) == ["vm1", "vm2"]
    assert "Traceback" not in stderr
    assert not sock.exists() and list(qmp_dir.iterdir()) == []
    assert not Path(f"{db}-wal").exists()  # closed cleanly: checkpointed into one file
    # Every channel the guests had open is closed in the log, as a host shutdown, once.
    assert channel_closes(db) == {"vm1": ["host shutdown"], "vm2": ["host shutdown"]}
    report = audit_json(db)
    assert report["replay_matches"] is True
    assert report["consumed_position"] == report["inbox_high_watermark"]
    assert {vm: v["protocol_state"] for vm, v in report["vms"].items()} == {"vm1": "CLOSED", "vm2": "CLOSED"}


def test_an_existing_log_is_continued_and_fresh_moves_it_aside(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    args = ["run", "--db", str(db), "--socket", str(tmp_path / "gw.sock"), "--progress-interval", "0"]
    first = hvdm(*args, "--guests", "2", "--duration", "1")
    assert first.returncode == 0, first.stderr
    assert f"new log {db}" in first.stdout
    records = audit_json(db)["inbox_records"]

    again = hvdm(*args, "--duration", "0.3")
    assert again.returncode == 0, again.stderr
    assert f"continuing the existing log {db}: 2 VMs, {records} inbox records" in again.stdout

    fresh = hvdm(*args, "--duration", "0.3", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    (backup,) = tmp_path.glob("hvdm.db.*.bak")
    assert f"moved the old log {db} to {backup}" in fresh.stdout and f"new log {db}" in fresh.stdout
    assert audit_json(db)["vms"] == {}
    old = audit_json(backup)
    assert sorted(old["vms"]) == ["vm1", "vm2"] and old["replay_matches"] is True


def test_fresh_refuses_to_move_a_foreign_file(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    other.write_text("not a log")
    result = hvdm("run", "--db", str(other), "--socket", str(tmp_path / "gw.sock"), "--fresh", "--duration", "0.3")
    assert result.returncode == 1 and "not an SQLite database" in result.stderr, result.stderr
    assert other.read_text() == "not a log" and not list(tmp_path.glob("*.bak"))


def test_sigterm_right_after_the_banner_stops_cleanly(tmp_path: Path) -> None:
    """No guest ever connected: the stop still removes the socket and leaves an auditable log."""
    db = tmp_path / "hvdm.db"
    proc = start_hvdm("run", "--db", str(db), "--socket", str(tmp_path / "gw.sock"), "--progress-interval", "0")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("hvdm: embedded service on")
        proc.send_signal(signal.SIGTERM)
        _stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert not (tmp_path / "gw.sock").exists()
    assert audit_json(db)["replay_matches"] is True
