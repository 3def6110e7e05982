"""Effectively-once: kill -9 the engine at random moments, restart it, and the event log, outbox
and state equal those of an uninterrupted run, byte for byte."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.dm_engine.runner import EngineRunner
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
    outbox = []
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

    crashed = copy_inbox(reference.log, tmp_path / "crashed.db")
    crashed.close()
    rng = random.Random(20261126)
    kills = 0
    cmd = [
        sys.executable,
        "-m",
        "services",
        "engine",
        "--db",
        str(tmp_path / "crashed.db"),
        "--exit-when-idle",
        "--batch",
        "3",
        "--snapshot-every",
        "40",
    ]
    for _attempt in range(200):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.2, 0.9))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""
        break
    else:
        pytest.fail("the engine never finished")
    print(f"engine killed {kills} times before a run completed")
    assert kills >= 3, f"only {kills} kills landed; the scenario is too short to test crashes"

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
