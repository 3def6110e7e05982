"""Effectively-once: kill -9 the engine at random moments, restart it, and the event log, outbox
and state equal those of an uninterrupted run, byte for byte."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.embedded.runner import EngineRunner
from services.event_log.sqlite_log import SqliteLog
from tests.embedded.fleet_scenario import build_fleet, run_story

ROOT = Path(__file__).resolve().parents[2]


def copy_inbox(src: SqliteLog, dst_path: Path) -> SqliteLog:
    dst = SqliteLog(dst_path)
    config = src.get_meta("engine_config")
    assert config is not None
    dst.set_meta("engine_config", config)
    dst.append_inputs((row.vm, row.tick, row.record, None) for row in src.iter_inbox())
    assert dst.inbox_high_watermark() == src.inbox_high_watermark()
    return dst


def log_contents(log: SqliteLog) -> tuple[list[tuple[str, int, int, str]], list[tuple[str, int, int, bytes]]]:
    events = [(r.vm, r.seq, r.inbox_pos, r.record) for r in log.iter_events()]
    outbox: list[tuple[str, int, int, bytes]] = []
    for vm in log.vms():
        outbox.extend((r.vm, r.seq, r.event_seq, r.message) for r in log.read_outbox(vm, 0, 1_000_000))
    return events, outbox


@pytest.mark.slow
def test_kill_dash_nine_at_random_points_then_restart(tmp_path: Path) -> None:
    reference = build_fleet(tmp_path / "reference.db", vms=6)
    run_story(reference, tail_ticks=120)
    ref_events, ref_outbox = log_contents(reference.log)
    ref_states = {vm: s.to_snapshot() for vm, s in reference.runner.states.items()}
    assert len(ref_events) > 300

    def engine_cmd(db: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "services",
            "engine",
            "--db",
            str(db),
            "--exit-when-idle",
            "--batch",
            "2",
            "--snapshot-every",
            "40",
        ]

    crashed = copy_inbox(reference.log, tmp_path / "crashed.db")
    total = crashed.inbox_high_watermark()
    crashed.close()
    watcher = sqlite3.connect(f"file:{tmp_path / 'crashed.db'}?mode=ro", uri=True)

    def consumed() -> int:
        row = watcher.execute("SELECT pos FROM positions WHERE name = 'engine'").fetchone()
        return 0 if row is None else int(row[0])

    rng = random.Random(20261126)
    kills = 0
    interrupted_at: list[int] = []
    for _attempt in range(200):
        # Kill at a random point of progress (not of wall time, which varies between machines):
        # somewhere in the next quarter of what is left, while the engine is mid-stream.
        before = consumed()
        target = before + rng.randint(1, max(1, (total - before) // 4))
        proc = subprocess.Popen(
            engine_cmd(tmp_path / "crashed.db"), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        while proc.poll() is None and consumed() < target:
            time.sleep(0.0005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            interrupted_at.append(consumed())
            continue
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""
        break
    else:
        pytest.fail("the engine never finished")
    watcher.close()
    print(f"engine killed {kills} times, at inbox positions {interrupted_at} of {total}")
    mid_run = {pos for pos in interrupted_at if 0 < pos < total}
    assert len(mid_run) >= 3, f"kills interrupted the run at only {sorted(mid_run)} of {total} records"

    log = SqliteLog(tmp_path / "crashed.db")
    events, outbox = log_contents(log)
    assert events == ref_events
    assert outbox == ref_outbox
    assert log.consumed_position() == reference.log.inbox_high_watermark()
    recovered = EngineRunner(log)  # rebuilt from snapshots + events
    assert {vm: s.to_snapshot() for vm, s in recovered.states.items()} == ref_states
    assert len(log.snapshots()) > 0  # snapshots were taken along the way
    assert json.loads(log.get_meta("engine_config") or "{}") == json.loads(
        reference.log.get_meta("engine_config") or "{}"
    )
