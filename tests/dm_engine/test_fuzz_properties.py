"""Hypothesis: random bytes and adversarial message sequences never raise and never break the
accounting invariants (checked by the harness after every event)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dm_engine import inputs as inp
from services.dm_protocol import (
    BalloonResponse,
    CapabilitiesReport,
    HotAddResponse,
    HotRemoveResponse,
    Message,
    StatusReport,
    UnballoonResponse,
    VersionRequest,
    encode,
)
from tests.dm_engine.harness import Harness

BOOT_PAGES = 1 << 18  # 1 GiB guest keeps the universes small enough to hit edges

page = st.integers(0, 2 * BOOT_PAGES) | st.integers(0, (1 << 40) - 1)
prange = st.tuples(page, st.integers(0, 4096) | st.integers(0, (1 << 24) - 1))
ranges = st.lists(prange, max_size=20).map(tuple)

guest_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(VersionRequest, version=st.sampled_from([3, 0x10000, 0x20000, 0x30000]) | st.integers(0, 2**32 - 1)),
    st.builds(
        CapabilitiesReport,
        balloon=st.booleans(),
        hot_add=st.booleans(),
        hot_add_alignment=st.integers(0, 15),
        hot_remove=st.booleans(),
    ),
    st.builds(StatusReport, num_avail=st.integers(0, 2**64 - 1), num_committed=st.integers(0, 2**64 - 1)),
    st.builds(BalloonResponse, more_pages=st.booleans(), ranges=ranges),
    st.builds(UnballoonResponse),
    st.builds(HotAddResponse, page_count=st.integers(0, 2**32 - 1), result=st.integers(0, 2)),
    st.builds(HotRemoveResponse, result=st.integers(0, 1), more_pages=st.booleans(), ranges=ranges),
)

steps = st.one_of(
    guest_messages.map(lambda m: ("msg", m)),
    st.binary(max_size=64).map(lambda b: ("raw", b)),
    st.integers(1, 80).map(lambda n: ("ticks", n)),
    st.integers(-1, 3 * BOOT_PAGES).map(lambda p: ("target", p)),
    st.sampled_from(["add", "plug", "remove", "vmbus_reset", "system_reset", "close", "open"]).map(
        lambda c: ("cmd", c)
    ),
)


def run(h: Harness, program: list[tuple[str, object]]) -> None:
    for kind, arg in program:
        if kind == "msg":
            assert isinstance(
                arg,
                (
                    VersionRequest,
                    CapabilitiesReport,
                    StatusReport,
                    BalloonResponse,
                    UnballoonResponse,
                    HotAddResponse,
                    HotRemoveResponse,
                ),
            )
            h.raw(encode(arg))
        elif kind == "raw":
            assert isinstance(arg, bytes)
            h.raw(arg)
        elif kind == "ticks":
            assert isinstance(arg, int)
            h.advance_ticks(arg)
        elif kind == "target":
            assert isinstance(arg, int)
            h.feed(inp.SetTarget(tick=h.tick, target_bytes=arg << 12))
        elif arg == "add":
            h.feed(inp.AddBackend(tick=h.tick, backend_id="m", size_bytes=1 << 30))
        elif arg == "plug":
            h.feed(inp.PlugBackend(tick=h.tick, backend_id="m"))
        elif arg == "remove":
            h.feed(inp.RemoveBackend(tick=h.tick, backend_id="m"))
        elif arg == "vmbus_reset":
            h.feed(inp.VmbusReset(tick=h.tick))
        elif arg == "system_reset":
            h.feed(inp.SystemReset(tick=h.tick))
        elif arg == "close":
            h.feed(inp.ChannelClosed(tick=h.tick))
        else:
            h.open()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=60))
def test_adversarial_sequences_keep_invariants(program: list[tuple[str, object]]) -> None:
    h = Harness(boot_bytes=BOOT_PAGES << 12, maxmem_bytes=8 * BOOT_PAGES << 12)
    h.handshake()
    run(h, program)
    # Accounting identities the invariants imply, restated from the outside.
    s = h.state
    assert s.current_pages == s.boot_pages + s.hot_added_pages - s.ballooned_pages
    assert 0 <= s.ballooned_pages <= s.owned.page_count


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_in_every_state_never_raise(data: bytes) -> None:
    h = Harness(boot_bytes=BOOT_PAGES << 12)
    h.raw(data)  # closed
    h.open()
    h.raw(data)  # version
    h.guest(VersionRequest(version=0x20000))
    h.raw(data)  # caps
    h.guest(CapabilitiesReport(balloon=True, hot_add=True, hot_add_alignment=7))
    h.advance_ticks(h.config.post_init_wait_ticks)
    h.set_target_pages(BOOT_PAGES // 2)
    h.raw(data)  # balloon reply wait
    assert h.state.current_pages <= BOOT_PAGES
