"""Where a QEMU x86 guest's RAM lives, and where its hot-add window starts.

Why this exists: guest RAM is not ``[0, boot)``. QEMU's PC machines keep the top of the 32-bit
address space for PCI and MMCONFIG, so a big guest gets part of its RAM *relocated* above 4 GiB.
A host that believes RAM is ``[0, boot)`` tells the guest that pages in ``[4 GiB, ...)`` are not its
own and never gives them back, and it may place hot-added memory on top of relocated RAM. The
engine, the guest simulator and the vDIMM allocator all take the layout from here.

QEMU's rules (``hw/i386/pc_q35.c`` ``pc_q35_init``, ``hw/i386/pc_piix.c`` ``pc_init1``,
``hw/i386/pc.c`` ``pc_get_device_memory_range``):

* **q35**: the low-memory limit is 2 GiB when RAM is at least 0xB0000000 (2.75 GiB), otherwise
  0xB0000000; RAM at or above the limit is split into ``limit`` below 4 GiB and the rest from
  4 GiB up; smaller RAM is all below 4 GiB.
* **pc** (i440FX, gigabyte-aligned machine types): the limit is 0xE0000000 (3.5 GiB); RAM at or
  above it is split at 3 GiB (the limit rounded down to a gigabyte), the rest from 4 GiB up.
* **device memory** (where DIMMs and hv-balloon's memory device go) starts at the end of the RAM
  above 4 GiB (4 GiB itself when there is none) rounded up to 1 GiB; hv-balloon's device is then
  placed at the next multiple of its own alignment, 32 GiB (the largest alignment a guest can ask
  for, so the window never has an unusable head).

Not modelled: ``max-ram-below-4g``, SGX EPC and the AMD 1 TiB HyperTransport hole; a hello with an
explicit ``ram`` list describes such machines exactly.

Everything here is a pure function of its arguments; units are 4 KiB pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from ..units import PAGE_SHIFT

GIB_PAGES: Final = (1 << 30) >> PAGE_SHIFT
#: 4 GiB in pages: where relocated RAM starts.
FOUR_GIB_PAGE: Final = 4 * GIB_PAGES
#: hv-balloon's memory device alignment (QEMU places it at a 32 GiB boundary).
HV_BALLOON_DEVICE_ALIGN_PAGES: Final = 32 * GIB_PAGES
#: The largest guest page number a DM page range can carry (40-bit ``start_page``).
MAX_PAGE_NUMBER: Final = (1 << 40) - 1
#: A hello may list at most this many RAM ranges (real firmware maps have a handful).
MAX_RAM_RANGES: Final = 64

Machine = Literal["q35", "pc"]
MACHINES: Final[tuple[Machine, ...]] = ("q35", "pc")
RamRanges = tuple[tuple[int, int], ...]

_Q35_SPLIT_THRESHOLD: Final = 0xB000_0000 >> PAGE_SHIFT
_Q35_LOWMEM_SPLIT: Final = 0x8000_0000 >> PAGE_SHIFT
_PC_SPLIT_THRESHOLD: Final = 0xE000_0000 >> PAGE_SHIFT
_PC_LOWMEM_SPLIT: Final = 0xC000_0000 >> PAGE_SHIFT


class RamLayoutError(ValueError):
    """A RAM description that no machine could have; the message is one line for the peer."""


def x86_ram_ranges(machine: Machine, ram_pages: int) -> RamRanges:
    """The guest-physical RAM ranges of a QEMU ``machine`` with ``ram_pages`` of RAM (``-m``).

    >>> x86_ram_ranges("q35", 4 * GIB_PAGES)  # 2 GiB below 4 GiB, 2 GiB relocated above it
    ((0, 524288), (1048576, 524288))
    >>> x86_ram_ranges("q35", 2 * GIB_PAGES)  # below 2.75 GiB: all below 4 GiB
    ((0, 524288),)
    >>> x86_ram_ranges("pc", 4 * GIB_PAGES)   # i440FX splits at 3 GiB from 3.5 GiB of RAM
    ((0, 786432), (1048576, 262144))

    Runtime complexity: O(1).
    """
    if ram_pages <= 0:
        raise RamLayoutError("RAM size must be positive")
    if machine == "q35":
        lowmem = _Q35_LOWMEM_SPLIT if ram_pages >= _Q35_SPLIT_THRESHOLD else _Q35_SPLIT_THRESHOLD
    elif machine == "pc":
        lowmem = _PC_LOWMEM_SPLIT if ram_pages >= _PC_SPLIT_THRESHOLD else _PC_SPLIT_THRESHOLD
    else:
        raise RamLayoutError(f"machine must be one of {', '.join(MACHINES)}")
    if ram_pages < lowmem:
        return ((0, ram_pages),)
    above = ram_pages - lowmem
    if above == 0:
        return ((0, lowmem),)
    return ((0, lowmem), (FOUR_GIB_PAGE, above))


def legacy_ram_ranges(boot_pages: int) -> RamRanges:
    """What hvdm assumed before layouts existed: RAM is ``[0, boot)``. Old logs keep this meaning.

    >>> legacy_ram_ranges(1024)
    ((0, 1024),)
    """
    return ((0, boot_pages),) if boot_pages > 0 else ()


def check_ram_ranges(ranges: Sequence[Sequence[int]], ram_pages: int) -> RamRanges:
    """Validate an explicit RAM list: ascending, disjoint, non-empty ranges inside the 40-bit page
    space that add up to exactly ``ram_pages``. Returns it as a tuple of pairs.

    >>> check_ram_ranges([[0, 10], [20, 5]], 15)
    ((0, 10), (20, 5))
    >>> check_ram_ranges([[0, 10], [5, 10]], 20)
    Traceback (most recent call last):
    ...
    services.vdimm_allocator.ram_layout.RamLayoutError: ram ranges must be ascending and must not overlap

    Runtime complexity: O(r) for r ranges.
    """
    if not ranges:
        raise RamLayoutError("ram must list at least one range")
    if len(ranges) > MAX_RAM_RANGES:
        raise RamLayoutError(f"ram may list at most {MAX_RAM_RANGES} ranges")
    out: list[tuple[int, int]] = []
    end = 0
    for item in ranges:
        if len(item) != 2 or not all(type(v) is int for v in item):
            raise RamLayoutError("each ram range must be [start_page, page_count] with integers")
        start, count = item[0], item[1]
        if start < 0 or count <= 0:
            raise RamLayoutError("ram ranges need a non-negative start and a positive count")
        if start + count - 1 > MAX_PAGE_NUMBER:
            raise RamLayoutError("ram ranges must lie below page 2**40")
        if out and start < end:
            raise RamLayoutError("ram ranges must be ascending and must not overlap")
        out.append((start, count))
        end = start + count
    if sum(c for _, c in out) != ram_pages:
        raise RamLayoutError("ram ranges must add up to boot_bytes")
    return tuple(out)


def ram_end_page(ranges: RamRanges) -> int:
    """One past the highest RAM page (0 for no RAM).

    >>> ram_end_page(((0, 10), (100, 5)))
    105
    """
    return ranges[-1][0] + ranges[-1][1] if ranges else 0


def device_memory_start_page(ranges: RamRanges) -> int:
    """QEMU's device-memory base: the end of RAM above 4 GiB (4 GiB if none), rounded up to 1 GiB.

    >>> device_memory_start_page(x86_ram_ranges("q35", 4 * GIB_PAGES)) == 6 * GIB_PAGES
    True
    >>> device_memory_start_page(((0, 1000),)) == 4 * GIB_PAGES
    True
    """
    end = max(FOUR_GIB_PAGE, ram_end_page(ranges))
    return -(-end // GIB_PAGES) * GIB_PAGES


def hot_add_window_start_page(ranges: RamRanges, align_pages: int = HV_BALLOON_DEVICE_ALIGN_PAGES) -> int:
    """Where hv-balloon's memory device lands: device memory's base rounded up to ``align_pages``.

    For ``legacy_ram_ranges(boot)`` this equals hvdm's earlier rule, ``boot`` rounded up to 32 GiB,
    so old logs describe the same window:

    >>> hot_add_window_start_page(legacy_ram_ranges(GIB_PAGES)) == 32 * GIB_PAGES
    True
    >>> hot_add_window_start_page(x86_ram_ranges("q35", 31 * GIB_PAGES)) == 64 * GIB_PAGES  # RAM ends at 33 GiB
    True
    """
    base = device_memory_start_page(ranges)
    return -(-base // align_pages) * align_pages
