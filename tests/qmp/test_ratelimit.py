"""QEMU's event throttle, checked against a direct model of its timer semantics."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.qmp.ratelimit import RateLimiter


def test_first_event_passes_then_latest_wins_and_timer_rearms() -> None:
    r: RateLimiter[int] = RateLimiter(1.0)
    assert r.offer(1, now=0.0) == [1]
    assert r.offer(2, now=0.1) == []
    assert r.offer(3, now=0.9) == []
    assert r.poll(now=1.0) == [3]  # fired at 1.0, re-armed until 2.0
    assert r.offer(4, now=1.5) == []
    assert r.poll(now=2.0) == [4]
    assert r.poll(now=3.0) == []  # nothing pending at 3.0: idle again
    assert not r.armed
    assert r.offer(5, now=3.2) == [5]


def test_a_late_poll_still_emits_once_and_goes_idle() -> None:
    r: RateLimiter[str] = RateLimiter(1.0)
    r.offer("a", now=0.0)
    r.offer("b", now=0.5)
    assert r.poll(now=10.0) == ["b"]
    assert not r.armed
    assert r.offer("c", now=10.0) == ["c"]


@given(st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.booleans()), max_size=60))
def test_at_most_one_emission_per_period_and_the_last_event_is_never_lost(
    steps: list[tuple[float, bool]],
) -> None:
    """Feed events (True) and polls (False) at non-decreasing times."""
    r: RateLimiter[int] = RateLimiter(1.0)
    now = 0.0
    emitted: list[tuple[float, int]] = []
    last_offered = None
    for n, (dt, is_event) in enumerate(steps):
        now += dt
        out = r.offer(n, now) if is_event else r.poll(now)
        if is_event:
            last_offered = n
        emitted.extend((now, x) for x in out)
    emitted.extend((now + 100, x) for x in r.poll(now + 100))
    # Emission order follows offer order, and nothing is emitted twice.
    items = [x for _, x in emitted]
    assert items == sorted(set(items))
    # The most recent event always gets out eventually.
    if last_offered is not None:
        assert items[-1] == last_offered
    assert not r.armed
