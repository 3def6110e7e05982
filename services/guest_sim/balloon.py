"""The balloon-up worker: turn one BALLOON_REQUEST into the sequence of BALLOON_RESPONSE messages.

Why a generator of messages: Linux builds one message, sends it, attempts a status report, then
allocates the next one (guest-behaviour.md 4, "Message loop"). Yielding one message per pass lets
the guest interleave status reports and spread the passes over simulated time, while the
allocation of each pass still happens at its own moment.

Linux (section 4): clamp against the floor, allocate naturally aligned 512-page units (lowest free
memory first, ascending, as the real guest of ``../shared/realguest`` does), drop to
single pages for the rest of the transaction as soon as a 2 MiB pass gets nothing, at most 510
ranges per message, ``more_pages`` on all but the last, single pages never merged. The worked
sequences of section 4 are reproduced by ``tests/guest_sim/test_balloon.py``.

Windows (our model; no published algorithm): the same clamp, 2 MiB units first and single pages for
what remains, but each message carries *coalesced* ranges (up to 510, each below 2**24 pages).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from ..dm_protocol import BalloonResponse
from .memory import PAGES_IN_2M, GuestMemory

#: (4096 - 16) / 8: the most ranges that fit in one 4096-byte message (section 4).
MAX_RANGES_PER_MESSAGE: Final = 510
#: Largest page_cnt a wire range can carry (24 bits).
MAX_RANGE_PAGES: Final = (1 << 24) - 1


def clamp_to_floor(memory: GuestMemory, num_pages: int) -> int:
    """Step 1: ``A < N or A - N < F`` gives ``A - F`` if ``A > F`` else 0, measured now."""
    avail = memory.available_pages
    floor = memory.floor_pages()
    if avail < num_pages or avail - num_pages < floor:
        return avail - floor if avail > floor else 0
    return num_pages


def linux_balloon_up(memory: GuestMemory, num_pages: int, *, clamp: bool = True) -> Iterator[BalloonResponse]:
    """``balloon_up``: yields the responses of one transaction (trans_id left 0 for the sender).

    ``clamp`` False skips the floor (used by the ``beyond_request`` misbehaviour only).
    """
    if clamp:
        num_pages = clamp_to_floor(memory, num_pages)
    unit = PAGES_IN_2M
    num_ballooned = 0
    while True:
        num_pages -= num_ballooned
        if unit == 1:
            ranges = memory.take_lowest_single_pages(min(num_pages, MAX_RANGES_PER_MESSAGE))
        else:
            ranges = memory.take_lowest_aligned_units(min(num_pages // unit, MAX_RANGES_PER_MESSAGE), unit)
        num_ballooned = len(ranges) * unit
        if unit != 1 and num_ballooned == 0:
            unit = 1  # permanently, for the rest of this transaction; nothing is sent
            continue
        last = num_ballooned in (0, num_pages)
        yield BalloonResponse(more_pages=not last, ranges=tuple(ranges))
        if last:
            return


def windows_balloon_up(memory: GuestMemory, num_pages: int) -> Iterator[BalloonResponse]:
    """Windows-like ballooning: 2 MiB units, then single pages, ranges coalesced per message."""
    num_pages = clamp_to_floor(memory, num_pages)
    remaining = num_pages
    aligned_phase = True
    while True:
        spans: list[tuple[int, int]] = []
        if aligned_phase:
            spans = memory.take_aligned(
                remaining // PAGES_IN_2M,
                PAGES_IN_2M,
                max_spans=MAX_RANGES_PER_MESSAGE,
                max_span_pages=MAX_RANGE_PAGES // PAGES_IN_2M * PAGES_IN_2M,
            )
            if not spans:
                aligned_phase = False
        if not aligned_phase:
            spans = memory.take_pages(min(remaining, MAX_RANGE_PAGES), max_spans=MAX_RANGES_PER_MESSAGE)
        got = sum(c for _, c in spans)
        remaining -= got
        last = got == 0 or remaining == 0
        yield BalloonResponse(more_pages=not last, ranges=tuple(sorted(spans)))
        if last:
            return
