"""The guest's memory: which pages are free, used, ballooned, online; MemAvailable and the floor.

Why concrete page ranges: balloon responses must name real pages the guest owns, unballoon must
free exactly the listed pages, and a host test must be able to check that ballooned pages are inside
RAM and never also free. So every online page is in exactly one of three ``PageRangeSet`` s
(``free``, ``used``, ``ballooned``), and ``online`` is their union. Memory stays O(ranges): a
256 GiB guest with a contiguous free area costs a handful of ranges.

Placement, chosen to keep the sets small and behaviour legible:

* the kernel's reserved pages are ``[0, reserved)`` and never move;
* the workload's pages are taken from the *lowest* free pages and given back from the *highest*
  used ones;
* the Linux balloon takes the *lowest* free pages first, in ascending order: that is what a real
  Linux 6.1 guest returned to QEMU (``../shared/realguest/example-trace-basic.log``: 256 blocks of
  2 MiB forming two ascending runs, the lower one first), because boot memory enters the buddy
  allocator's free lists in address order at their tail; hot-added memory is onlined to the tail
  as well, so it is ballooned after boot RAM;
* the Windows model takes from the *highest* free pages (our choice; nothing is published), so
  its hot-added memory, placed above boot RAM, is ballooned first.

Counters follow Linux (guest-behaviour.md 3): ``managed`` is ``totalram_pages()`` (online minus
reserved minus ballooned; it drops while ballooned and rises as hot-added memory comes online),
``available`` is MemAvailable (free + reclaimable page cache), ``floor`` is
``compute_balloon_floor()`` of the current ``managed``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from ..range_store import PageRangeSet

#: 2 MiB in 4 KiB pages: the balloon's first allocation unit (section 4).
PAGES_IN_2M: Final = 512


def balloon_floor(totalram: int) -> int:
    """Linux ``compute_balloon_floor()`` in pages (guest-behaviour.md 3, the floor table).

    >>> balloon_floor(262144), balloon_floor(1048576), balloon_floor(16777216)
    (59392, 124928, 649216)
    """
    if totalram < 32768:  # < 128 MiB
        return 2048 + (totalram >> 1)
    if totalram < 131072:  # < 512 MiB
        return 10240 + (totalram >> 2)
    if totalram < 524288:  # < 2 GiB
        return 26624 + (totalram >> 3)
    if totalram < 2097152:  # < 8 GiB
        return 59392 + (totalram >> 4)
    return 124928 + (totalram >> 5)


def _expand_descending(spans: Iterable[tuple[int, int]], unit: int) -> list[tuple[int, int]]:
    """Cut descending spans into ``unit``-page ranges, highest first (the allocation order)."""
    out: list[tuple[int, int]] = []
    append = out.append  # bound once: runs once per allocated unit (up to 100k per transaction)
    for start, count in spans:
        for page in range(start + count - unit, start - 1, -unit):
            append((page, unit))
    return out


class GuestMemory:
    """Free / used / ballooned page sets of one guest, with the counters Linux reports.

    Invariants (``problems()`` checks them): ``free``, ``used``, ``ballooned`` are disjoint and
    their union is ``online``; the reserved pages are used; ``cache_pages`` <= used - reserved.
    """

    def __init__(
        self,
        boot_pages: int,
        reserved_pages: int,
        page_cache_fraction: float = 0.0,
        ram: Iterable[tuple[int, int]] | None = None,
    ) -> None:
        self.boot_pages = boot_pages
        self.reserved_pages = reserved_pages
        self.page_cache_fraction = page_cache_fraction
        #: Boot RAM: ``[0, boot_pages)`` unless ``ram`` says where it is (the x86 PCI hole).
        self.online = PageRangeSet(ram if ram is not None else [(0, boot_pages)])
        #: ``max_pfn`` at boot: addresses below it are boot RAM or the hole, never hot-added.
        self.boot_end_page = self.online.to_list()[-1][0] + self.online.to_list()[-1][1] if boot_pages else 0
        self.used = PageRangeSet([(0, reserved_pages)])
        self.free = self.online.copy()
        self.free.remove_many([(0, reserved_pages)])
        self.ballooned = PageRangeSet()
        #: Reclaimable page cache: part of ``used``, counted in MemAvailable.
        self.cache_pages = 0
        #: Committed_AS as the workload last set it (may exceed what is resident: pressure).
        self.committed_pages = 0
        #: Test hook: when True, ``settle`` leaves the layout alone (see ``set_free_layout``).
        self.frozen = False

    # ------------------------------------------------------------------ what Linux reports

    @property
    def online_pages(self) -> int:
        return self.online.page_count

    @property
    def managed_pages(self) -> int:
        """``totalram_pages()``: online, minus reserved, minus ballooned."""
        return self.online.page_count - self.reserved_pages - self.ballooned.page_count

    @property
    def available_pages(self) -> int:
        """MemAvailable: free pages plus reclaimable page cache."""
        return self.free.page_count + self.cache_pages

    def floor_pages(self) -> int:
        """The balloon floor, recomputed from the current totalram (section 3)."""
        return balloon_floor(self.managed_pages)

    @property
    def anon_pages(self) -> int:
        return self.used.page_count - self.reserved_pages - self.cache_pages

    # ------------------------------------------------------------------ balloon allocations

    def take_aligned(
        self, max_blocks: int, unit: int = PAGES_IN_2M, max_spans: int | None = None, max_span_pages: int = 0
    ) -> list[tuple[int, int]]:
        """Balloon up to ``max_blocks`` naturally aligned ``unit``-page blocks, highest first.

        Returns the taken pages as descending spans (each a whole number of blocks, at most
        ``max_span_pages`` pages if non-zero, at most ``max_spans`` spans). The pages move from
        ``free`` to ``ballooned``. Fragments with no aligned block are skipped, which is how a
        2 MiB allocation fails in a fragmented guest.

        Runtime complexity: O(r log n) for the r free ranges visited.
        """
        spans: list[tuple[int, int]] = []
        if max_blocks <= 0:
            return spans
        left = max_blocks
        for start, count in reversed(self.free):
            top = (start + count) // unit * unit
            bottom = -(-start // unit) * unit
            while top - bottom >= unit and left:
                if max_spans is not None and len(spans) >= max_spans:
                    break
                blocks = min((top - bottom) // unit, left)
                if max_span_pages:
                    blocks = min(blocks, max(1, max_span_pages // unit))
                spans.append((top - blocks * unit, blocks * unit))
                top -= blocks * unit
                left -= blocks
            if not left or (max_spans is not None and len(spans) >= max_spans):
                break
        self._to_ballooned(spans)
        return spans

    def take_aligned_units(self, max_blocks: int, unit: int = PAGES_IN_2M) -> list[tuple[int, int]]:
        """Like ``take_aligned`` but one ``(start, unit)`` range per block, in allocation order."""
        return _expand_descending(self.take_aligned(max_blocks, unit), unit)

    def take_lowest_aligned_units(self, max_blocks: int, unit: int = PAGES_IN_2M) -> list[tuple[int, int]]:
        """Balloon up to ``max_blocks`` naturally aligned ``unit``-page blocks from the *lowest* free
        pages, one ``(start, unit)`` range per block in ascending order (Linux's allocation order).

        >>> m = GuestMemory(4096, 0)
        >>> m.set_free_layout([(100, 1500), (2048, 1024)])
        >>> m.take_lowest_aligned_units(3)
        [(512, 512), (1024, 512), (2048, 512)]

        Runtime complexity: O(r log n + b) for the r free ranges visited and b blocks taken.
        """
        out: list[tuple[int, int]] = []
        if max_blocks <= 0:
            return out
        append = out.append  # bound once: runs once per block (up to 510 per message)
        for start, count in self.free:
            page = -(-start // unit) * unit
            end = (start + count) // unit * unit
            while page < end and len(out) < max_blocks:
                append((page, unit))
                page += unit
            if len(out) >= max_blocks:
                break
        if out:
            self.free.remove_many(out)
            self.ballooned.add_many(out)
        return out

    def take_lowest_single_pages(self, max_pages: int) -> list[tuple[int, int]]:
        """Balloon up to ``max_pages`` single pages from the bottom, one ``(page, 1)`` range each,
        ascending and never merged (section 4)."""
        out: list[tuple[int, int]] = []
        for start, count in self.free:
            for page in range(start, start + min(count, max_pages - len(out))):
                out.append((page, 1))
            if len(out) >= max_pages:
                break
        if out:
            self.free.remove_many(out)
            self.ballooned.add_many(out)
        return out

    def take_pages(self, max_pages: int, max_spans: int | None = None) -> list[tuple[int, int]]:
        """Balloon up to ``max_pages`` single pages from the top; returns descending spans."""
        if max_pages <= 0:
            return []
        spans = self.free.peek_highest(max_pages, max_spans if max_spans is not None else max_pages)
        self._to_ballooned(spans)
        return spans

    def take_single_pages(self, max_pages: int) -> list[tuple[int, int]]:
        """``take_pages`` as one ``(page, 1)`` range per page, never merged (section 4)."""
        return _expand_descending(self.take_pages(max_pages), 1)

    def _to_ballooned(self, spans: list[tuple[int, int]]) -> None:
        if spans:
            self.free.remove_many(spans)
            self.ballooned.add_many(spans)

    def release_ballooned(self, start: int, count: int) -> tuple[int, list[tuple[int, int]]]:
        """Unballoon ``[start, start + count)``: ballooned pages go back to ``free``.

        Returns (pages freed, the parts that were not ballooned). Linux frees every listed page
        blindly (section 5); we free only what was ballooned and report the rest, because freeing
        a page that is in use would corrupt the model as it would corrupt a real guest.
        """
        if count <= 0:
            return 0, []
        owned = self.ballooned.intersection([(start, count)])
        stray = self.ballooned.difference([(start, count)])
        if owned:
            self.ballooned.remove_many(owned)
            self.free.add_many(owned)
        return sum(c for _, c in owned), stray

    # ------------------------------------------------------------------ hot-add / hot-remove

    def bring_online(self, spans: Iterable[tuple[int, int]]) -> int:
        """Online hot-added pages (they become free); returns how many were not online before."""
        fresh = self.online.difference(spans)
        if fresh:
            self.online.add_many(fresh)
            self.free.add_many(fresh)
        return sum(c for _, c in fresh)

    def take_offline(self, start: int, count: int) -> int | None:
        """Offline a hot-added span for hot-remove, migrating its used pages to free pages elsewhere.

        Returns the number of pages that were online there, or None (nothing changed) if the span
        holds ballooned pages or there is not enough free memory outside it to migrate into.
        """
        if self.ballooned.overlap_count(start, count):
            return None
        in_use = list(self.used.irange(start, start + count))
        need = sum(c for _, c in in_use)
        if need:
            outside = self.free.page_count - self.free.overlap_count(start, count)
            if outside < need:
                return None
            self.used.remove_many(in_use)
            self.free.add_many(in_use)
            self.free.remove(start, count)
            self._take_lowest_free(need)
        else:
            self.free.remove(start, count)
        return self.online.remove(start, count)

    # ------------------------------------------------------------------ workload

    def _take_lowest_free(self, pages: int) -> int:
        """Move up to ``pages`` of the lowest free pages to ``used``; returns how many moved."""
        spans: list[tuple[int, int]] = []
        left = pages
        for start, count in self.free:
            if not left:
                break
            take = min(count, left)
            spans.append((start, take))
            left -= take
        if spans:
            self.free.remove_many(spans)
            self.used.add_many(spans)
        return pages - left

    def _release_highest_used(self, pages: int) -> int:
        """Move up to ``pages`` of the highest non-reserved used pages to ``free``."""
        spans = self.used.peek_highest(pages, pages, lo=self.reserved_pages)
        if spans:
            self.used.remove_many(spans)
            self.free.add_many(spans)
        return sum(c for _, c in spans)

    def settle(self, committed_pages: int) -> None:
        """Make the resident memory follow the workload's Committed_AS.

        Anonymous memory grows into free pages first, then into reclaimed page cache; whatever
        still does not fit is "swapped" (Committed_AS stays as reported: that is the pressure the
        host must see). Page cache then takes its configured share of what is left.
        """
        if self.frozen:
            return
        self.committed_pages = committed_pages
        anon = self.anon_pages
        if committed_pages > anon:
            need = committed_pages - anon
            need -= self._take_lowest_free(need)
            reclaim = min(need, self.cache_pages)
            self.cache_pages -= reclaim  # cache pages become anonymous pages: same set, new label
        elif committed_pages < anon:
            self._release_highest_used(anon - committed_pages)
        target = int(self.page_cache_fraction * (self.free.page_count + self.cache_pages))
        if target > self.cache_pages:
            self.cache_pages += self._take_lowest_free(target - self.cache_pages)
        elif target < self.cache_pages:
            self.cache_pages -= self._release_highest_used(self.cache_pages - target)

    def set_free_layout(
        self, free: Iterable[tuple[int, int]], cache_pages: int = 0, committed_pages: int | None = None
    ) -> None:
        """Test hook: make exactly ``free`` free (the rest of the non-ballooned RAM used) and freeze
        the workload, so the layout and Committed_AS stay as set until ``frozen`` is cleared.

        Used to build the guests of the worked sequences of section 4 ("only two 2 MiB blocks
        available", "MemAvailable - floor = 600"). ``cache_pages`` of the used pages count as page
        cache; ``committed_pages`` (default: unchanged) is the Committed_AS to report. Raises
        ValueError if ``free`` leaves RAM, touches ballooned or reserved pages.
        """
        wanted = PageRangeSet(free)
        if self.online.difference(list(wanted)):
            raise ValueError("free layout must lie inside online RAM")
        if self.ballooned.intersection(list(wanted)):
            raise ValueError("free layout overlaps ballooned pages")
        if wanted.overlap_count(0, self.reserved_pages):
            raise ValueError("free layout overlaps the kernel's reserved pages")
        used = self.online.copy()
        used.remove_many(list(wanted))
        used.remove_many(list(self.ballooned))
        if not 0 <= cache_pages <= used.page_count - self.reserved_pages:
            raise ValueError("cache_pages must fit in the used, non-reserved pages")
        self.free = wanted
        self.used = used
        self.cache_pages = cache_pages
        if committed_pages is not None:
            self.committed_pages = committed_pages
        self.frozen = True

    # ------------------------------------------------------------------ checks

    def problems(self) -> list[str]:
        """Broken invariants, as sentences; empty when the model is consistent.

        Runtime complexity: O(n) in the number of stored ranges (tests and debugging only).
        """
        out: list[str] = []
        free, used, ballooned, online = self.free, self.used, self.ballooned, self.online
        for name_a, a, name_b, b in (
            ("free", free, "used", used),
            ("free", free, "ballooned", ballooned),
            ("used", used, "ballooned", ballooned),
        ):
            shared = sum(c for _, c in a.intersection(list(b)))
            if shared:
                out.append(f"{shared} pages are both {name_a} and {name_b}")
        union = PageRangeSet(list(free))
        union.add_many(list(used))
        union.add_many(list(ballooned))
        if union != online:
            out.append("free + used + ballooned is not exactly the online RAM")
        if self.reserved_pages and used.overlap_count(0, self.reserved_pages) != self.reserved_pages:
            out.append("reserved pages are not all used")
        if not 0 <= self.cache_pages <= used.page_count - self.reserved_pages:
            out.append(f"cache_pages {self.cache_pages} does not fit in the used pages")
        return out
