"""The Linux simulator against a real Linux 6.1 guest (``tests/data/realguest``, QEMU's trace).

The trace is QEMU's view of one real conversation; the simulator is given QEMU's side of it at the
same moments and must answer as the real guest did:

* the first status report about 45 s after the driver binds (Linux ``post_status`` swallows
  ``pressure_report_delay`` = 45 calls of ``dm_thread_func``): six reports (trans_ids 3..8) fit
  before QEMU's first balloon request 50.4 s after the handshake, so the balloon answer is 9;
* ``balloon_up``/``alloc_balloon_pages``: 2 MiB blocks, one range each, lowest free memory first,
  which QEMU's ``hv_balloon_remove_response_handle_pages`` merges into the traced runs;
* ``balloon_down``: the unballoon answer takes the next id (13), after the reports that the 1 s
  thread sent meanwhile (it did not run while the single vCPU was allocating);
* a hibernation-capable VM ignores balloon-up requests (``balloon_onchannelcallback`` drops them when
  ``allow_hibernation``); the engine times the request out and records it.
"""

from __future__ import annotations

from pathlib import Path

from services.dm_engine.config import EngineConfig
from services.dm_engine.events import GuestViolation, TransactionTimedOut
from services.dm_engine.inputs import SetTarget
from services.dm_engine.records import event_from_dict, loads
from services.dm_engine.state import ProtocolState
from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesResponse,
    Message,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionResponse,
)
from services.embedded.lockstep import LockstepFleet
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest
from tests.dm_engine.qemu_trace import parse_trace, qemu_runs
from tests.guest_sim.host_script import GIB_PAGES, dec, only, ready_guest, send

TRACE = parse_trace()


def _trace_guest() -> SimulatedGuest:
    """The traced guest: 1 GiB, one vCPU, ballooning at the speed the trace shows, with the free
    memory the trace's runs imply (a used gap at [0x1a000, 0x1d800), everything below 0x2a00 used)."""
    post, answer = TRACE.balloon_posts[0], TRACE.balloon_answers[0]
    seconds = answer.time - post.time
    g = SimulatedGuest(
        GuestConfig(
            boot_bytes=1 << 30,
            workload="idle",
            instant=False,
            balloon_bytes_per_minute=int(post.num_pages * 4096 / seconds * 60) + 1,
        )
    )
    g.memory.set_free_layout([(0x2A00, 0x1A000 - 0x2A00), (0x1D800, GIB_PAGES - 0x1D800)])
    return g


def test_first_status_report_about_45_s_after_binding() -> None:
    """post_status swallows pressure_report_delay (45) calls of dm_thread_func, the first at its start."""
    g = ready_guest(now=0.0)
    assert only(dec(g.poll(44.9)), StatusReport) == []
    first = only(dec(g.poll(45.5)), StatusReport)
    assert len(first) == 1 and first[0].trans_id == 3


def test_simulator_replays_the_real_guest_side_of_the_trace() -> None:
    """balloon_up / alloc_balloon_pages / balloon_down against QEMU's trace: ids, ranges, runs."""
    g = _trace_guest()
    sent: list[Message] = []
    sent += dec(g.connect(0.0))
    assert TRACE.version is not None and TRACE.caps is not None
    sent += send(g, VersionResponse(trans_id=1, is_accepted=True), TRACE.version[0])
    sent += send(g, CapabilitiesResponse(trans_id=2, is_accepted=True), TRACE.caps[0])
    # QEMU saw protocol 2.0 and caps 0x1f (balloon, hot-add, alignment 2^7 MiB)
    assert TRACE.version[1] == "2.0" and TRACE.caps[1] == 0x1F
    assert [type(m).__name__ for m in sent] == ["VersionRequest", "CapabilitiesReport"]

    post = TRACE.balloon_posts[0]
    sent = dec(g.poll(post.time))
    assert [m.trans_id for m in only(sent, StatusReport)] == [3, 4, 5, 6, 7, 8]
    sent = send(g, BalloonRequest(trans_id=post.trans_id, num_pages=post.num_pages), post.time)
    assert only(sent, BalloonResponse) == []  # the real guest took 2.8 s
    answer = TRACE.balloon_answers[0]
    sent = dec(g.poll(answer.time + 0.001))
    responses = only(sent, BalloonResponse)
    assert len(responses) == 1
    response = responses[0]
    assert response.trans_id == answer.trans_id == 9
    assert len(response.ranges) == answer.range_count == 256
    assert response.more_pages is answer.more_pages is False
    assert all(count == 512 and start % 512 == 0 for start, count in response.ranges)
    assert qemu_runs(list(response.ranges)) == answer.runs
    # the worker's post_status after its send reports at once (the thread had been starved)
    assert [m.trans_id for m in only(sent, StatusReport)] == [10]

    first, last = TRACE.unballoon_posts[0], TRACE.unballoon_posts[-1]
    sent = dec(g.poll(first.time))
    assert [m.trans_id for m in only(sent, StatusReport)] == [11, 12]  # the 1 s thread meanwhile
    for p in TRACE.unballoon_posts:
        more = p is not last
        request = UnballoonRequest(trans_id=p.trans_id, more_pages=more, ranges=((p.start_page, p.page_count),))
        sent += send(g, request, p.time)
    done = only(sent, UnballoonResponse)
    assert [m.trans_id for m in done] == [tid for _, tid in TRACE.unballoon_answers] == [13]
    assert g.snapshot()["ballooned_pages"] == 0
    assert g.host_violations == []


def test_hibernation_capable_guest_ignores_balloon_up_and_the_engine_times_out(tmp_path: Path) -> None:
    """balloon_onchannelcallback drops DM_BALLOON_REQUEST when allow_hibernation; hvdm's timeout records it."""
    config = EngineConfig(post_init_wait_ticks=2, balloon_timeout_ticks=10)
    fleet = LockstepFleet(SqliteLog(tmp_path / "h.db"), config)
    guest = SimulatedGuest(GuestConfig(boot_bytes=2 << 30, profile="linux_hibernate", workload="idle"))
    fleet.add_vm("vm1", guest, 2 << 30, 2 << 30)
    fleet.connect("vm1")
    fleet.run_until(lambda f: f.runner.states["vm1"].protocol is ProtocolState.IDLE)
    fleet.submit("vm1", SetTarget(target_bytes=1 << 30))
    fleet.settle()
    assert fleet.runner.states["vm1"].protocol is ProtocolState.BALLOON_REPLY_WAIT
    fleet.advance(12)
    events = [event_from_dict(loads(row.record)) for row in fleet.log.iter_events("vm1")]
    timeouts = [e for e in events if isinstance(e, TransactionTimedOut)]
    assert len(timeouts) == 1 and timeouts[0].kind == "balloon"
    assert any(isinstance(e, GuestViolation) and e.reason == "TIMEOUT" for e in events)
    assert fleet.runner.states["vm1"].ballooned_pages == 0
    # An honest guest: it did what Linux does, and the host asked nothing it should not have.
    assert guest.host_violations == []
    assert guest.snapshot()["ballooned_pages"] == 0
    fleet.log.close()
