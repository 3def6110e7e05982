"""The balloon answer's batch path (``decisions._classify_returned`` with ``RangeBatch``) decides
exactly what the general path decides: the same events, byte for byte, for honest answers and for
answers that repeat pages, return pages outside RAM or pages already ballooned, into a ballooned
set fragmented enough for the batch path to be taken."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.engine import CONFIG, handshake_inputs
from services.dm_engine import decisions, initial_state, process
from services.dm_engine import inputs as inp
from services.dm_engine.records import event_json
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, encode
from services.range_store import RangeBatch

BOOT = 4 << 30  # 1 Mi pages of 4 KiB
BOOT_PAGES = BOOT >> 12


def _answers(seed: int, messages: int, faults: list[str]) -> list[inp.Input]:
    rng = random.Random(seed)
    starts = list(range(0, BOOT_PAGES, 64))
    rng.shuffle(starts)
    out: list[inp.Input] = [inp.SetTarget(tick=2, target_bytes=BOOT // 4)]
    given_back: list[tuple[int, int]] = []
    for m in range(messages):
        chunk = [(s, 64) for s in starts[m * 100 : (m + 1) * 100]]
        fault = faults[m % len(faults)]
        if fault == "repeat":
            chunk.append((chunk[0][0] + 10, 5))
        elif fault == "unowned":
            chunk.append((BOOT_PAGES + 7, 3))
        elif fault == "again" and given_back:
            chunk.append(rng.choice(given_back))
        elif fault == "empty":
            chunk.append((chunk[0][0], 0))
        rng.shuffle(chunk)
        given_back.extend(chunk[:3])
        out.append(inp.GuestMessage(tick=2, raw=encode(BalloonResponse(more_pages=True, ranges=tuple(chunk)))))
    return out


def _run(records: list[inp.Input], batch_min: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(decisions, "_BATCH_CHECK_MIN", batch_min)
    state: VmState = initial_state("vm")
    for r in handshake_inputs(BOOT):
        process(state, r, CONFIG)
    return [event_json(e) for r in records for e in process(state, r, CONFIG)]


@settings(max_examples=20, deadline=None)
@given(
    st.integers(0, 2**16),
    st.lists(st.sampled_from(["honest", "repeat", "unowned", "again", "empty"]), min_size=1, max_size=6),
)
def test_batch_path_decides_what_the_general_path_decides(seed: int, faults: list[str]) -> None:
    records = _answers(seed, 8, faults)
    with pytest.MonkeyPatch.context() as mp:
        general = _run(records, 10**9, mp)
    with pytest.MonkeyPatch.context() as mp:
        batched = _run(records, 32, mp)
    assert batched == general
    assert sum('"type":"PagesBallooned"' in e for e in general) >= 1


def test_the_batch_path_is_taken_on_a_fragmented_set(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = RangeBatch

    def counting(ranges: object) -> object:
        calls.append(1)
        return original(ranges)  # type: ignore[arg-type]  # what the engine passes: message ranges

    monkeypatch.setattr(decisions, "RangeBatch", counting)
    events = _run(_answers(1, 6, ["honest"]), 32, monkeypatch)
    assert len(calls) == 5  # every answer after the first, once the set holds >= 32 ranges
    assert sum('"type":"PagesBallooned"' in e for e in events) == 6
