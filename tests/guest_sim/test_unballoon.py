"""Unballoon (guest-behaviour.md 5): immediate, exact, one response after more_pages = 0."""

from __future__ import annotations

from services.dm_protocol import BalloonRequest, BalloonResponse, UnballoonRequest, UnballoonResponse, encode
from tests.guest_sim.host_script import balloon, dec, only, ready_guest, send


def test_no_response_until_more_pages_is_0_then_exactly_one() -> None:
    g = ready_guest()
    responses = balloon(g, 300_000)
    ranges = [r for resp in responses for r in resp.ranges]
    before = g.snapshot()
    out = send(g, UnballoonRequest(more_pages=True, ranges=tuple(ranges[:100])), 2.0)
    assert out == []
    assert g.snapshot()["ballooned_pages"] == 300_000 - 100 * 512  # freed at once, not at the end
    assert g.snapshot()["state"] == "balloon_down"
    out = send(g, UnballoonRequest(more_pages=False, ranges=tuple(ranges[100:200])), 2.5)
    assert len(out) == 1 and isinstance(out[0], UnballoonResponse)
    assert out[0].trans_id == before["trans_id"] + 1
    assert encode(out[0]) == bytes.fromhex("0900080000000000")[:4] + out[0].trans_id.to_bytes(4, "little")
    snap = g.snapshot()
    assert snap["ballooned_pages"] == 300_000 - 200 * 512
    assert snap["free_pages"] == before["free_pages"] + 200 * 512
    assert snap["state"] == "initialized"
    assert g.memory.problems() == []


def test_frees_exactly_the_listed_pages_in_any_split_or_merge() -> None:
    g = ready_guest()
    responses = balloon(g, 2048)
    (a, _), (b, _), (c, _), (d, _) = sorted(responses[0].ranges)
    # Merge two adjacent 2 MiB ranges into one, and split another in odd pieces.
    send(g, UnballoonRequest(more_pages=False, ranges=((a, 1024), (c, 7), (c + 7, 100))), 2.0)
    assert (b, c, d) == (a + 512, a + 1024, a + 1536)  # taken from the top, so adjacent
    assert g.memory.ballooned.to_list() == [(c + 107, 1024 - 107)]
    assert g.snapshot()["ballooned_pages"] == 2048 - 1024 - 107
    assert g.snapshot()["host_violations"] == []


def test_pages_never_ballooned_are_flagged_not_freed() -> None:
    g = ready_guest()
    [response] = balloon(g, 512)
    start = response.ranges[0][0]
    free_before = g.snapshot()["free_pages"]
    out = send(g, UnballoonRequest(more_pages=False, ranges=((start, 512), (start, 512), (0x100, 16))), 2.0)
    assert len(out) == 1 and isinstance(out[0], UnballoonResponse)  # the guest still answers
    reasons = [v["reason"] for v in g.snapshot()["host_violations"]]
    assert reasons == ["unballoon_not_ballooned", "unballoon_not_ballooned"]
    assert g.snapshot()["host_violations"][1]["ranges"] == [(0x100, 16)]
    assert g.snapshot()["free_pages"] == free_before + 512
    assert g.memory.problems() == []


def test_pages_outside_ram_are_flagged() -> None:
    g = ready_guest()
    send(g, UnballoonRequest(more_pages=False, ranges=((1 << 30, 4),)), 2.0)
    [violation] = g.snapshot()["host_violations"]
    assert violation["reason"] == "unballoon_outside_ram" and violation["ranges"] == [(1 << 30, 4)]


def test_unballoon_is_processed_in_the_middle_of_a_balloon_up() -> None:
    g = ready_guest(instant=False)
    g.receive(encode(BalloonRequest(num_pages=300_000)), 10.0)
    first = only(dec(g.poll(10.3)), BalloonResponse)[0]
    out = send(g, UnballoonRequest(more_pages=False, ranges=first.ranges[:10]), 10.31)
    assert [type(m) for m in out] == [UnballoonResponse]
    rest = only(dec(g.poll(11.0)), BalloonResponse)
    assert [r.more_pages for r in rest] == [True, False]
    assert g.snapshot()["ballooned_pages"] == 300_000 - 10 * 512


def test_hibernation_capable_guest_ignores_balloon_and_unballoon() -> None:
    g = ready_guest(hibernation_capable=True)
    assert send(g, BalloonRequest(num_pages=1024), 1.0) == []
    assert send(g, UnballoonRequest(more_pages=False, ranges=((0x1000, 1),)), 1.0) == []
    snap = g.snapshot()
    assert snap["ballooned_pages"] == 0 and snap["host_violations"] == []
