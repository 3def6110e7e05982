"""Hot-add the way Linux ``hv_balloon`` does it: regions, covered ends, gaps, one block at a time.

Why a faithful copy of the bookkeeping (guest-behaviour.md 6) rather than "add what was asked":
hosts depend on its exact answers. A request starting at an old region's end opens a new region, a
partly backed block is completed by a later request without adding anything, a failing block makes
the answer short, ``-EEXIST`` turns hot-add off for the rest of the boot, and sending the same range
twice is (wrongly) reported as success twice. The worked-examples table of section 6 is reproduced
by ``tests/guest_sim/test_hot_add.py``.

The worker is a generator so that the guest can spread it over simulated time: it yields once per
block added (Linux then waits up to 5 s for onlining and attempts a status report) and returns the
``page_count`` of the response.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from ..range_store import PageRangeSet
from .memory import GuestMemory


@dataclass(slots=True)
class HotAddRegion:
    """Linux ``struct hv_hotadd_state``: pages ``[start, end)`` reserved for hot-add, of which
    ``[start, ha_end)`` has been added as memory blocks and ``[covered_start, covered_end)`` is
    backed by the host, except for the ``gaps`` (kept verbatim, inverted ones included)."""

    start: int
    end: int
    ha_end: int
    covered_start: int
    covered_end: int
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def backed(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The backed parts of ``[lo, hi)`` (``has_pfn_is_backed`` for a whole span)."""
        s, e = max(lo, self.covered_start), min(hi, self.covered_end)
        if s >= e:
            return []
        parts = PageRangeSet([(s, e - s)])
        for gap_start, gap_end in self.gaps:
            if gap_end > gap_start:  # an inverted gap (the "same range twice" quirk) excludes nothing
                parts.remove(gap_start, gap_end - gap_start)
        return parts.to_list()


@dataclass(frozen=True, slots=True)
class HotAddWork:
    """What the channel callback stores for the worker (``dm->ha_wrk``)."""

    pg_start: int
    pfn_cnt: int
    rg_start: int
    rg_size: int


class HotAdder:
    """The guest's hot-add state for one boot: regions, counters, the ``do_hot_add`` switch."""

    def __init__(
        self,
        memory: GuestMemory,
        chunk_pages: int,
        *,
        enabled: bool,
        faults: dict[int, str],
        max_phys_page: int,
    ) -> None:
        self.memory = memory
        self.chunk = chunk_pages
        #: Linux ``do_hot_add``: False from the start (module param, hibernation) or after -EEXIST.
        self.do_hot_add = enabled
        self.host_specified_region = False
        self.regions: list[HotAddRegion] = []
        #: Memory blocks successfully added with ``add_memory`` (auto-onlined).
        self.added_blocks = PageRangeSet()
        self.num_pages_added = 0
        self.num_pages_onlined = 0
        self._faults = dict(faults)
        self._max_phys_page = max_phys_page

    # ------------------------------------------------------------------ receipt

    def accept(self, page_range: tuple[int, int], region: tuple[int, int] | None) -> HotAddWork:
        """The channel-callback part: record the request; a 16-byte request clears the host region."""
        if region is None:
            self.host_specified_region = False
            region = (0, 0)
        else:
            self.host_specified_region = True
        return HotAddWork(page_range[0], page_range[1], region[0], region[1])

    # ------------------------------------------------------------------ the worker

    def run(self, work: HotAddWork) -> Generator[None, None, int]:
        """``hot_add_req``: yields after each added block, returns the response's page_count."""
        rg_start, rg_size = work.rg_start, work.rg_size
        if rg_start == 0 and not self.host_specified_region:
            rg_start = work.pg_start // self.chunk * self.chunk
            rg_size = -(-work.pfn_cnt // self.chunk) * self.chunk
        page_count = 0
        if self.do_hot_add:
            page_count = yield from self._process_hot_add(work.pg_start, work.pfn_cnt, rg_start, rg_size)
        self.num_pages_added += page_count
        return page_count

    def result_for(self, page_count: int) -> int:
        """Section 6 step 3: 1 if anything was added or hot-add is off for good, else 0 (transient)."""
        return 1 if page_count > 0 or not self.do_hot_add else 0

    def _process_hot_add(self, pg_start: int, pfn_cnt: int, rg_start: int, rg_size: int) -> Generator[None, None, int]:
        if pfn_cnt == 0:
            return 0
        if not self.host_specified_region and self._pfn_covered(pg_start, pfn_cnt):
            return (yield from self._handle_pg_range(pg_start, pfn_cnt))
        if rg_size != 0:
            self.regions.append(HotAddRegion(rg_start, rg_start + rg_size, rg_start, pg_start, pg_start))
        return (yield from self._handle_pg_range(pg_start, pfn_cnt))

    def _first_region(self, pfn: int) -> HotAddRegion | None:
        for region in self.regions:
            if region.start <= pfn < region.end:
                return region
        return None

    def _pfn_covered(self, start: int, count: int) -> bool:
        """Reuse the region containing ``start``: record a gap, grow the end by whole chunks."""
        region = self._first_region(start)
        if region is None:
            return False
        if region.covered_end != start:
            region.gaps.append((region.covered_end, start))
            region.covered_end = start
        if start + count > region.end:
            residual = start + count - region.end
            region.end += -(-residual // self.chunk) * self.chunk
        return True

    def _handle_pg_range(self, start: int, count: int) -> Generator[None, None, int]:
        region = self._first_region(start)
        if region is None:
            return 0
        old_covered = region.covered_end
        if start < region.ha_end:
            # Backing pages in an already added block: the "partial onlining" path.
            pages = min(region.ha_end - start, count)
            region.covered_end += pages
            count -= pages
            if start > region.start and start in self.added_blocks:
                self._bring_online(region, start, start + pages)
        if region.ha_end < region.end and count > 0:
            size = region.end - region.ha_end
            if count <= size:
                size = -(-count // self.chunk) * self.chunk
            else:
                count = size
            yield from self._hot_add_blocks(region, size, count)
        return region.covered_end - old_covered

    def _hot_add_blocks(self, region: HotAddRegion, size: int, pfn_count: int) -> Generator[None, None, None]:
        """``hv_mem_hot_add``: one chunk at a time; undo the failing chunk and stop."""
        left = pfn_count
        for _ in range(size // self.chunk):
            block = region.ha_end
            processed = min(left, self.chunk)
            region.ha_end += self.chunk
            region.covered_end += processed
            left -= processed
            error = self._add_memory(block)
            if error is not None:
                if error == "eexist":
                    self.do_hot_add = False
                region.ha_end -= self.chunk
                region.covered_end -= processed
                return
            self._bring_online(self._first_region(block) or region, block, block + self.chunk)
            yield  # Linux waits up to 5 s for onlining, then attempts a status report

    def _add_memory(self, block: int) -> str | None:
        """The kernel's ``add_memory`` for one block: None on success, else the failure kind.

        Besides injected faults, a block overlapping RAM that already exists (boot RAM or an added
        block) fails with -EEXIST as a resource conflict would, and one beyond the physical address
        limit fails transiently.
        """
        fault = self._faults.pop(block, None)
        if fault is not None:
            return fault
        if block < self.memory.boot_end_page or self.added_blocks.overlap_count(block, self.chunk):
            return "eexist"
        if block + self.chunk > self._max_phys_page:
            return "transient"
        self.added_blocks.add(block, self.chunk)
        return None

    def _bring_online(self, region: HotAddRegion, lo: int, hi: int) -> None:
        """``hv_bring_pgs_online``: online the backed pages of ``[lo, hi)`` that are in added blocks."""
        backed = self.added_blocks.intersection(region.backed(lo, hi))
        self.num_pages_onlined += self.memory.bring_online(backed)

    # ------------------------------------------------------------------ hot-remove support

    def forget_block(self, block: int, onlined: int) -> None:
        """A block was hot-removed (Windows profile): drop it from the bookkeeping so it can be
        added again, and from the counters so ``added - onlined`` stays meaningful."""
        self.added_blocks.remove(block, self.chunk)
        self.num_pages_onlined -= onlined
        self.num_pages_added -= onlined
        for region in list(self.regions):
            if region.ha_end == block + self.chunk:
                region.ha_end = block
                region.covered_end = min(region.covered_end, block)
                region.covered_start = min(region.covered_start, block)
                if region.ha_end <= region.start:
                    self.regions.remove(region)
                break
