"""Differential test: the real guest's side of a captured conversation, replayed into hvdm's engine,
must draw the requests QEMU's hv-balloon sent (``tests/data/realguest``, QEMU 10.0.13's trace).

What is compared, message by message: the balloon request (``hv_balloon_balloon_posting``: its
trans_id and num_pages), the unballoon requests (``hv_balloon_unballoon_posting``: trans_id, the
ranges given back and their order) and the accounting after each answer.

Deliberate differences (README, "Where hvdm follows QEMU"), checked here as differences:

* QEMU posts one range per DM_UNBALLOON_REQUEST; hvdm packs up to 510 ranges into one message.
  The ranges, their order (highest address first) and the trans_id are the same.

Reconstructed from the trace (QEMU does not trace them): the guest's trans_ids of its version and
caps messages (Linux numbers its messages from 1), and the 256 ranges of the balloon answer, which
QEMU traces merged into runs: 2 MiB blocks in ascending order inside each run, the order the real
guest allocates in (see ``tests/guest_sim/test_realguest_calibration.py``).
"""

from __future__ import annotations

import math

from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
)
from services.vdimm_allocator.ram_layout import x86_ram_ranges
from tests.dm_engine.harness import Harness
from tests.dm_engine.qemu_trace import parse_trace, qemu_runs

TRACE = parse_trace()
MIB = 1 << 20


def _ranges_of(runs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple((start + i, 512) for start, count in runs for i in range(0, count, 512))


def _tick(seconds: float) -> int:
    return math.floor(seconds)


def test_hvdm_asks_what_qemu_asked() -> None:
    """hv_balloon_balloon_posting and hv_balloon_unballoon_posting, message by message, against the trace."""
    h = Harness(boot_bytes=1 << 30, maxmem_bytes=1 << 30, config=EngineConfig())
    boot = (1 << 30) >> 12
    h.feed(inp.ChannelOpened(tick=0, boot_bytes=1 << 30, maxmem_bytes=1 << 30, ram=x86_ram_ranges("q35", boot)))
    assert TRACE.version is not None and TRACE.caps is not None and TRACE.caps[1] == 0x1F

    # handshake: QEMU echoes the guest's trans_id (hv_balloon_handle_version_request / _caps_report)
    h.tick = _tick(TRACE.version[0])
    h.guest(VersionRequest(trans_id=1, version=0x00020000))
    assert h.last_sent() == VersionResponse(trans_id=1, is_accepted=True)
    h.tick = _tick(TRACE.caps[0])
    h.guest(CapabilitiesReport(trans_id=2, balloon=True, hot_add=True, hot_add_alignment=7))
    assert isinstance(h.last_sent(), CapabilitiesResponse) and h.last_sent().trans_id == 2

    # the 50 s post-init wait (HV_BALLOON_POST_INIT_WAIT), then the operator's balloon to 512 MiB
    post = TRACE.balloon_posts[0]
    assert TRACE.idle_time is not None and 50.0 <= TRACE.idle_time < 50.1
    h.advance_ticks(_tick(post.time) - h.tick)
    h.set_target_pages(boot - post.remaining)
    assert h.last_sent() == BalloonRequest(trans_id=post.trans_id, num_pages=post.num_pages)

    # the guest's answer, as QEMU traced it
    answer = TRACE.balloon_answers[0]
    ranges = _ranges_of(answer.runs)
    assert len(ranges) == answer.range_count and qemu_runs(list(ranges)) == answer.runs
    h.tick = _tick(answer.time)
    h.guest(BalloonResponse(trans_id=answer.trans_id, more_pages=answer.more_pages, ranges=ranges))
    assert h.state.current_pages << 12 == 512 * MIB
    ended = [e for e in h.events if isinstance(e, ev.BalloonTransactionEnded)]
    assert ended[-1].outcome == "complete" and h.state.trans_id == 1  # QEMU: trans_id + 1

    # the operator's balloon back to 1 GiB: QEMU gives the pages back, highest range first
    h.tick = _tick(TRACE.unballoon_posts[0].time)
    before = len(h.sent)
    h.set_target_pages(boot)
    ours = [m for m in h.sent[before:] if isinstance(m, UnballoonRequest)]
    theirs = TRACE.unballoon_posts
    assert {m.trans_id for m in ours} == {p.trans_id for p in theirs} == {1}
    assert [r for m in ours for r in m.ranges] == [(p.start_page, p.page_count) for p in theirs]
    # deliberate difference: one packed message instead of one message per range
    assert len(ours) == 1 and len(theirs) == 2 and not ours[-1].more_pages
    assert h.state.current_pages == boot  # optimistic, as QEMU: counted when sent

    tick, guest_id = TRACE.unballoon_answers[0]
    h.tick = _tick(tick)
    h.guest(UnballoonResponse(trans_id=guest_id))
    assert h.state.trans_id == 2 and h.violations() == []
