"""Property tests: random sequences of valid host requests never raise and keep the invariants."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    DecodeError,
    HotAddRequest,
    HotRemoveRequest,
    InfoMessage,
    UnballoonRequest,
    decode,
    encode,
)
from services.guest_sim import SimulatedGuest
from services.range_store import PageRangeSet
from tests.guest_sim.host_script import ready_guest

CHUNK = 32768
BOOT = 1 << 19  # 2 GiB guests keep the examples quick

ops = st.one_of(
    st.tuples(st.just("balloon"), st.integers(0, 400_000)),
    st.tuples(st.just("unballoon_owned"), st.integers(0, 1 << 20), st.integers(1, 5000), st.booleans()),
    st.tuples(st.just("unballoon_any"), st.integers(0, 1 << 21), st.integers(0, 5000), st.booleans()),
    st.tuples(
        st.just("hot_add"),
        st.integers(0, 40),
        st.integers(0, 5 * CHUNK),
        st.one_of(st.none(), st.integers(0, 8)),
    ),
    st.tuples(st.just("hot_remove"), st.integers(0, 4 * CHUNK)),
    st.tuples(st.just("poll"), st.floats(0.0, 30.0)),
    st.tuples(st.just("info"), st.integers(0, 3)),
)


def _owned_ranges(host_view: PageRangeSet, pick: int, count: int) -> tuple[tuple[int, int], ...]:
    """Part of what the guest reported as ballooned (the host cannot know of anything else)."""
    ranges = host_view.to_list()
    if not ranges:
        return ()
    start, size = ranges[pick % len(ranges)]
    offset = pick % size
    chosen = (start + offset, min(count, size - offset))
    host_view.remove(*chosen)
    return (chosen,)


def _request(op: tuple, host_view: PageRangeSet) -> bytes | None:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "balloon":
        return encode(BalloonRequest(num_pages=op[1]))
    if kind == "unballoon_owned":
        return encode(UnballoonRequest(more_pages=op[3], ranges=_owned_ranges(host_view, op[1], op[2])))
    if kind == "unballoon_any":
        host_view.remove(op[1], op[2])
        return encode(UnballoonRequest(more_pages=op[3], ranges=((op[1], op[2]),)))
    if kind == "hot_add":
        start = BOOT + op[1] * CHUNK // 2
        region = None if op[3] is None else (start, op[3] * CHUNK)
        return encode(HotAddRequest(range=(start, op[2]), region=region))
    if kind == "hot_remove":
        return encode(HotRemoveRequest(virtual_node=0, page_count=op[1], qos_flags=0))
    if kind == "info":
        return encode(InfoMessage(info_type=op[1], data=struct.pack("<Q", 1 << 20)))
    return None


def _check(g: SimulatedGuest, out: list[bytes], last_id: int, honest: bool, host_view: PageRangeSet) -> int:
    for data in out:
        trans_id = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else None
        assert trans_id == last_id + 1
        last_id = trans_id
        try:
            message = decode(data)
        except DecodeError:
            assert not honest
            continue
        if honest and isinstance(message, BalloonResponse):
            assert len(data) <= 4096
            for start, count in message.ranges:
                # Pages named by an honest guest are its own, ballooned, and named once.
                assert g.memory.ballooned.overlap_count(start, count) == count
                assert host_view.add(start, count) == count
    assert g.memory.problems() == []
    snap = g.snapshot()
    assert snap["ballooned_pages"] + snap["free_pages"] + snap["used_pages"] == snap["total_ram_pages"]
    assert not g.memory.online.difference(g.memory.ballooned.to_list())
    assert snap["managed_pages"] == snap["total_ram_pages"] - snap["reserved_pages"] - snap["ballooned_pages"]
    # Online RAM is boot RAM plus exactly the hot-added pages the guest onlined.
    assert snap["total_ram_pages"] == snap["boot_pages"] + snap["onlined_pages"]
    return last_id


def _play(profile: str, instant: bool, workload: str, script: list[tuple]) -> None:  # type: ignore[type-arg]
    g = ready_guest(profile=profile, instant=instant, workload=workload, boot_bytes=BOOT * 4096, seed=7)
    honest = profile in ("linux", "windows")
    last_id = g.snapshot()["trans_id"]
    host_view = PageRangeSet()
    now = 1.0
    for op in script:
        if op[0] == "poll":
            now += op[1]
            out = g.poll(now)
        else:
            data = _request(op, host_view)
            assert data is not None
            out = g.receive(data, now)
        last_id = _check(g, out, last_id, honest, host_view)
    last_id = _check(g, g.poll(now + 120.0), last_id, honest, host_view)
    if honest:
        assert not g.snapshot()["misbehaviour_sent"]


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(script=st.lists(ops, max_size=25), instant=st.booleans(), workload=st.sampled_from(["idle", "bursty", "leak"]))
def test_linux_random_requests(script: list[tuple], instant: bool, workload: str) -> None:  # type: ignore[type-arg]
    _play("linux", instant, workload, script)


@SETTINGS
@given(script=st.lists(ops, max_size=25), instant=st.booleans())
def test_windows_random_requests(script: list[tuple], instant: bool) -> None:  # type: ignore[type-arg]
    _play("windows", instant, "steady", script)


@SETTINGS
@given(script=st.lists(ops, max_size=25), instant=st.booleans())
def test_malicious_random_requests(script: list[tuple], instant: bool) -> None:  # type: ignore[type-arg]
    _play("malicious", instant, "diurnal", script)


@settings(max_examples=40, deadline=None)
@given(script=st.lists(ops, max_size=15))
def test_same_script_same_bytes(script: list[tuple]) -> None:  # type: ignore[type-arg]
    def run() -> list[bytes]:
        g = ready_guest(profile="linux", workload="bursty", boot_bytes=BOOT * 4096, seed=3)
        out: list[bytes] = []
        host_view = PageRangeSet([(0, BOOT)])
        now = 1.0
        for op in script:
            if op[0] == "poll":
                now += op[1]
                out += g.poll(now)
            else:
                out += g.receive(_request(op, host_view) or b"", now)
        return out

    assert run() == run()
