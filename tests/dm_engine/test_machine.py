"""The state machine table: complete, enforced (one transition per step), and the only writer."""

from __future__ import annotations

import typing

import pytest

from services.dm_engine import decider, decisions, initial_state, process
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_engine.machine import (
    TABLE,
    TRANSITIONS,
    WAITING,
    ProtocolState,
    TransitionError,
    TxnKind,
    check_step,
    next_state,
)
from services.dm_engine.state import VmState
from services.fuzz.engine_fuzz import CONFIG, program
from tests.dm_engine.harness import Harness

S = ProtocolState


def _idle() -> VmState:
    h = Harness()
    h.handshake()
    assert h.state.protocol is S.IDLE
    return h.state


def test_every_event_type_has_exactly_one_row() -> None:
    union = set(typing.get_args(ev.Event))
    rows = [t.event for t in TABLE]
    assert len(rows) == len(set(rows))
    assert set(rows) == union


def test_transaction_kinds_match_the_logged_names_and_the_table() -> None:
    assert {k.value for k in TxnKind} == set(typing.get_args(ev.TransactionKind))
    for kind in TxnKind:
        assert WAITING[kind.wait_state] is kind
        opening = TRANSITIONS[kind.opening]
        assert opening.to is kind.wait_state and S.IDLE in opening.allowed
        for closing in kind.closing:
            assert TRANSITIONS[closing].to is S.IDLE
            assert kind.wait_state in TRANSITIONS[closing].allowed
    config = EngineConfig(balloon_timeout_ticks=3, hot_add_timeout_ticks=4)
    assert TxnKind.BALLOON.timeout_ticks(config) == 3
    assert TxnKind.HOT_ADD.timeout_ticks(config) == 4


def test_a_second_transition_in_one_step_fails() -> None:
    step = [
        ev.BalloonRequested(trans_id=1, num_pages=10, tick=5),
        ev.BalloonTransactionEnded(trans_id=1, requested_pages=10, received_pages=0, outcome="partial", tick=5),
    ]
    check_step(S.IDLE, step[:1])  # each alone is legal
    check_step(S.BALLOON_REPLY_WAIT, step[1:])
    with pytest.raises(TransitionError, match="second protocol transition"):
        check_step(S.IDLE, step)


def test_an_event_in_a_state_the_table_does_not_allow_fails() -> None:
    with pytest.raises(TransitionError, match="not allowed in state CLOSED"):
        check_step(S.CLOSED, [ev.VersionAccepted(version=0x20000, guest_trans_id=1)])


def test_process_enforces_the_rule_on_what_a_handler_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _idle()
    before = state.to_snapshot()

    def two_transitions(s: VmState, i: inp.SetTarget, c: EngineConfig) -> list[ev.Event]:
        return [
            ev.BalloonRequested(trans_id=s.trans_id, num_pages=1, tick=i.tick),
            ev.BalloonTransactionEnded(
                trans_id=s.trans_id, requested_pages=1, received_pages=0, outcome="partial", tick=i.tick
            ),
        ]

    monkeypatch.setitem(decisions._INPUT_HANDLERS, inp.SetTarget, two_transitions)
    with pytest.raises(TransitionError):
        process(state, inp.SetTarget(tick=9, target_bytes=1 << 30))
    assert state.to_snapshot() == before  # the step was refused before anything was folded


def test_a_reopen_is_two_steps_with_one_transition_each() -> None:
    state = _idle()
    opened = inp.ChannelOpened(tick=20, boot_bytes=4 << 30, maxmem_bytes=64 << 30)
    steps = decisions.decide_steps(state, opened)
    assert [[e.KIND for e in step] for step in steps] == [["ChannelClosed"], ["ChannelOpened"]]
    assert decider.decide(state, opened) == [e for step in steps for e in step]
    events = process(state, opened)
    assert events == [ev.ChannelClosed(reason="reopened"), ev.ChannelOpened()]
    assert state.protocol is S.VERSION


def test_the_fold_takes_every_protocol_change_from_the_table() -> None:
    seen: set[tuple[S, str, S]] = set()
    for case in range(150):
        state = initial_state("fuzz")
        for record in program(5, case):
            before = state.protocol
            for event in process(state, record, CONFIG):
                after = next_state(before, event)
                seen.add((before, event.KIND, after))
                before = after
            assert state.protocol is before
    # The fuzz reaches every state of the machine but hot-remove's (it needs hot-added memory).
    assert {s for s, _, _ in seen} >= set(S) - {S.HOT_REMOVE_REPLY_WAIT}
