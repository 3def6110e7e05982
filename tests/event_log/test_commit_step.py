"""``SqliteLog.commit_step`` writes its event rows in multi-row INSERTs (100 rows, then power-of-two
chunks): every batch size keeps the rows in commit order, numbered per VM without gaps, with their
stored forms and outbox messages."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dm_engine import events as ev
from services.dm_engine.records import event_json, stored_event, stored_event_json
from services.dm_engine.state import VmState
from services.dm_engine.step import Processed
from services.event_log.sqlite_log import SqliteLog


def _event(i: int) -> ev.Event:
    if i % 3 == 0:
        return ev.TargetSet(target_pages=i)
    return ev.StatusReported(
        tick=i,
        available_pages=i,
        committed_pages=2 * i,
        page_file_size_pages=0,
        zero_free_pages=0,
        page_file_writes=0,
        io_diff=0,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 4)), min_size=1, max_size=260))
def test_every_batch_size_commits_rows_in_order(tmp_path: Path, batch: list[tuple[int, int]]) -> None:
    path = tmp_path / f"log{len(batch)}-{abs(hash(tuple(batch)))}.db"
    log = SqliteLog(path)
    try:
        writes: list[Processed] = []
        expected: list[tuple[str, int, int, str]] = []
        seq: dict[str, int] = {}
        sends: dict[str, list[tuple[bytes, int]]] = {}
        n = 0
        for pos, (v, count) in enumerate(batch, start=1):
            vm = f"vm{v}"
            events = [_event(n + k) for k in range(count)]
            n += count
            outbox = [(count - 1, b"msg%d" % pos)] if pos % 5 == 0 else []
            writes.append(Processed(vm, pos, 0, events, [stored_event(e) for e in events], outbox, VmState(vm_id=vm)))
            for e in events:
                seq[vm] = seq.get(vm, 0) + 1
                expected.append((vm, seq[vm], pos, event_json(e)))
            if outbox:
                sends.setdefault(vm, []).append((outbox[0][1], seq[vm]))  # caused by the write's last event
        log.commit_step(writes, len(batch))
        rows = [(r.vm, r.seq, r.inbox_pos, r.record) for r in log.iter_events()]
        assert rows == expected
        kinds = log._db.execute("SELECT kind, record FROM events ORDER BY id").fetchall()
        assert [k for k, _ in kinds] == [stored_event_json(r).split('"type":"')[1].split('"')[0] for _, r in kinds]
        assert log.consumed_position() == len(batch)
        for v in range(5):
            sent = log.read_outbox(f"vm{v}", 0)
            assert [(m.message, m.event_seq) for m in sent] == sends.get(f"vm{v}", [])
            assert [m.seq for m in sent] == list(range(1, len(sent) + 1))
    finally:
        log.close()
