"""Virtual-DIMM allocator: lays memory backends out in a VM's hot-add window and plans hot-add chunks.

See :mod:`services.vdimm_allocator.allocator` for the design and the QEMU behaviour it follows.
"""

from services.vdimm_allocator.allocator import (
    HOT_ADD_CHUNK_PAGES,
    MAX_HOT_ADD_ALIGNMENT,
    PAGE_SIZE,
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

__all__ = [
    "HOT_ADD_CHUNK_PAGES",
    "MAX_HOT_ADD_ALIGNMENT",
    "PAGE_SIZE",
    "SNAPSHOT_FORMAT",
    "AllocationError",
    "AllocationReason",
    "HotAddChunk",
    "Vdimm",
    "VdimmLayout",
    "alignment_pages",
    "chunk_max_pages",
    "find_vdimm",
    "new_layout",
    "plan_chunk",
    "plug",
    "record_hot_add",
    "record_hot_remove",
    "release_all",
    "unplug",
]
