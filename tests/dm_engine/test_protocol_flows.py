"""The host protocol end to end for one VM, with the guest played by hand through the real codec."""

from __future__ import annotations

from dataclasses import replace

from services.dm_engine import ProtocolState
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    CapabilitiesResponse,
    HotAddRequest,
    HotAddResponse,
    HotRemoveRequest,
    HotRemoveResponse,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
)
from tests.dm_engine.harness import FAST, GIB_PAGES, Harness


def blocks(start: int, n: int, size: int = 512) -> tuple[tuple[int, int], ...]:
    return tuple((start + i * size, size) for i in range(n))


def test_handshake_echoes_guest_trans_id_and_waits_post_init() -> None:
    h = Harness()
    h.open()
    assert h.state.protocol is ProtocolState.VERSION
    h.guest(VersionRequest(trans_id=1, version=0x00030000))  # 3.0: above QEMU's range
    assert h.last_sent() == VersionResponse(trans_id=1, is_accepted=False)
    h.guest(VersionRequest(trans_id=2, version=0x00020000))
    assert h.last_sent() == VersionResponse(trans_id=2, is_accepted=True)
    h.guest(CapabilitiesReport(trans_id=3, balloon=True, hot_add=True, hot_add_alignment=7))
    assert h.last_sent() == CapabilitiesResponse(trans_id=3, is_accepted=True, hot_remove=True)
    assert h.state.protocol is ProtocolState.POST_INIT_WAIT
    h.set_target_pages(GIB_PAGES)  # stored, but nothing is sent before the post-init wait ends
    assert not isinstance(h.last_sent(), BalloonRequest)
    h.advance_ticks(1)
    assert h.state.protocol is ProtocolState.POST_INIT_WAIT
    h.advance_ticks(1)
    assert isinstance(h.last_sent(), BalloonRequest)


def test_shrink_by_ballooning_then_grow_back_by_unballooning() -> None:
    h = Harness()
    h.handshake()
    boot = h.state.boot_pages
    h.set_target_pages(boot - 2048)
    req = h.last_sent()
    assert req == BalloonRequest(trans_id=0, num_pages=2048)
    h.guest(BalloonResponse(trans_id=10, more_pages=True, ranges=blocks(0x40000, 2)))
    assert h.state.protocol is ProtocolState.BALLOON_REPLY_WAIT
    h.guest(BalloonResponse(trans_id=11, more_pages=False, ranges=blocks(0x50000, 2)))
    assert h.state.protocol is ProtocolState.IDLE
    assert h.state.current_pages == boot - 2048
    assert h.state.ballooned_pages == 2048
    assert h.state.trans_id == 1

    h.set_target_pages(boot)
    msg = h.last_sent()
    assert isinstance(msg, UnballoonRequest)
    assert not msg.more_pages
    # Highest addresses first; adjacent blocks were merged into one range each.
    assert msg.ranges == ((0x50000, 1024), (0x40000, 1024))
    assert h.state.current_pages == boot  # optimistic, as QEMU: counted when sent
    h.guest(UnballoonResponse(trans_id=12))
    assert h.state.protocol is ProtocolState.IDLE
    assert h.state.trans_id == 2


def test_balloon_requests_are_capped_and_repeated_until_target() -> None:
    h = Harness(boot_bytes=8 << 30)
    h.handshake()
    boot = h.state.boot_pages
    h.set_target_pages(boot - 600_000)
    first = h.last_sent()
    assert first == BalloonRequest(trans_id=0, num_pages=585_728)
    h.guest(BalloonResponse(more_pages=False, ranges=((0, 585_728),)))
    second = h.last_sent()
    assert second == BalloonRequest(trans_id=1, num_pages=600_000 - 585_728)
    h.guest(BalloonResponse(more_pages=False, ranges=((600_000, 600_000 - 585_728),)))
    assert h.state.current_pages == boot - 600_000
    assert h.state.protocol is ProtocolState.IDLE


def test_empty_balloon_answer_stops_without_retry() -> None:
    h = Harness()
    h.handshake()
    h.set_target_pages(h.state.boot_pages - 4096)
    h.guest(BalloonResponse(more_pages=True, ranges=blocks(0, 1)))
    h.guest(BalloonResponse(more_pages=True, ranges=()))  # empty: the guest is at its floor
    ended = [e for e in h.events if isinstance(e, ev.BalloonTransactionEnded)]
    assert ended[-1].outcome == "floor" and ended[-1].received_pages == 512
    assert h.state.protocol is ProtocolState.IDLE
    sent_before = len(h.sent)
    h.advance_ticks(5)
    assert len(h.sent) == sent_before  # no automatic retry, as in QEMU
    h.set_target_pages(h.state.boot_pages - 4096)  # the operator asks again
    assert isinstance(h.last_sent(), BalloonRequest)


def test_unballoon_packs_many_ranges_per_message() -> None:
    h = Harness()
    h.handshake()
    boot = h.state.boot_pages
    singles = tuple((2 * i, 1) for i in range(1200))  # 1200 non-adjacent single pages
    h.set_target_pages(boot - 1200)
    h.guest(BalloonResponse(more_pages=True, ranges=singles[:510]))
    h.guest(BalloonResponse(more_pages=True, ranges=singles[510:1020]))
    h.guest(BalloonResponse(more_pages=False, ranges=singles[1020:]))
    assert h.state.ballooned_pages == 1200
    h.set_target_pages(boot)
    msgs = [m for m in h.sent if isinstance(m, UnballoonRequest)]
    assert [len(m.ranges) for m in msgs] == [510, 510, 180]
    assert [m.more_pages for m in msgs] == [True, True, False]
    assert all(m.trans_id == msgs[0].trans_id for m in msgs)
    assert msgs[0].ranges[0] == (2398, 1)  # highest first
    assert h.state.ballooned_pages == 0


def test_hot_add_through_a_vdimm_then_reboot_releases_it() -> None:
    h = Harness(boot_bytes=4 << 30, maxmem_bytes=64 << 30)
    h.handshake()
    boot = h.state.boot_pages
    h.command(inp.AddBackend(tick=h.tick, backend_id="mem1", size_bytes=4 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="mem1"))
    plugged = [e for e in h.events if isinstance(e, ev.VdimmPlugged)]
    assert plugged and plugged[0].start_page == 32 * GIB_PAGES  # 32 GiB-aligned window above RAM
    h.set_target_pages(boot + 3 * GIB_PAGES)
    req = h.last_sent()
    assert req == HotAddRequest(
        trans_id=0, range=(32 * GIB_PAGES, 2 * GIB_PAGES), region=(32 * GIB_PAGES, 2 * GIB_PAGES)
    )
    h.guest(HotAddResponse(page_count=2 * GIB_PAGES, result=1))
    req2 = h.last_sent()
    assert req2 == HotAddRequest(trans_id=1, range=(34 * GIB_PAGES, GIB_PAGES), region=(34 * GIB_PAGES, GIB_PAGES))
    h.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
    assert h.state.current_pages == boot + 3 * GIB_PAGES
    assert h.state.hot_added_pages == 3 * GIB_PAGES
    # Hot-added memory can be ballooned like boot RAM.
    h.set_target_pages(boot + 3 * GIB_PAGES - 512)
    h.guest(BalloonResponse(more_pages=False, ranges=((34 * GIB_PAGES, 512),)))
    assert h.state.current_pages == boot + 3 * GIB_PAGES - 512
    # Reboot: the vDIMM is released and reported unused; back to boot size.
    out = h.command(inp.SystemReset(tick=h.tick))
    assert [e.backend_id for e in out if isinstance(e, ev.MemoryBackendUnused)] == ["mem1"]
    assert h.state.current_pages == boot and h.state.ballooned_pages == 0
    assert h.state.layout.vdimms == ()
    # The backend still exists and can be deleted now.
    h.command(inp.RemoveBackend(tick=h.tick, backend_id="mem1"))
    assert "mem1" not in h.state.backends


def test_partial_hot_add_makes_the_rest_unusable() -> None:
    h = Harness()
    h.handshake()
    boot = h.state.boot_pages
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=2 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(boot + 2 * GIB_PAGES)
    h.guest(HotAddResponse(page_count=32768, result=1))  # one 128 MiB block of 2 GiB
    assert h.state.hot_added_pages == 32768
    vdimm = h.state.layout.get("m")
    assert vdimm is not None and vdimm.remaining_pages == 0
    n = len(h.sent)
    h.advance_ticks(3)
    assert len(h.sent) == n
    # In use: object-del is refused with QEMU's message.
    out = h.command(inp.RemoveBackend(tick=h.tick, backend_id="m"))
    assert isinstance(out[0], ev.CommandRejected) and "in use" in out[0].desc


def test_grow_unballoons_first_then_hot_adds() -> None:
    h = Harness()
    h.handshake()
    boot = h.state.boot_pages
    h.set_target_pages(boot - 1024)
    h.guest(BalloonResponse(more_pages=False, ranges=blocks(0x1000, 2)))
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=1 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(boot + GIB_PAGES)
    assert isinstance(h.last_sent(), UnballoonRequest)
    h.guest(UnballoonResponse())
    assert isinstance(h.last_sent(), HotAddRequest)
    h.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
    assert h.state.current_pages == boot + GIB_PAGES


def test_hot_remove_for_guests_that_advertise_it() -> None:
    h = Harness()
    h.handshake(hot_remove=True)
    boot = h.state.boot_pages
    base = 32 * GIB_PAGES
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=1 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(boot + GIB_PAGES)
    h.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
    h.set_target_pages(boot + GIB_PAGES // 2)
    assert h.last_sent() == HotRemoveRequest(trans_id=1, virtual_node=0, page_count=GIB_PAGES // 2, qos_flags=0)
    h.guest(HotRemoveResponse(result=0, more_pages=True, ranges=((base + GIB_PAGES // 2, GIB_PAGES // 4),)))
    h.guest(HotRemoveResponse(result=0, more_pages=False, ranges=((base + 3 * GIB_PAGES // 4, GIB_PAGES // 4),)))
    assert h.state.current_pages == boot + GIB_PAGES // 2
    assert h.state.hot_added_pages == GIB_PAGES // 2
    assert h.violations() == []


def test_status_reports_are_recorded() -> None:
    h = Harness()
    h.handshake()
    h.advance_ticks(1)
    h.guest(StatusReport(num_avail=732421, num_committed=384723))
    assert h.state.status is not None
    assert h.state.status.committed_pages == 384723
    assert h.state.counters.status_reports_total == 1


def test_vmbus_reset_drops_ballooned_but_keeps_hot_added() -> None:
    h = Harness()
    h.handshake()
    boot = h.hot_add_then_balloon_boot_ram()
    assert h.state.current_pages == boot
    h.command(inp.VmbusReset(tick=h.tick))
    assert h.state.protocol is ProtocolState.CLOSED
    assert h.state.ballooned_pages == 0
    assert h.state.hot_added_pages == GIB_PAGES
    assert h.state.trans_id == 0


def test_target_set_during_a_refused_transaction_is_still_pursued() -> None:
    h = Harness()
    h.handshake()
    boot = h.state.boot_pages
    h.set_target_pages(boot - 4096)
    h.guest(BalloonResponse(more_pages=True, ranges=blocks(0, 1)))
    h.set_target_pages(boot + 1024)  # the operator changes their mind mid-transaction
    h.guest(BalloonResponse(more_pages=False, ranges=()))  # the guest refuses the rest
    assert isinstance(h.last_sent(), UnballoonRequest)  # the new target is pursued at once
    assert h.state.target_pending


def test_plugging_a_backend_does_not_restart_a_refused_shrink() -> None:
    h = Harness()
    h.handshake()
    h.set_target_pages(h.state.boot_pages - 4096)
    h.guest(BalloonResponse(more_pages=False, ranges=blocks(0, 1)))  # partial: guest at its floor
    sent = len(h.sent)
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=1 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    assert len(h.sent) == sent  # no new balloon request toward the old target


def test_forget_is_refused_while_connected_and_taken_once_closed() -> None:
    h = Harness()
    h.handshake()
    refused = h.command(inp.ForgetVm(tick=h.tick))
    assert [type(e) for e in refused] == [ev.CommandRejected]
    assert isinstance(refused[0], ev.CommandRejected) and refused[0].command == "x-hvdm-forget"
    assert h.state.protocol is ProtocolState.IDLE
    h.feed(inp.ChannelClosed(tick=h.tick, reason="guest left"))
    assert h.command(inp.ForgetVm(tick=h.tick, reason="operator")) == [ev.VmForgotten(reason="operator")]


def test_retention_forgets_a_vm_closed_for_retention_ticks_and_a_reopen_restarts_it() -> None:
    h = Harness(config=replace(FAST, retention_ticks=5))
    h.handshake()
    assert h.advance_ticks(10) == []  # connected: never retired
    h.feed(inp.ChannelClosed(tick=h.tick, reason="guest left"))
    assert h.advance_ticks(1) == [ev.RetentionStarted(since_tick=h.tick)]
    assert h.advance_ticks(2) == []
    h.open()  # back within the retention time: the countdown stops
    assert h.state.retention_since_tick is None
    h.feed(inp.ChannelClosed(tick=h.tick, reason="guest left again"))
    started = h.tick + 1
    assert h.advance_ticks(5) == [ev.RetentionStarted(since_tick=started)]
    assert h.advance_ticks(1) == [ev.VmForgotten(reason="retention")]
