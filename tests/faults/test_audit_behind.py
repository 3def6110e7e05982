"""Issue 9 section 1: ``hvdm audit`` reports, and exits non-zero for, a log whose consumed position
is behind its inbox. The replay stops at the consumed position, so before the fix an engine stuck
on one record left a log that audited as ``replay_matches: true`` with exit status 0.

Real processes throughout: ``hvdm run`` writes the log, an input is appended while no engine runs
(as a gateway does while the engine is down), ``hvdm audit`` says BEHIND with exit status 3, and
after ``hvdm engine --exit-when-idle`` has consumed it the audit is clean again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.event_log.sqlite_log import SqliteLog

ROOT = Path(__file__).resolve().parents[2]


def hvdm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_audit_exits_non_zero_while_the_inbox_is_not_consumed(tmp_path: Path) -> None:
    db = tmp_path / "hvdm.db"
    run = hvdm(
        "run", "--db", db, "--socket", tmp_path / "gw.sock", "--guests", "1", "--duration", "1",
        "--speed", "50", "--progress-interval", "0", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    clean = hvdm("audit", "--db", db, "--json")
    assert clean.returncode == 0, clean.stderr
    doc = json.loads(clean.stdout)
    assert doc["consumed_behind_inbox"] is False and doc["unconsumed_inputs"] == 0

    log = SqliteLog(db)
    try:
        log.append_input("vm1", log.inbox_high_watermark(), {"type": "SetTarget", "tick": 0, "target_bytes": 2 << 30})
    finally:
        log.close()
    behind = hvdm("audit", "--db", db, "--json")
    assert behind.returncode == 3, behind.stderr
    doc = json.loads(behind.stdout)
    assert doc["replay_matches"] is True  # what was consumed still replays exactly ...
    assert doc["consumed_behind_inbox"] is True and doc["unconsumed_inputs"] == 1  # ... but not all was
    text = hvdm("audit", "--db", db)
    assert text.returncode == 3 and "BEHIND: 1 inbox records" in text.stdout

    engine = hvdm("engine", "--db", db, "--exit-when-idle")
    assert engine.returncode == 0, engine.stderr
    again = hvdm("audit", "--db", db, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["unconsumed_inputs"] == 0
