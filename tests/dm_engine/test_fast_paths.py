"""The engine's shortcuts decide exactly what the general path decides: a plain status report
(``decisions.status_report``) and a quiet tick (``decider.tick_is_quiet``), in every protocol state."""

from __future__ import annotations

import copy
import dataclasses
import struct

from hypothesis import given
from hypothesis import strategies as st

from services.dm_engine import inputs as inp
from services.dm_engine.decider import decide, decide_steps, process, tick_is_quiet
from services.dm_engine.decisions import status_report
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, CapabilitiesReport, StatusReport, VersionRequest, encode
from services.dm_protocol.messages import MessageType
from tests.dm_engine.harness import GIB_PAGES, Harness


def _states() -> list[VmState]:
    """One VM in each protocol state a status report or a tick can meet (and flooded, timed out)."""
    out: list[VmState] = []
    h = Harness()
    out.append(copy.deepcopy(h.state))  # closed, never described
    h.open()
    out.append(copy.deepcopy(h.state))  # waiting for the version
    h.guest(VersionRequest(trans_id=1, version=0x20000))
    out.append(copy.deepcopy(h.state))  # waiting for the capabilities
    h.guest(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))
    out.append(copy.deepcopy(h.state))  # post-init wait
    h.advance_ticks(h.config.post_init_wait_ticks)
    out.append(copy.deepcopy(h.state))  # idle
    for _ in range(h.config.max_status_reports_per_tick):
        h.guest(StatusReport(num_avail=1, num_committed=2))
    out.append(copy.deepcopy(h.state))  # idle, this tick's reports used up
    h.set_target_pages(h.state.current_pages - GIB_PAGES // 4)
    out.append(copy.deepcopy(h.state))  # a balloon transaction in flight
    h.guest(BalloonResponse(more_pages=True, ranges=((1 << 16, 512),)))
    h.advance_ticks(h.config.balloon_timeout_ticks + 1)
    out.append(copy.deepcopy(h.state))  # after a timeout
    h.feed(inp.ChannelClosed(tick=h.tick, reason="test"))
    out.append(copy.deepcopy(h.state))  # closed again
    return out


STATES = _states()
U64 = st.integers(min_value=0, max_value=2**64 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Mostly status-report-shaped frames, some with a wrong type, size or length."""
    kind = draw(st.sampled_from([int(MessageType.DM_STATUS_REPORT)] * 4 + [int(t) for t in MessageType] + [99]))
    size = draw(st.sampled_from([48] * 4 + [0, 47, 49, 56]))
    body = struct.pack("<QQQQII", draw(U64), draw(U64), draw(U64), draw(U64), draw(U32), draw(U32))
    frame = struct.pack("<HHI", kind, size, draw(U32)) + body
    cut = draw(st.sampled_from([48] * 4 + [0, 8, 47]))
    return frame[:cut] + draw(st.binary(max_size=2)) if cut != 48 else frame


@given(st.sampled_from(range(len(STATES))), frames(), st.integers(min_value=0, max_value=40))
def test_a_status_report_shortcut_decides_what_decide_decides(index: int, raw: bytes, tick: int) -> None:
    state = STATES[index]
    message = inp.GuestMessage(tick=state.status_tick if tick % 2 else tick, raw=raw)
    fast = status_report(state, message, Harness().config)
    if fast is not None:
        assert decide(state, message, Harness().config) == [fast]
        assert decide_steps(state, message, Harness().config) == [[fast]]


def test_the_shortcut_takes_real_status_reports() -> None:
    idle = STATES[4]
    raw = encode(StatusReport(trans_id=9, num_avail=700_000, num_committed=300_000))
    assert status_report(idle, inp.GuestMessage(tick=idle.status_tick + 1, raw=raw), Harness().config) is not None


@given(st.sampled_from(range(len(STATES))), st.integers(min_value=0, max_value=200), st.sampled_from([0, 3]))
def test_a_quiet_tick_decides_nothing_and_changes_nothing(index: int, tick: int, retention: int) -> None:
    config = dataclasses.replace(Harness().config, retention_ticks=retention)
    state = copy.deepcopy(STATES[index])
    if tick_is_quiet(state, config):
        before = copy.deepcopy(state)
        assert process(state, inp.Tick(tick=tick), config) == []
        assert state == before
