"""Untrusted guests: every misbehaviour becomes a GuestViolation with exact ranges, and the
accounting stays right (the harness checks the invariants after every event)."""

from __future__ import annotations

from services.dm_engine import ProtocolState
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    HotAddResponse,
    StatusReport,
    UnballoonResponse,
    VersionRequest,
    VersionResponse,
    encode,
)
from tests.dm_engine.harness import GIB_PAGES, Harness


def violation_events(h: Harness) -> list[ev.GuestViolation]:
    return [e for e in h.events if isinstance(e, ev.GuestViolation)]


def ballooning(h: Harness, pages: int = 4096) -> None:
    h.handshake()
    h.set_target_pages(h.state.boot_pages - pages)


def test_pages_outside_ram_are_dropped_not_counted() -> None:
    h = Harness(boot_bytes=1 << 30)
    ballooning(h)
    boot = h.state.boot_pages
    # Half inside boot RAM, half beyond it (a hole: nothing is there).
    h.guest(BalloonResponse(more_pages=False, ranges=((boot - 256, 512),)))
    v = violation_events(h)
    assert [x.reason for x in v] == ["PAGES_NOT_OWNED"]
    assert v[0].ranges == ((boot, 256),)
    assert h.state.ballooned_pages == 256


def test_double_free_across_and_within_messages() -> None:
    h = Harness()
    ballooning(h)
    h.guest(BalloonResponse(more_pages=True, ranges=((1000, 10), (1005, 10))))  # 1005..1009 twice
    h.guest(BalloonResponse(more_pages=False, ranges=((1000, 4), (2000, 4))))  # 1000..1003 again
    v = violation_events(h)
    assert [(x.reason, x.ranges) for x in v] == [
        ("DOUBLE_FREE", ((1005, 5),)),
        ("DOUBLE_FREE", ((1000, 4),)),
    ]
    assert h.state.ballooned_pages == 15 + 4


def test_pages_beyond_request_are_flagged_but_accounted() -> None:
    h = Harness()
    ballooning(h, pages=512)
    h.guest(BalloonResponse(more_pages=False, ranges=((0, 1024),)))
    v = violation_events(h)
    assert [x.reason for x in v] == ["PAGES_BEYOND_REQUEST"]
    assert "512 pages beyond" in v[0].detail
    assert h.state.counters.balloon_out_pages_total == 1024
    # The surplus is given straight back to reach the target.
    assert h.state.ballooned_pages == 512
    assert h.state.current_pages == h.state.target_pages


def test_responses_in_the_wrong_state() -> None:
    h = Harness()
    h.handshake()
    h.guest(BalloonResponse(more_pages=False, ranges=((0, 512),)))
    h.guest(UnballoonResponse())
    h.guest(HotAddResponse(page_count=1, result=1))
    h.guest(VersionRequest(version=0x20000))
    assert [x.reason for x in violation_events(h)] == ["UNEXPECTED_MESSAGE"] * 4
    assert h.state.ballooned_pages == 0
    assert h.state.protocol is ProtocolState.IDLE


def test_malformed_messages_each_get_their_reason() -> None:
    h = Harness()
    h.handshake()
    good = encode(StatusReport(num_avail=1, num_committed=2))
    h.raw(good[:20])  # truncated, header size still says 48
    h.raw(b"\x05\x00")  # shorter than a header
    h.raw(b"\x63\x00\x08\x00\x00\x00\x00\x00")  # type 99
    resp = bytearray(encode(BalloonResponse(more_pages=False, ranges=((0, 512),))))
    resp[12] = (5 << 1) & 0xFF  # range_count 5 with one range present
    h.raw(bytes(resp))
    h.raw(encode(VersionResponse(is_accepted=True)))  # a host-to-guest type
    reasons = [x.reason for x in violation_events(h)]
    assert reasons[0] in {"SIZE_MISMATCH", "TRUNCATED"}
    assert reasons[1:] == ["TRUNCATED", "UNKNOWN_TYPE", "RANGE_COUNT_MISMATCH", "WRONG_DIRECTION"]
    assert h.state.protocol is ProtocolState.IDLE


def test_reserved_bits_are_flagged_and_message_still_processed() -> None:
    h = Harness()
    h.open()
    raw = bytearray(encode(VersionRequest(trans_id=1, version=0x20000)))
    raw[12] |= 0x80  # a reserved bit next to is_last_attempt
    h.raw(bytes(raw))
    assert [x.reason for x in violation_events(h)] == ["RESERVED_BITS_SET"]
    assert h.state.protocol is ProtocolState.CAPS


def test_timeout_abandons_and_retries_with_backoff() -> None:
    h = Harness()
    ballooning(h)
    cfg = h.config
    h.advance_ticks(cfg.balloon_timeout_ticks - 1)
    assert h.state.protocol is ProtocolState.BALLOON_REPLY_WAIT
    h.advance_ticks(1)
    timed = [e for e in h.events if isinstance(e, ev.TransactionTimedOut)]
    assert len(timed) == 1 and timed[0].retry_at_tick == h.tick + cfg.retry_backoff_ticks
    assert "TIMEOUT" in [x.reason for x in violation_events(h)]
    assert h.state.protocol is ProtocolState.IDLE
    requests = sum(isinstance(m, BalloonRequest) for m in h.sent)
    h.advance_ticks(cfg.retry_backoff_ticks - 1)
    assert sum(isinstance(m, BalloonRequest) for m in h.sent) == requests
    h.advance_ticks(1)
    assert sum(isinstance(m, BalloonRequest) for m in h.sent) == requests + 1
    # Second timeout doubles the back-off.
    h.advance_ticks(cfg.balloon_timeout_ticks)
    timed = [e for e in h.events if isinstance(e, ev.TransactionTimedOut)]
    assert timed[-1].retry_at_tick == h.tick + 2 * cfg.retry_backoff_ticks


def test_late_balloon_answer_after_timeout_is_still_accounted() -> None:
    h = Harness()
    ballooning(h)
    h.advance_ticks(h.config.balloon_timeout_ticks)
    h.guest(BalloonResponse(more_pages=False, ranges=((0, 512),)))
    assert h.state.ballooned_pages == 512
    assert violation_events(h)[-1].reason == "UNEXPECTED_MESSAGE"


def test_status_report_flood() -> None:
    h = Harness()
    h.handshake()
    limit = h.config.max_status_reports_per_tick
    for _ in range(limit + 3):
        h.guest(StatusReport(num_avail=1, num_committed=1))
    assert h.state.counters.status_reports_total == limit
    assert [x.reason for x in violation_events(h)] == ["STATUS_REPORT_FLOOD"] * 3


def test_hot_add_overclaim_is_clamped() -> None:
    h = Harness()
    h.handshake()
    h.command(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=1 << 30))
    h.command(inp.PlugBackend(tick=h.tick, backend_id="m"))
    h.set_target_pages(h.state.boot_pages + GIB_PAGES)
    h.guest(HotAddResponse(page_count=5 * GIB_PAGES, result=1))
    assert [x.reason for x in violation_events(h)] == ["HOT_ADD_OVERCLAIM"]
    assert h.state.hot_added_pages == GIB_PAGES


def test_messages_on_a_closed_channel_and_malformed_frames() -> None:
    h = Harness()
    h.guest(StatusReport(num_avail=1, num_committed=1))
    h.feed(inp.MalformedFrame(tick=0, reason="BAD_PACKET_TYPE"))
    assert [x.reason for x in violation_events(h)] == ["UNEXPECTED_MESSAGE", "MALFORMED_FRAME"]


def test_commands_are_checked_like_qemu() -> None:
    h = Harness()
    h.open()
    out = h.command(inp.PlugBackend(tick=0, backend_id="nope"))
    assert isinstance(out[0], ev.CommandRejected) and "not found" in out[0].desc
    h.command(inp.AddBackend(tick=0, backend_id="m", size_bytes=1 << 30))
    out = h.command(inp.PlugBackend(tick=0, backend_id="m"))
    assert isinstance(out[0], ev.CommandRejected) and "no guest attached" in out[0].desc
    out = h.command(inp.AddBackend(tick=0, backend_id="m", size_bytes=1 << 30))
    assert isinstance(out[0], ev.CommandRejected) and "duplicate" in out[0].desc
    out = h.command(inp.SetTarget(tick=0, target_bytes=0))
    assert isinstance(out[0], ev.CommandRejected) and out[0].error_class == "GenericError"
