"""advance: QEMU's IDLE handler. When the VM is idle and its size differs from the target, start
the next transaction (give ballooned pages back first, then hot-add; hot-remove or balloon to
shrink). One call is one step of the state machine: it starts at most one transaction.
"""

from __future__ import annotations

from ..vdimm_allocator import plan_chunk
from . import events as ev
from .config import MAX_RANGE_PAGES, EngineConfig
from .machine import ProtocolState
from .state import VmState, hot_added_part

DEFAULT_CONFIG = EngineConfig()


def advance(state: VmState, now: int, config: EngineConfig = DEFAULT_CONFIG) -> list[ev.Event]:
    """QEMU's IDLE handler: start the transaction that moves the VM toward its target.

    Growth gives ballooned pages back first, then hot-adds; shrinking hot-removes hot-added
    memory when the guest supports it (protocol 2.0) and balloons the rest.
    """
    if (
        state.protocol is not ProtocolState.IDLE
        or not state.target_pending
        or state.target_pages is None
        or now < state.retry_at_tick
    ):
        return []
    caps = state.caps
    assert caps is not None
    target = state.target_pages
    current = state.current_pages
    if target > current:
        diff = target - current
        unballoon = min(diff, state.ballooned.page_count)
        if unballoon > 0:
            return _unballoon_messages(state, unballoon, now, config)
        if caps.hot_add:
            chunk = plan_chunk(state.layout, diff)
            if chunk is not None:
                return [
                    ev.HotAddRequested(
                        trans_id=state.trans_id,
                        backend_id=chunk.backend_id,
                        start_page=chunk.start_page,
                        page_count=chunk.page_count,
                        tick=now,
                    )
                ]
        return []
    if target < current and caps.balloon:
        diff = current - target
        if config.use_hot_remove and caps.hot_remove and not state.hot_remove_tried:
            removable = hot_added_part(state).page_count
            if removable:
                return [
                    ev.HotRemoveRequested(
                        trans_id=state.trans_id,
                        page_count=min(diff, removable, config.balloon_request_max_pages),
                        tick=now,
                    )
                ]
        return [
            ev.BalloonRequested(
                trans_id=state.trans_id, num_pages=min(diff, config.balloon_request_max_pages), tick=now
            )
        ]
    return []


def _unballoon_windows(state: VmState) -> list[tuple[int, int]]:
    """[lo, hi) page windows in the order memory is given back: boot RAM first (the least
    valuable to keep ballooned), then each vDIMM in ascending address order, as QEMU's v2 did."""
    windows = [(start, start + count) for start, count in state.ram]
    windows.extend((v.start_page, v.end_page) for v in state.layout.vdimms)
    return windows


def _unballoon_messages(state: VmState, pages: int, now: int, config: EngineConfig) -> list[ev.Event]:
    """Pack the pages to give back into as few UNBALLOON_REQUEST messages as possible.

    QEMU sends one range per message; we pack up to ``unballoon_max_ranges`` ranges (a 4 KiB
    message), highest addresses first within each window.
    """
    chosen: list[tuple[int, int]] = []
    remaining = pages
    for lo, hi in _unballoon_windows(state):
        if remaining <= 0:
            break
        picked = state.ballooned.peek_highest(remaining, 1 << 62, lo, hi)
        for start, count in picked:
            remaining -= count
            # A range's count is 24 bits on the wire: split from the top, like pop_highest.
            while count > MAX_RANGE_PAGES:
                count -= MAX_RANGE_PAGES
                chosen.append((start + count, MAX_RANGE_PAGES))
            chosen.append((start, count))
    per_message = config.unballoon_max_ranges
    out: list[ev.Event] = []
    for first in range(0, len(chosen), per_message):
        batch = tuple(chosen[first : first + per_message])
        out.append(
            ev.UnballoonRequested(
                trans_id=state.trans_id,
                ranges=batch,
                pages=sum(c for _, c in batch),
                more_pages=first + per_message < len(chosen),
                tick=now,
            )
        )
    return out
