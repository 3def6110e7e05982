"""Issue 12: where hvdm departed from QEMU's hv-balloon in ways that mis-account a real x86 guest.

Each test restates a rule of the C sources and names the function it comes from:

* reboots: QEMU can only reopen a channel after a VMBus device reset (``hv_balloon_vmdev_reset``
  empties the ballooned trees, zeroes the counters and the trans_id, keeps hot-added memory);
  a system reset (``hv_balloon_system_reset``) also drops hot-added memory;
* the PCI hole: q35 keeps 2 GiB of a >= 2.75 GiB guest below 4 GiB and relocates the rest above
  it (``pc_q35_init``); device memory starts above that, rounded to 1 GiB
  (``pc_get_device_memory_range``), and hv-balloon's device at the next 32 GiB boundary;
* partial balloon answers: ``hv_balloon_handle_remove_response`` keeps the unmet balloon diff and
  ``hv_balloon_balloon_rb_wait``/``_posting`` ask again; only an empty answer (range_count 0)
  zeroes the diff and ends the pursuit;
* issue 9: a guest cannot make its ballooned set fragment without bound.
"""

from __future__ import annotations

from pathlib import Path

from services.dm_engine import ProtocolState
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.config import EngineConfig
from services.dm_engine.records import event_from_dict, loads
from services.dm_protocol import BalloonRequest, BalloonResponse, HotAddRequest, UnballoonRequest
from services.embedded.lockstep import LockstepFleet
from services.event_log.sqlite_log import SqliteLog
from services.guest_sim import GuestConfig, SimulatedGuest
from services.vdimm_allocator.ram_layout import x86_ram_ranges
from tests.dm_engine.harness import FAST, GIB_PAGES, Harness

FOUR_GIB = 4 * GIB_PAGES


def _grown_and_shrunk(h: Harness) -> int:
    """Handshake, hot-add 1 GiB through a vDIMM, then balloon 1 GiB of boot RAM out."""
    h.handshake()
    boot = h.hot_add_then_balloon_boot_ram()
    assert h.state.ballooned_pages == GIB_PAGES and h.state.trans_id == 2
    return boot


def _reopen(h: Harness, reset: str) -> list[ev.Event]:
    h.feed(inp.ChannelClosed(tick=h.tick, reason="guest rebooted"))
    return h.open(reset=reset)


# ----------------------------------------------------------------------------- 1. reboots
def test_fresh_channel_is_a_vmbus_reset_ballooned_pages_are_forgotten() -> None:
    """hv_balloon_vmdev_reset: trees and counters emptied, trans_id 0, hot-added memory kept."""
    h = Harness()
    boot = _grown_and_shrunk(h)
    out = _reopen(h, "vmbus")
    resets = [e for e in out if isinstance(e, ev.VmbusReset)]
    assert resets == [ev.VmbusReset(ballooned_pages_dropped=GIB_PAGES)]
    assert h.state.ballooned_pages == 0 and h.state.trans_id == 0
    assert h.state.hot_added_pages == GIB_PAGES
    assert h.state.current_pages == boot + GIB_PAGES
    # The new boot never gave anything: a later grow must not unballoon the old boot's pages.
    h.handshake_again()
    sent_before = len(h.sent)
    h.set_target_pages(boot + GIB_PAGES)
    assert not any(isinstance(m, UnballoonRequest) for m in h.sent[sent_before:])


def test_reboot_is_a_system_reset_hot_added_memory_is_released() -> None:
    """hv_balloon_system_reset drops our range: the guest is back at its boot RAM."""
    h = Harness()
    boot = _grown_and_shrunk(h)
    out = _reopen(h, "system")
    assert [e.backend_id for e in out if isinstance(e, ev.MemoryBackendUnused)] == ["m"]
    assert h.state.current_pages == boot and h.state.hot_added_pages == 0
    assert h.state.ballooned_pages == 0 and h.state.layout.vdimms == ()
    assert h.state.protocol is ProtocolState.VERSION


def test_an_open_without_a_reset_keeps_the_books() -> None:
    """Logs from before the hello said what reset happened (reset "") keep their old meaning."""
    h = Harness()
    _grown_and_shrunk(h)
    out = _reopen(h, "")
    assert not any(isinstance(e, ev.VmbusReset | ev.SystemReset) for e in out)
    assert h.state.ballooned_pages == GIB_PAGES and h.state.trans_id == 2


def test_reset_reopens_a_channel_the_gateway_never_closed() -> None:
    """hv_balloon_vmdev_reset runs after the VMBus layer closed the channel: the reset is the close."""
    h = Harness()
    _grown_and_shrunk(h)
    out = h.open(reset="vmbus")  # no ChannelClosed in between: the reset closes the old channel
    assert [type(e).__name__ for e in out] == ["VmbusReset", "ChannelOpened"]
    assert h.state.protocol is ProtocolState.VERSION


def test_first_channel_of_a_new_vm_needs_no_reset() -> None:
    """A device that was never opened is already in S_POST_RESET_CLOSED (hv_balloon_realize): nothing to reset."""
    h = Harness()
    out = h.open(reset="vmbus")
    assert [type(e).__name__ for e in out] == ["VmDescribed", "ChannelOpened"]


def test_after_a_reset_a_reached_target_waits_for_the_operator() -> None:
    """QEMU keeps the target but not the request: its IDLE handler acts only on target_changed,
    which was cleared when the old boot's balloon started. A target set while the guest was away
    is still pending and is pursued once the new boot is idle."""
    h = Harness()
    boot = _grown_and_shrunk(h)
    _reopen(h, "vmbus")
    sent = len(h.sent)
    h.handshake_again()
    h.advance_ticks(5)
    assert not any(isinstance(m, BalloonRequest) for m in h.sent[sent:])
    assert h.state.current_pages == boot + GIB_PAGES  # the new boot has everything; nothing asked
    h.feed(inp.ChannelClosed(tick=h.tick, reason="guest rebooted"))
    h.set_target_pages(boot)  # the operator asks while the guest is away
    h.open(reset="vmbus")
    h.handshake_again()
    assert h.last_sent() == BalloonRequest(trans_id=0, num_pages=GIB_PAGES)


# ----------------------------------------------------------------------------- 2. the PCI hole
def test_q35_ram_above_4_gib_is_the_guests_and_the_hole_is_not() -> None:
    """pc_q35_init: 4 GiB of RAM is [0, 2 GiB) + [4 GiB, 6 GiB); hv_balloon_unballoon_posting gives back
    what was taken."""
    h = Harness(boot_bytes=4 << 30, maxmem_bytes=64 << 30)
    h.feed(
        inp.ChannelOpened(
            tick=0, boot_bytes=4 << 30, maxmem_bytes=64 << 30, ram=x86_ram_ranges("q35", FOUR_GIB), reset="vmbus"
        )
    )
    h.handshake_again()
    assert h.state.ram == ((0, 2 * GIB_PAGES), (FOUR_GIB, 2 * GIB_PAGES))
    h.set_target_pages(h.state.boot_pages - GIB_PAGES)
    assert h.last_sent() == BalloonRequest(trans_id=0, num_pages=GIB_PAGES)
    # pages in [4 GiB, 6 GiB) are relocated RAM: accepted
    h.guest(BalloonResponse(more_pages=True, ranges=((FOUR_GIB, GIB_PAGES // 2),)))
    # pages in the hole [2 GiB, 4 GiB) are not RAM
    h.guest(BalloonResponse(more_pages=False, ranges=((3 * GIB_PAGES, 512),)))
    assert h.state.ballooned_pages == GIB_PAGES // 2
    assert "PAGES_NOT_OWNED" in h.violations()
    assert isinstance(h.last_sent(), BalloonRequest)  # half is still owed: asked again
    h.guest(BalloonResponse(more_pages=False, ranges=()))
    # giving back returns exactly the relocated pages
    h.set_target_pages(h.state.boot_pages)
    back = [m for m in h.sent if isinstance(m, UnballoonRequest)]
    assert back and back[-1].ranges == ((FOUR_GIB, GIB_PAGES // 2),)


def test_hot_add_window_starts_above_relocated_ram() -> None:
    """31 GiB on q35: RAM runs to 33 GiB; the device memory and so the first hot-add go to 64 GiB,
    never on top of relocated RAM (the old rule, boot rounded to 32 GiB, put it at 32 GiB)."""
    ram = x86_ram_ranges("q35", 31 * GIB_PAGES)
    h = Harness(boot_bytes=31 << 30, maxmem_bytes=40 << 30)
    h.feed(inp.ChannelOpened(tick=0, boot_bytes=31 << 30, maxmem_bytes=40 << 30, ram=ram, reset="vmbus"))
    h.handshake_again()
    assert h.state.layout.window_start_page == 64 * GIB_PAGES
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=2 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(h.state.boot_pages + 2 * GIB_PAGES)
    request = h.last_sent()
    assert isinstance(request, HotAddRequest) and request.range[0] == 64 * GIB_PAGES
    assert request.range[0] >= 33 * GIB_PAGES


def test_old_channel_opened_without_ram_means_zero_to_boot() -> None:
    """Upcast: an older ChannelOpened (no ram) describes RAM [0, boot) and the old window."""
    h = Harness(boot_bytes=4 << 30, maxmem_bytes=64 << 30)
    out = h.open()
    described = next(e for e in out if isinstance(e, ev.VmDescribed))
    assert described.ram == () and described.window_start_page == 32 * GIB_PAGES
    assert h.state.ram == ((0, FOUR_GIB),)


def test_a_ram_list_that_does_not_add_up_is_rejected() -> None:
    """The RAM ranges must be the machine's -m (pc_q35_init splits ram_size, never more, never less)."""
    h = Harness(boot_bytes=4 << 30, maxmem_bytes=64 << 30)
    out = h.feed(inp.ChannelOpened(tick=0, boot_bytes=4 << 30, maxmem_bytes=64 << 30, ram=((0, 5),)))
    assert [type(e).__name__ for e in out] == ["CommandRejected"]
    assert not h.state.described


# ----------------------------------------------------------------------------- 3. partial answers
def test_a_short_answer_is_followed_by_a_request_for_the_rest() -> None:
    """hv_balloon_handle_remove_response: more_pages 0 with pages still owed -> trans_id + 1 and
    S_BALLOON_RB_WAIT, i.e. another DM_BALLOON_REQUEST for the remaining diff."""
    h = Harness()
    h.handshake()
    h.set_target_pages(h.state.boot_pages - 4096)
    h.guest(BalloonResponse(more_pages=False, ranges=((0, 1024),)))
    ended = [e for e in h.events if isinstance(e, ev.BalloonTransactionEnded)]
    assert ended[-1].outcome == "partial"
    assert h.last_sent() == BalloonRequest(trans_id=1, num_pages=4096 - 1024)
    h.guest(BalloonResponse(more_pages=True, ranges=((1024, 512),)))
    h.guest(BalloonResponse(more_pages=False, ranges=()))  # the guest is at its floor
    assert h.state.protocol is ProtocolState.IDLE
    assert [e.outcome for e in h.events if isinstance(e, ev.BalloonTransactionEnded)] == ["partial", "floor"]
    sent = len(h.sent)
    h.advance_ticks(5)
    assert len(h.sent) == sent  # an empty answer ends the pursuit, as in QEMU


def test_linux_near_its_floor_gives_more_when_asked_again(tmp_path: Path) -> None:
    """The simulated Linux guest (balloon_up clamps each request to MemAvailable - floor,
    measured when the worker starts; the floor shrinks as totalram does) keeps giving on the
    follow-up requests that QEMU's rule sends, until it answers with nothing."""
    fleet = LockstepFleet(SqliteLog(tmp_path / "l.db"), EngineConfig(post_init_wait_ticks=2))
    guest = SimulatedGuest(GuestConfig(boot_bytes=2 << 30, workload="idle"))
    fleet.add_vm("vm1", guest, 2 << 30, 2 << 30)
    fleet.connect("vm1")
    fleet.run_until(lambda f: f.runner.states["vm1"].protocol is ProtocolState.IDLE)
    fleet.submit("vm1", inp.SetTarget(target_bytes=64 << 20))
    fleet.settle()
    fleet.advance(3)
    events = [event_from_dict(loads(r.record)) for r in fleet.log.iter_events("vm1")]
    ends = [e for e in events if isinstance(e, ev.BalloonTransactionEnded)]
    assert len(ends) >= 2 and ends[0].outcome == "partial" and ends[-1].outcome == "floor"
    first = ends[0].received_pages
    total = fleet.runner.states["vm1"].ballooned_pages
    assert total > first  # what stopping after the first partial answer left behind
    assert total == guest.snapshot()["ballooned_pages"]
    assert guest.host_violations == []
    fleet.log.close()


# ----------------------------------------------------------------------------- issue 9: range cap
def test_scattered_pages_stop_at_the_range_cap_with_a_violation() -> None:
    """Issue 9: QEMU's hvb_page_range_tree_insert grows without bound; hvdm caps the ranges per VM."""
    cap = 100
    h = Harness(config=EngineConfig(post_init_wait_ticks=2, max_ballooned_ranges=cap))
    h.handshake()
    h.set_target_pages(h.state.boot_pages - 10_000)
    scattered = tuple((2 * i, 1) for i in range(150))  # every other page: nothing merges
    h.guest(BalloonResponse(more_pages=True, ranges=scattered))
    assert len(h.state.ballooned) == cap
    assert h.violations().count("RANGE_LIMIT") == 1
    refused = next(e for e in h.events if isinstance(e, ev.GuestViolation) and e.reason == "RANGE_LIMIT")
    assert refused.pages == 50 and refused.ranges[0] == (200, 1)
    ended = [e for e in h.events if isinstance(e, ev.BalloonTransactionEnded)]
    assert ended[-1].outcome == "limit" and h.state.protocol is ProtocolState.IDLE
    # a range that merges with ballooned neighbours does not grow the set: still accepted later
    h.set_target_pages(h.state.boot_pages - 10_000)
    h.guest(BalloonResponse(more_pages=False, ranges=((1, 1), (3, 1))))
    assert len(h.state.ballooned) == cap - 2
    assert h.state.ballooned_pages == cap + 2


def test_fast_config_is_unchanged_by_the_cap() -> None:
    """The cap is a default of EngineConfig, recorded with the log like every knob."""
    assert FAST.max_ballooned_ranges == 1 << 18
