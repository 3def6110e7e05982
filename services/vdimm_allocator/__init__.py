"""Virtual-DIMM allocator: lays memory backends out in a VM's hot-add window and plans hot-add chunks.

See :mod:`services.vdimm_allocator.allocator` for the design and the QEMU behaviour it follows, and
:mod:`services.vdimm_allocator.ram_layout` for where guest RAM and the hot-add window are.
"""

from ..units import PAGE_SIZE
from .allocator import (
    HOT_ADD_CHUNK_PAGES,
    MAX_HOT_ADD_ALIGNMENT,
    SNAPSHOT_FORMAT,
    AllocationError,
    AllocationReason,
    HotAddChunk,
    Vdimm,
    VdimmLayout,
    alignment_pages,
    chunk_max_pages,
    find_vdimm,
    new_layout,
    plan_chunk,
    plug,
    record_hot_add,
    record_hot_remove,
    release_all,
    unplug,
)
from .ram_layout import (
    MACHINES,
    Machine,
    RamLayoutError,
    RamRanges,
    check_ram_ranges,
    device_memory_start_page,
    hot_add_window_start_page,
    legacy_ram_ranges,
    ram_end_page,
    x86_ram_ranges,
)

__all__ = [
    "HOT_ADD_CHUNK_PAGES",
    "MACHINES",
    "MAX_HOT_ADD_ALIGNMENT",
    "PAGE_SIZE",
    "SNAPSHOT_FORMAT",
    "AllocationError",
    "AllocationReason",
    "HotAddChunk",
    "Machine",
    "RamLayoutError",
    "RamRanges",
    "Vdimm",
    "VdimmLayout",
    "alignment_pages",
    "check_ram_ranges",
    "chunk_max_pages",
    "device_memory_start_page",
    "find_vdimm",
    "hot_add_window_start_page",
    "legacy_ram_ranges",
    "new_layout",
    "plan_chunk",
    "plug",
    "ram_end_page",
    "record_hot_add",
    "record_hot_remove",
    "release_all",
    "unplug",
    "x86_ram_ranges",
]
