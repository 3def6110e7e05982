"""Version negotiation, capabilities and trans_id rules (guest-behaviour.md 2)."""

from __future__ import annotations

import pytest

from services.dm_protocol import (
    BalloonRequest,
    CapabilitiesReport,
    CapabilitiesResponse,
    HotAddRequest,
    StatusReport,
    VersionRequest,
    VersionResponse,
    encode,
)
from services.guest_sim import GuestConfig, SimulatedGuest
from tests.guest_sim.host_script import dec, ready_guest, send

WIN10, WIN8, WIN7 = 0x20000, 0x10000, 0x3


def _guest(**config: object) -> SimulatedGuest:
    return SimulatedGuest(GuestConfig(workload="idle", **config))  # type: ignore[arg-type]


def test_first_message_is_version_2_0_with_trans_id_1() -> None:
    g = _guest()
    out = g.connect(0.0)
    assert [b.hex() for b in out] == ["01001000010000000000020000000000"]
    assert g.snapshot()["state"] == "negotiating_version"


def test_accepted_at_once_caps_report_is_trans_id_2_with_linux_caps() -> None:
    g = _guest()
    g.connect(0.0)
    out = g.receive(encode(VersionResponse(is_accepted=True, trans_id=77)), 0.1)
    # Spec vector V2 with trans_id 2: caps 0x1F, min_page_cnt 0, max_page_number all ones.
    assert [b.hex() for b in out] == ["03002000020000001f000000000000000000000000000000ffffffffffffffff"]
    assert g.receive(encode(CapabilitiesResponse(is_accepted=True)), 0.2) == []
    snap = g.snapshot()
    assert snap["state"] == "initialized"
    assert snap["negotiated_version"] == WIN10


def test_fallback_2_0_then_1_0_then_0_3_then_give_up() -> None:
    g = _guest()
    sent = dec(g.connect(0.0))
    sent += send(g, VersionResponse(is_accepted=False), 0.1)
    sent += send(g, VersionResponse(is_accepted=False), 0.2)
    assert [(m.version, m.is_last_attempt, m.trans_id) for m in sent] == [  # type: ignore[union-attr]
        (WIN10, False, 1),
        (WIN8, False, 2),
        (WIN7, True, 3),
    ]
    assert not g.closed
    assert send(g, VersionResponse(is_accepted=False), 0.3) == []
    assert g.closed
    snap = g.snapshot()
    assert snap["state"] == "closed" and snap["close_reason"] == "EPROTO"
    # Closed: no status thread, nothing later, and host messages are only flagged.
    assert g.poll(100.0) == []
    assert send(g, BalloonRequest(num_pages=512), 101.0) == []
    assert g.snapshot()["host_violations"][-1]["reason"] == "channel_not_open"


@pytest.mark.parametrize(("rejections", "version", "caps_id"), [(1, WIN8, 3), (2, WIN7, 4)])
def test_acceptance_after_fallback(rejections: int, version: int, caps_id: int) -> None:
    g = _guest()
    g.connect(0.0)
    for _ in range(rejections):
        g.receive(encode(VersionResponse(is_accepted=False)), 0.1)
    caps = send(g, VersionResponse(is_accepted=True), 0.2)
    assert len(caps) == 1 and isinstance(caps[0], CapabilitiesReport)
    assert caps[0].trans_id == caps_id
    send(g, CapabilitiesResponse(is_accepted=True), 0.3)
    assert g.snapshot()["negotiated_version"] == version


def test_whole_version_negotiation_times_out_after_5_s() -> None:
    g = _guest()
    g.connect(10.0)
    g.receive(encode(VersionResponse(is_accepted=False)), 12.0)  # fallbacks share the one window
    assert g.poll(14.99) == [] and not g.closed
    assert g.poll(15.0) == []
    assert g.closed and g.snapshot()["close_reason"] == "ETIMEDOUT"


def test_caps_rejected_closes_the_channel() -> None:
    g = _guest()
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 0.0)
    assert send(g, CapabilitiesResponse(is_accepted=False), 0.5) == []
    assert g.closed and g.snapshot()["close_reason"] == "EPROTO"
    assert g.poll(200.0) == []


def test_caps_response_timeout_is_5_s_after_the_caps_report() -> None:
    g = _guest()
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 3.0)
    g.poll(7.99)
    assert not g.closed
    g.poll(8.0)
    assert g.closed and g.snapshot()["close_reason"] == "ETIMEDOUT"


def test_any_caps_response_completes_the_version_wait() -> None:
    """Section 2.2 item 6: the probe waits on one completion that a caps response also completes."""
    g = _guest()
    g.connect(0.0)
    out = send(g, CapabilitiesResponse(is_accepted=True), 0.1)
    assert len(out) == 1 and isinstance(out[0], CapabilitiesReport)
    assert g.snapshot()["negotiated_version"] == WIN10
    assert g.snapshot()["host_violations"][0]["reason"] == "unsolicited_caps_response"


def test_late_version_rejection_makes_linux_send_the_next_fallback() -> None:
    g = ready_guest()
    out = send(g, VersionResponse(is_accepted=False), 1.0)
    assert len(out) == 1 and isinstance(out[0], VersionRequest)
    assert (out[0].version, out[0].is_last_attempt, out[0].trans_id) == (WIN8, False, 3)
    assert g.snapshot()["host_violations"][0]["reason"] == "unsolicited_version_response"
    assert g.snapshot()["state"] == "initialized"


def test_trans_ids_rise_by_one_per_guest_message_and_never_echo_the_host() -> None:
    g = _guest()
    ids = [m.trans_id for m in dec(g.connect(0.0))]
    ids += [m.trans_id for m in send(g, VersionResponse(is_accepted=True, trans_id=1000), 0.0)]
    send(g, CapabilitiesResponse(is_accepted=True, trans_id=1001), 0.0)
    ids += [m.trans_id for m in send(g, BalloonRequest(num_pages=300_000, trans_id=1002), 1.0)]
    ids += [m.trans_id for m in dec(g.poll(120.0))]
    assert ids == list(range(1, len(ids) + 1))
    assert len(ids) > 60  # 3 balloon responses and many status reports


def test_resume_keeps_the_counter_and_skips_1_0_after_a_1_0_negotiation() -> None:
    """Section 2.2 item 5: next_version is set to 1.0 only at the first probe."""
    g = _guest()
    g.connect(0.0)
    g.receive(encode(VersionResponse(is_accepted=False)), 0.0)  # -> 1.0
    g.receive(encode(VersionResponse(is_accepted=True)), 0.0)
    g.receive(encode(CapabilitiesResponse(is_accepted=True)), 0.0)
    before = g.snapshot()["trans_id"]
    out = dec(g.resume(10.0))
    assert isinstance(out[0], VersionRequest)
    assert (out[0].version, out[0].trans_id) == (WIN10, before + 1)
    out = send(g, VersionResponse(is_accepted=False), 10.1)
    assert isinstance(out[0], VersionRequest)
    assert (out[0].version, out[0].is_last_attempt) == (WIN7, True)


def test_resume_does_not_rearm_the_status_delay() -> None:
    g = ready_guest()
    assert any(isinstance(m, StatusReport) for m in dec(g.poll(60.0)))
    g.resume(61.0)
    g.receive(encode(VersionResponse(is_accepted=True)), 61.0)
    g.receive(encode(CapabilitiesResponse(is_accepted=True)), 61.0)
    assert any(isinstance(m, StatusReport) for m in dec(g.poll(63.0)))


def test_reboot_is_a_new_kernel_counter_restarts_and_memory_is_back_to_boot() -> None:
    g = ready_guest()
    send(g, BalloonRequest(num_pages=4096), 1.0)
    send(g, HotAddRequest(range=(0x100000, 32768)), 2.0)
    assert g.snapshot()["ballooned_pages"] == 4096 and g.snapshot()["total_ram_pages"] > 1 << 20
    out = dec(g.reboot(5.0))
    assert isinstance(out[0], VersionRequest) and out[0].trans_id == 1
    snap = g.snapshot()
    assert (snap["ballooned_pages"], snap["hot_added_pages"], snap["total_ram_pages"]) == (0, 0, 1 << 20)
    assert snap["boot_count"] == 2 and snap["state"] == "negotiating_version"


def test_connect_twice_is_a_programming_error() -> None:
    g = _guest()
    g.connect(0.0)
    with pytest.raises(RuntimeError):
        g.connect(1.0)


def test_time_must_not_go_backwards() -> None:
    g = ready_guest(now=10.0)
    with pytest.raises(ValueError):
        g.poll(9.0)
