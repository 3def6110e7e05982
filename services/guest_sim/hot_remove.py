"""Hot-remove for the Windows profile (protocol-2.0 extension; Linux ignores type 13).

Why this shape: guest-behaviour.md 8 records the only published guest behaviour, the unmerged 2019
Linux RFC: whole memory blocks are offlined and removed, hot-added ones first, the answer is split
into messages of at most (4096 - 24) / 8 = 509 ranges with ``more_pages`` on all but the last, and
``result`` is 0 when ranges are returned and 1 for an empty reply (inverted compared with hot-add;
recorded as the RFC has it). QEMU notes Windows returns at most 585,728 pages per hot-remove.

What we add, because a host (hvdm's engine) treats only hot-added, not ballooned pages as valid
hot-remove pages: the part that is not a whole block is taken from free *hot-added* pages, never
from boot RAM, instead of being ballooned from anywhere as the RFC did.
"""

from __future__ import annotations

from typing import Final

from ..dm_protocol import HotRemoveResponse
from .hot_add import HotAdder
from .memory import GuestMemory

MAX_RANGES_PER_HOT_REMOVE: Final = 509
#: "the maximum number of pages that Windows returns in one hot remove response" (QEMU).
MAX_HOT_REMOVE_PAGES: Final = 585_728


def hot_remove(memory: GuestMemory, hot_adder: HotAdder, page_count: int) -> list[tuple[int, int]]:
    """Give back up to ``page_count`` hot-added pages; returns the removed ranges, ascending.

    Whole blocks are taken from the top down (so each is the top of its region and the region
    bookkeeping can shrink); a block is skipped if it holds ballooned pages or its used pages cannot
    be migrated. The remainder comes from the highest free hot-added pages.
    """
    chunk = hot_adder.chunk
    wanted = min(page_count, MAX_HOT_REMOVE_PAGES)
    removed: list[tuple[int, int]] = []
    for start, count in reversed(list(hot_adder.added_blocks)):
        block = start + count - chunk
        while block >= start and wanted >= chunk:
            onlined = memory.take_offline(block, chunk)
            if onlined is None:
                break
            hot_adder.forget_block(block, onlined)
            removed.append((block, chunk))
            wanted -= chunk
            block -= chunk
        if wanted < chunk:
            break
    if wanted:
        spans = memory.free.peek_highest(wanted, MAX_RANGES_PER_HOT_REMOVE, lo=memory.boot_end_page)
        for start, count in spans:
            taken = memory.take_offline(start, count)
            if taken:
                hot_adder.num_pages_onlined -= taken
                hot_adder.num_pages_added -= taken
                removed.append((start, count))
    return sorted(removed)


def hot_remove_responses(ranges: list[tuple[int, int]]) -> list[HotRemoveResponse]:
    """Split ``ranges`` into messages of at most 509 ranges; one empty message (result 1) if none."""
    if not ranges:
        return [HotRemoveResponse(result=1, more_pages=False, ranges=())]
    chunks = [ranges[i : i + MAX_RANGES_PER_HOT_REMOVE] for i in range(0, len(ranges), MAX_RANGES_PER_HOT_REMOVE)]
    return [
        HotRemoveResponse(result=0, more_pages=i < len(chunks) - 1, ranges=tuple(part)) for i, part in enumerate(chunks)
    ]
