"""hvdm writes only to hvdm logs, and audits read logs on read-only media.

A file that is not an hvdm log -- another application's SQLite database, a file with another
``application_id``, something that is not SQLite at all -- is refused by ``hvdm run`` and
``hvdm engine`` without a byte changed. An empty file or a log written before the marker existed
is taken (and marked). ``hvdm audit`` reads a cleanly closed log from a read-only mount
(``immutable``), a crashed one whose WAL came along, and refuses, with a reason, the one case it
cannot read faithfully.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.event_log.sqlite_log import APPLICATION_ID, NotAnHvdmLog, SqliteLog
from tests.faults.disk import small_tmpfs
from tests.faults.run_process import audit_json, hvdm


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def application_id(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA application_id").fetchone()[0])


def other_app_db(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users (name) VALUES ('alice')")
        db.commit()
    return path


def other_app_id_db(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA application_id = 1")  # empty, but claimed by another application
        db.commit()
    return path


def not_sqlite(path: Path) -> Path:
    path.write_text("key = value\n" * 100)
    return path


FOREIGN = {"other tables": other_app_db, "other application_id": other_app_id_db, "not SQLite": not_sqlite}


@pytest.mark.parametrize("make", FOREIGN.values(), ids=FOREIGN.keys())
def test_run_and_engine_refuse_a_file_that_is_not_an_hvdm_log(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    db = make(tmp_path / "app.db")
    before = digest(db)
    run = hvdm("run", "--db", str(db), "--socket", str(tmp_path / "gw.sock"), "--duration", "1")
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("hvdm: error: run:") and "Traceback" not in run.stderr
    engine = hvdm("engine", "--db", str(db), "--exit-when-idle")
    assert engine.returncode == 1 and "Traceback" not in engine.stderr
    assert digest(db) == before
    assert not Path(f"{db}-wal").exists()  # not even switched to WAL
    with pytest.raises(NotAnHvdmLog):
        SqliteLog(db)
    assert digest(db) == before


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotAnHvdmLog, match="not a regular file"):
        SqliteLog(tmp_path)


def test_an_empty_file_becomes_a_marked_log(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    db.touch()
    SqliteLog(db).close()
    assert application_id(db) == APPLICATION_ID


def test_a_log_from_before_the_marker_is_recognised_and_marked(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    run = hvdm(
        "run", "--db", str(db), "--socket", "", "--tcp", "127.0.0.1:0", "--insecure", "--guests", "1", "--duration", "1"
    )
    assert run.returncode == 0, run.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA application_id = 0")  # as an hvdm of before the marker left it
        conn.commit()
    run = hvdm("run", "--db", str(db), "--socket", "", "--tcp", "127.0.0.1:0", "--insecure", "--duration", "0.5")
    assert run.returncode == 0, run.stderr
    assert "continuing the existing log" in run.stdout
    assert application_id(db) == APPLICATION_ID
    assert audit_json(db)["replay_matches"] is True


# ------------------------------------------------------------------------------------------ read-only media
@contextlib.contextmanager
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "media", size="16m") as media:
        yield media


def remount(media: Path, mode: str) -> None:
    result = subprocess.run(["mount", "-o", f"remount,{mode}", str(media)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot remount {mode}: {result.stderr.strip()}")


def made_log(tmp_path: Path) -> Path:
    db = tmp_path / "hvdm.db"
    run = hvdm(
        "run", "--db", str(db), "--socket", "", "--tcp", "127.0.0.1:0", "--insecure", "--guests", "2", "--duration", "1"
    )
    assert run.returncode == 0, run.stderr
    return db


def test_audit_reads_a_cleanly_closed_log_on_read_only_media(tmp_path: Path) -> None:
    source = made_log(tmp_path)
    expected = audit_json(source)
    with read_only_mount(tmp_path) as media:
        shutil.copy(source, media / "hvdm.db")
        remount(media, "ro")
        report = audit_json(media / "hvdm.db")
        assert report["replay_matches"] is True
        assert report["events"] == expected["events"] and report["inbox_records"] == expected["inbox_records"]
        remount(media, "rw")


def test_audit_reads_a_crashed_log_with_its_wal_on_read_only_media(tmp_path: Path) -> None:
    source = made_log(tmp_path)
    with read_only_mount(tmp_path) as media:
        # A log copied while its writer was running: part of it is still in the WAL.
        log = SqliteLog(source)
        last = log.append_input("vm9", 0, {"type": "ChannelClosed", "tick": 0, "reason": "test"})
        for suffix in ("", "-wal", "-shm"):
            shutil.copy(f"{source}{suffix}", f"{media / 'hvdm.db'}{suffix}")
        log.close()
        assert (media / "hvdm.db-wal").stat().st_size > 0
        remount(media, "ro")
        result = hvdm("audit", "--db", str(media / "hvdm.db"), "--json")
        report = json.loads(result.stdout)
        # The WAL's commit is seen, not skipped: the input the engine has not consumed yet.
        assert report["inbox_high_watermark"] == last and report["unconsumed_inputs"] == 1, result.stderr
        assert report["replay_matches"] is True
        # Without its -shm the WAL cannot be read on read-only media: refused, not half-read.
        remount(media, "rw")
        (media / "hvdm.db-shm").unlink()
        remount(media, "ro")
        result = hvdm("audit", "--db", str(media / "hvdm.db"), "--json")
        assert result.returncode == 1 and "write-ahead log" in result.stderr, result.stderr
        remount(media, "rw")
