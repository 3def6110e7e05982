"""Issue 9 §4: one writer per embedded log. A second ``hvdm run`` / ``hvdm engine --db`` and a
``--fresh`` on a log in use are refused with one line naming the holder's pid, the holder runs on
unharmed, readers are not held back, and a writer killed with ``kill -9`` leaves no stale lock."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from services.event_log.writer_lock import LogInUse, LogLockError, WriterLock, lock_path
from tests.faults.run_process import audit_json, hvdm, read_only, start_hvdm, wait_until


def _inbox_records(db: Path) -> int:
    if not db.exists():
        return 0
    con = read_only(db)
    try:
        row = con.execute("SELECT COALESCE(MAX(pos), 0) FROM inbox").fetchone()
        return int(row[0])
    except sqlite3.OperationalError:  # the writer has not created its tables yet
        return 0
    finally:
        con.close()


def _lock_text(db: Path) -> str:
    path = lock_path(db)
    return path.read_text() if path.exists() else ""


def _start_writer(tmp_path: Path, db: Path) -> subprocess.Popen[str]:
    """A real ``hvdm run`` with one simulated guest, running until signalled; returns once it
    holds the lock and has written to the log."""
    proc = start_hvdm(
        "run", "--db", str(db), "--socket", str(tmp_path / "first.sock"), "--guests", "1",
        "--speed", "20", "--progress-interval", "0",
    )  # fmt: skip
    wait_until(
        lambda: proc.poll() is not None or _lock_text(db).strip() == str(proc.pid),
        what="the first run holding the lock",
    )
    assert proc.poll() is None, proc.communicate()
    wait_until(lambda: _inbox_records(db) > 0, what="the first run writing its log")
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    first = _start_writer(tmp_path, db)
    try:
        refusal = f"hvdm: error: run: log {db} is in use by pid {first.pid}\n"
        second_sock = tmp_path / "second.sock"
        second = hvdm("run", "--db", str(db), "--socket", str(second_sock), "--guests", "1", "--duration", "1")
        assert second.returncode == 1 and second.stderr == refusal, second.stderr
        assert second.stdout == "" and not second_sock.exists()

        engine = hvdm("engine", "--db", str(db), "--exit-when-idle")
        assert engine.returncode == 1, engine.stderr
        assert engine.stderr == f"hvdm: error: engine: log {db} is in use by pid {first.pid}\n"

        # Readers do not take the lock.
        audit = hvdm("audit", "--db", str(db), "--json")
        assert audit.returncode in (0, 3), audit.stderr

        # The first keeps running and writing: its time still advances after the refusals.
        before = _inbox_records(db)
        wait_until(lambda: _inbox_records(db) > before, what="the first run still ticking")
        assert first.poll() is None
    finally:
        out = _stop(first)
    assert "summary:" in out and "vm1" in out
    doc = audit_json(db)
    assert doc["replay_matches"] is True and sorted(doc["vms"]) == ["vm1"]
    assert lock_path(db).read_text() == ""  # released: no pid of a process that no longer holds it


def test_fresh_is_refused_while_the_log_is_in_use(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    first = _start_writer(tmp_path, db)
    try:
        fresh = hvdm("run", "--db", str(db), "--socket", str(tmp_path / "second.sock"), "--fresh", "--duration", "1")
        assert fresh.returncode == 1, fresh.stderr
        assert fresh.stderr == f"hvdm: error: run: log {db} is in use by pid {first.pid}\n"
        assert "moved" not in fresh.stdout and not list(tmp_path.glob("*.bak"))
        before = _inbox_records(db)
        wait_until(lambda: _inbox_records(db) > before, what="the first run still writing the same file")
        assert first.poll() is None
    finally:
        _stop(first)
    assert audit_json(db)["replay_matches"] is True
    # Once the holder has stopped, --fresh goes through.
    again = hvdm("run", "--db", str(db), "--socket", str(tmp_path / "second.sock"), "--fresh", "--duration", "0.3")
    assert again.returncode == 0, again.stderr
    (backup,) = tmp_path.glob("hvdm.db.*.bak")
    assert sorted(audit_json(backup)["vms"]) == ["vm1"]


def test_the_lock_dies_with_a_killed_writer(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    first = _start_writer(tmp_path, db)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert lock_path(db).read_text().strip() == str(first.pid)  # the file remains, the lock does not

    # The killed run's socket is stale now; the next run removes it and continues the log.
    args = ["run", "--db", str(db), "--socket", str(tmp_path / "first.sock"), "--progress-interval", "0"]
    again = hvdm(*args, "--duration", "0.5", "--speed", "20")
    assert again.returncode == 0, again.stderr
    assert f"continuing the existing log {db}: 1 VM," in again.stdout
    engine = hvdm("engine", "--db", str(db), "--exit-when-idle")
    assert engine.returncode == 0, engine.stderr
    assert audit_json(db)["replay_matches"] is True


def test_the_lock_in_process(tmp_path: Path) -> None:
    """Each ``acquire`` is its own open file description, so even one process is refused a second
    lock (two ``EmbeddedService``s in one process would be two writers as well)."""
    db = tmp_path / "hvdm.db"
    with WriterLock.acquire(db) as held:
        assert held.held and lock_path(db).read_text() == f"{os.getpid()}\n"
        with pytest.raises(LogInUse) as refused:
            WriterLock.acquire(db)
        assert refused.value.pid == os.getpid()
        assert str(refused.value) == f"log {db} is in use by pid {os.getpid()}"
    assert not held.held and lock_path(db).read_text() == ""
    WriterLock.acquire(db).release()  # free again
    held.release()  # idempotent

    lock_path(db).write_text("")  # a holder that has not written its pid yet
    with WriterLock.acquire(db):
        lock_path(db).write_text("")
        with pytest.raises(LogInUse, match="in use by another process"):
            WriterLock.acquire(db)

    with pytest.raises(LogLockError, match="cannot open the lock file"):
        WriterLock.acquire(tmp_path / "missing-dir" / "hvdm.db")


def test_readers_and_refusals_create_nothing_next_to_a_foreign_file(tmp_path: Path) -> None:
    other = tmp_path / "notes.db"
    other.write_text("not a log")
    run = ("run", "--socket", str(tmp_path / "gw.sock"), "--duration", "0.3")
    for command in (run, ("engine", "--exit-when-idle")):
        result = hvdm(command[0], "--db", str(other), *command[1:])
        assert result.returncode == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
