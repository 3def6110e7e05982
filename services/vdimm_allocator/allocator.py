"""Virtual-DIMM layout of a VM's hot-add window: placement, hot-add planning and bookkeeping.

hvdm follows the v2/v3 design of QEMU's ``hv-balloon`` (host-behaviour.md section 9, the seed's
"[PATCH v2 0/3]" cover letter) rather than the single-``memdev`` driver QEMU merged in 8.2: the user
creates memory backends (``object-add memory-backend-ram,id=mem1,size=200G``), each backend is laid
out as a hidden virtual DIMM (QEMU's ``mem-hapvdimm``) in the machine's device-memory window above boot
RAM, and the DM protocol hot-adds each vDIMM's usable part chunk by chunk.  After a guest reboot every
vDIMM is dropped and the backend is reported unused (``HV_BALLOON_MEMORY_BACKEND_UNUSED``).

Per-vDIMM bookkeeping mirrors QEMU's "our range" (host-behaviour.md section 5; ORM.h L22-70), plus
the v2 head/tail trimming:

* ``start_page`` / ``page_count``: the whole backend, as the memory-device core maps it;
* ``usable_start`` / ``usable_count``: the backend with an unused head (start rounded up to the guest's
  ``hot_add_alignment``) and an unused tail (length rounded down) cut off, as v2 did, because the guest
  can only hot-add whole aligned blocks;
* ``added_pages``: the prefix of the usable part the guest accepted (QEMU's ``added``);
* ``unusable_tail``: set once, after a failed or partial hot-add, to everything not yet added
  (QEMU: "unusable_tail = range.count - added"); nothing more is offered from that vDIMM until reboot;
* ``removed_pages``: pages hot-removed later with protocol 2.0 (a deliberate hvdm extension; QEMU
  advertises hot-remove but never implements it).

Everything here is pure and deterministic: values are frozen dataclasses and every operation returns a
new layout.  The event-sourced engine calls these functions both from ``evolve`` (applying recorded
facts) and from ``decide`` (read-only planning), so nothing may mutate, log or read a clock.

All sizes are in 4 KiB pages, except ``size_bytes``.  Operations are O(n) in the number of vDIMMs
(a VM has a handful), except :func:`find_vdimm`, which bisects.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..units import PAGE_SIZE

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

#: Bytes per page; the DM protocol's page-frame shift is 12 (QEMU INT L15-16).

#: QEMU's "HA chunk": at most 2 GiB per DM_MEM_HOT_ADD_REQUEST (HVB L56-57), or the alignment if larger.
HOT_ADD_CHUNK_PAGES: Final = 524_288

#: The caps report's ``hot_add_alignment`` is a 4-bit field n meaning 2^n MiB (PROTO L98-113); QEMU
#: accepts every value, so n = 15 (32 GiB) is the largest alignment a guest can ask for.
MAX_HOT_ADD_ALIGNMENT: Final = 15

#: Version of the :meth:`VdimmLayout.to_dict` snapshot format.
SNAPSHOT_FORMAT: Final = 1

_PAGES_PER_MIB: Final = (1 << 20) // PAGE_SIZE  # 256
_VALID_ALIGNMENTS: Final = frozenset(_PAGES_PER_MIB << n for n in range(MAX_HOT_ADD_ALIGNMENT + 1))


def alignment_pages(hot_add_alignment: int) -> int:
    """Pages in one guest hot-add alignment unit: 2^n MiB = 256 << n pages.

    The guest reports n in its DM_CAPABILITIES_REPORT; QEMU rounds every hot-add start and size to it
    (HVB L472-511).  n outside 0..15 cannot come from the 4-bit wire field, so it is a programmer error.

    >>> alignment_pages(0), alignment_pages(7), alignment_pages(15)
    (256, 32768, 8388608)

    Runtime complexity: O(1)
    """
    if isinstance(hot_add_alignment, bool) or not isinstance(hot_add_alignment, int):
        raise TypeError(f"hot_add_alignment must be an int, got {hot_add_alignment!r}")
    if not 0 <= hot_add_alignment <= MAX_HOT_ADD_ALIGNMENT:
        raise ValueError(f"hot_add_alignment must be in 0..{MAX_HOT_ADD_ALIGNMENT}, got {hot_add_alignment}")
    return _PAGES_PER_MIB << hot_add_alignment


def chunk_max_pages(alignment: int) -> int:
    """Largest single hot-add request for a vDIMM with ``alignment`` pages per unit.

    QEMU (HVB L546-560, and v2's "chunk size was max(alignment, 2 GiB)"): if the alignment is at least
    the 2 GiB HA chunk, one request carries exactly one alignment unit; otherwise the HA chunk rounded
    down to the alignment, which for power-of-two alignments is the HA chunk itself.

    >>> chunk_max_pages(256), chunk_max_pages(8388608)
    (524288, 8388608)

    Runtime complexity: O(1)
    """
    return max(HOT_ADD_CHUNK_PAGES, alignment)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _round_down(value: int, unit: int) -> int:
    return value // unit * unit


class AllocationReason(enum.StrEnum):
    """Why a layout operation was refused; stable codes the engine can put into events."""

    #: The backend cannot hold even one aligned unit after its head is cut off.
    BACKEND_TOO_SMALL = "BACKEND_TOO_SMALL"
    #: ``size_bytes`` is not a positive multiple of 4 KiB (QEMU refuses such backends too, section 5).
    NOT_PAGE_MULTIPLE = "NOT_PAGE_MULTIPLE"
    #: No free, suitably aligned gap of the window is big enough (or the requested start is not free).
    WINDOW_EXHAUSTED = "WINDOW_EXHAUSTED"
    #: The backend is already plugged (QEMU: "busy memdev").
    DUPLICATE_ID = "DUPLICATE_ID"
    #: No vDIMM with that backend id.
    UNKNOWN_ID = "UNKNOWN_ID"
    #: The guest already accepted memory of this vDIMM; only a reboot frees it.
    BACKEND_IN_USE = "BACKEND_IN_USE"


class AllocationError(ValueError):
    """A layout operation refused for a reason the caller may want to report (see :class:`AllocationReason`).

    ``str(error)`` starts with the reason code, so a log line or a QMP error names it first.

    >>> str(AllocationError(AllocationReason.UNKNOWN_ID, "no vDIMM 'mem9'"))
    "UNKNOWN_ID: no vDIMM 'mem9'"
    """

    def __init__(self, reason: AllocationReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: AllocationReason = reason
        self.detail: str = detail

    def __reduce__(self) -> tuple[type[AllocationError], tuple[AllocationReason, str]]:
        # The default reduce would call __init__ with the formatted message only.
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True, slots=True)
class Vdimm:
    """One memory backend laid out in the hot-add window (QEMU v2's ``mem-hapvdimm``).

    ``[start_page, end_page)`` is the whole backend as mapped; ``[usable_start, usable_start +
    usable_count)`` is the aligned part the DM protocol may hot-add.  The constructor checks every
    invariant, so a corrupt snapshot fails loudly on load instead of planning bad hot-adds.

    >>> v = Vdimm("mem1", 3 * 1024 * 1024, 300, 768, 512, 512, 256)
    >>> v.head_pages, v.tail_pages, v.remaining_pages, v.end_page
    (212, 44, 512, 1068)
    """

    backend_id: str
    size_bytes: int
    start_page: int
    page_count: int
    usable_start: int
    usable_count: int
    alignment_pages: int
    added_pages: int = 0
    unusable_tail: int = 0
    removed_pages: int = 0

    def __post_init__(self) -> None:
        for name in (
            "size_bytes",
            "start_page",
            "page_count",
            "usable_start",
            "usable_count",
            "alignment_pages",
            "added_pages",
            "unusable_tail",
            "removed_pages",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Vdimm.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"Vdimm.{name} must be >= 0, got {value}")
        if not isinstance(self.backend_id, str) or not self.backend_id:
            raise ValueError(f"Vdimm.backend_id must be a non-empty str, got {self.backend_id!r}")
        align = self.alignment_pages
        if align not in _VALID_ALIGNMENTS:
            raise ValueError(f"Vdimm.alignment_pages must be 256 << n for n in 0..15, got {align}")
        if self.size_bytes == 0 or self.size_bytes % PAGE_SIZE:
            raise ValueError(f"Vdimm.size_bytes must be a positive multiple of {PAGE_SIZE}")
        if self.page_count != self.size_bytes // PAGE_SIZE:
            raise ValueError("Vdimm.page_count must equal size_bytes / 4096")
        head = self.usable_start - self.start_page
        if not 0 <= head < align or self.usable_start % align:
            raise ValueError("Vdimm.usable_start must be start_page rounded up to the alignment")
        if self.usable_count == 0 or self.usable_count % align:
            raise ValueError("Vdimm.usable_count must be a positive multiple of the alignment")
        tail = self.page_count - head - self.usable_count
        if not 0 <= tail < align:
            raise ValueError("Vdimm.usable_count must be the backend after its head, rounded down")
        if self.added_pages + self.unusable_tail > self.usable_count:
            raise ValueError("Vdimm.added_pages + unusable_tail exceeds usable_count")
        if self.unusable_tail not in (0, self.usable_count - self.added_pages):
            # QEMU only ever sets it to "everything not yet added" (ORM.h); anything else is corrupt.
            raise ValueError("Vdimm.unusable_tail must be 0 or usable_count - added_pages")
        if self.remaining_pages and self.added_pages % align:
            # QEMU asserts the next hot-add start is aligned (HVB L472-511).
            raise ValueError("Vdimm.added_pages must be aligned while pages remain to hot-add")
        if self.removed_pages > self.added_pages:
            raise ValueError("Vdimm.removed_pages exceeds added_pages")

    @property
    def head_pages(self) -> int:
        """Unused pages before the aligned usable part (v2's ``unused_head``)."""
        return self.usable_start - self.start_page

    @property
    def tail_pages(self) -> int:
        """Unused pages after the usable part (v2's ``unused_tail``: the length rounded down)."""
        return self.page_count - self.head_pages - self.usable_count

    @property
    def remaining_pages(self) -> int:
        """Usable pages still to offer: QEMU's ``remaining = range.count - added - unusable_tail``."""
        return self.usable_count - self.added_pages - self.unusable_tail

    @property
    def added_range(self) -> tuple[int, int]:
        """``(start_page, page_count)`` of what the guest accepted: always a prefix of the usable part."""
        return (self.usable_start, self.added_pages)

    @property
    def end_page(self) -> int:
        """First page after the whole backend (exclusive end)."""
        return self.start_page + self.page_count

    def to_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of this vDIMM; every field, nothing derived.

        Runtime complexity: O(1)
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vdimm:
        """Rebuild a vDIMM from :meth:`to_dict`; ValueError/TypeError on missing, extra or bad fields.

        Runtime complexity: O(1)
        """
        names = [f.name for f in dataclasses.fields(cls)]
        extra = set(data) - set(names)
        if extra:
            raise ValueError(f"unknown Vdimm snapshot fields: {sorted(extra)}")
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"missing Vdimm snapshot fields: {missing}")
        return cls(**{name: data[name] for name in names})


@dataclass(frozen=True, slots=True)
class VdimmLayout:
    """The hot-add window ``[window_start_page, window_end_page)`` and the vDIMMs placed in it.

    The window is the machine's device-memory area: above boot RAM, its base aligned to 32 GiB by
    QEMU, ending at maxmem (host-behaviour.md section 5).  ``vdimms`` is ascending by ``start_page``;
    the constructor checks that they are sorted, disjoint, inside the window and uniquely named.

    >>> new_layout(0, 1 << 20)
    VdimmLayout(window_start_page=0, window_end_page=1048576, vdimms=())
    """

    window_start_page: int
    window_end_page: int
    vdimms: tuple[Vdimm, ...] = ()

    def __post_init__(self) -> None:
        for name in ("window_start_page", "window_end_page"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"VdimmLayout.{name} must be an int, got {value!r}")
        if self.window_start_page < 0:
            raise ValueError("VdimmLayout.window_start_page must be >= 0")
        if self.window_end_page < self.window_start_page:
            raise ValueError("VdimmLayout.window_end_page must be >= window_start_page")
        if not isinstance(self.vdimms, tuple):
            object.__setattr__(self, "vdimms", tuple(self.vdimms))
        cursor = self.window_start_page
        seen: set[str] = set()
        for vdimm in self.vdimms:
            if not isinstance(vdimm, Vdimm):
                raise TypeError(f"VdimmLayout.vdimms must hold Vdimm values, got {vdimm!r}")
            if vdimm.start_page < cursor:
                raise ValueError(f"vDIMM {vdimm.backend_id!r} overlaps, is unsorted or starts before the window")
            cursor = vdimm.end_page
            if vdimm.backend_id in seen:
                raise ValueError(f"duplicate vDIMM {vdimm.backend_id!r}")
            seen.add(vdimm.backend_id)
        if cursor > self.window_end_page:
            raise ValueError("a vDIMM extends past the end of the window")

    @property
    def added_pages(self) -> int:
        """Pages the guest accepted across all vDIMMs (they count toward guest RAM, as QEMU's ``added``).

        Runtime complexity: O(n)
        """
        return sum(v.added_pages for v in self.vdimms)

    def get(self, backend_id: str) -> Vdimm | None:
        """The vDIMM of ``backend_id``, or None.

        Runtime complexity: O(n)
        """
        for vdimm in self.vdimms:
            if vdimm.backend_id == backend_id:
                return vdimm
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able snapshot (ints, strs, lists and dicts only), tagged with :data:`SNAPSHOT_FORMAT`.

        Runtime complexity: O(n)
        """
        return {
            "format": SNAPSHOT_FORMAT,
            "window_start_page": self.window_start_page,
            "window_end_page": self.window_end_page,
            "vdimms": [v.to_dict() for v in self.vdimms],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VdimmLayout:
        """Rebuild a layout from :meth:`to_dict`, re-checking every invariant.

        >>> layout = plug(new_layout(0, 1 << 20), "mem1", 1 << 30, 7)[0]
        >>> VdimmLayout.from_dict(layout.to_dict()) == layout
        True

        Runtime complexity: O(n)
        """
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported VdimmLayout snapshot format {data.get('format')!r}")
        extra = set(data) - {"format", "window_start_page", "window_end_page", "vdimms"}
        if extra:
            raise ValueError(f"unknown VdimmLayout snapshot fields: {sorted(extra)}")
        vdimms = data["vdimms"]
        if not isinstance(vdimms, list | tuple):
            raise TypeError("VdimmLayout snapshot 'vdimms' must be a list")
        return cls(
            window_start_page=data["window_start_page"],
            window_end_page=data["window_end_page"],
            vdimms=tuple(Vdimm.from_dict(v) for v in vdimms),
        )


@dataclass(frozen=True, slots=True)
class HotAddChunk:
    """One DM_MEM_HOT_ADD_REQUEST to send: QEMU sends ``range`` and ``region`` both equal to this."""

    backend_id: str
    start_page: int
    page_count: int


def new_layout(window_start_page: int, window_end_page: int) -> VdimmLayout:
    """An empty hot-add window ``[window_start_page, window_end_page)``; ValueError if end < start.

    The start need not be aligned: :func:`plug` aligns each vDIMM itself (QEMU aligns the base of
    device memory to 32 GiB, so in practice it is).

    >>> new_layout(8 << 18, 16 << 18).vdimms
    ()

    Runtime complexity: O(1)
    """
    return VdimmLayout(window_start_page, window_end_page)


def _find_gap(layout: VdimmLayout, page_count: int, align: int) -> int | None:
    """Lowest aligned start where ``page_count`` pages fit between the existing vDIMMs (first fit)."""
    cursor = layout.window_start_page
    for vdimm in layout.vdimms:
        candidate = _round_up(cursor, align)
        if candidate + page_count <= vdimm.start_page:
            return candidate
        cursor = vdimm.end_page
    candidate = _round_up(cursor, align)
    if candidate + page_count <= layout.window_end_page:
        return candidate
    return None


def _is_free(layout: VdimmLayout, start_page: int, page_count: int) -> bool:
    end = start_page + page_count
    if start_page < layout.window_start_page or end > layout.window_end_page:
        return False
    return all(v.end_page <= start_page or v.start_page >= end for v in layout.vdimms)


def _usable_part(start_page: int, page_count: int, align: int) -> tuple[int, int]:
    """v2's trimming: unused head = start rounded up to the alignment, unused tail = length rounded down."""
    usable_start = _round_up(start_page, align)
    head = usable_start - start_page
    return usable_start, _round_down(max(page_count - head, 0), align)


def plug(
    layout: VdimmLayout,
    backend_id: str,
    size_bytes: int,
    hot_add_alignment: int,
    start_page: int | None = None,
) -> tuple[VdimmLayout, Vdimm]:
    """Lay backend ``backend_id`` out as a new vDIMM; return the new layout and the vDIMM.

    Without ``start_page`` the vDIMM goes first-fit into the lowest gap of the window, at a start
    aligned to the guest's alignment, so it has no head: QEMU v2 set the hapvdimm's ``align`` property
    to the guest alignment and let the memory-device core pick the lowest free address
    (MD L214-300).  An explicit ``start_page`` (QEMU's ``addr`` property) may be unaligned; the pages
    up to the next aligned boundary become the unused head.  Either way the usable part is the rest
    rounded down to whole alignment units and the remainder is the unused tail.

    Errors (:class:`AllocationError`), checked in this order: NOT_PAGE_MULTIPLE, DUPLICATE_ID,
    BACKEND_TOO_SMALL (not even one alignment unit usable), WINDOW_EXHAUSTED.  An invalid
    ``hot_add_alignment`` is a ValueError from :func:`alignment_pages`.

    >>> layout, v = plug(new_layout(0, 1 << 20), "mem1", 300 * 1024 * 1024, 7)
    >>> v.start_page, v.page_count, v.usable_count, v.tail_pages
    (0, 76800, 65536, 11264)
    >>> layout, w = plug(layout, "mem2", 1 << 30, 7)
    >>> w.start_page
    98304

    Runtime complexity: O(n)
    """
    align = alignment_pages(hot_add_alignment)
    if not isinstance(backend_id, str) or not backend_id:
        raise ValueError(f"backend_id must be a non-empty str, got {backend_id!r}")
    is_int = isinstance(size_bytes, int) and not isinstance(size_bytes, bool)
    if not is_int or size_bytes <= 0 or size_bytes % PAGE_SIZE:
        raise AllocationError(
            AllocationReason.NOT_PAGE_MULTIPLE,
            f"backend {backend_id!r} size {size_bytes!r} is not a positive multiple of {PAGE_SIZE} bytes",
        )
    if layout.get(backend_id) is not None:
        raise AllocationError(AllocationReason.DUPLICATE_ID, f"backend {backend_id!r} is already plugged")
    page_count = size_bytes // PAGE_SIZE
    if start_page is None:
        if page_count < align:
            raise AllocationError(
                AllocationReason.BACKEND_TOO_SMALL,
                f"backend {backend_id!r} has {page_count} pages, less than one alignment unit of {align}",
            )
        found = _find_gap(layout, page_count, align)
        if found is None:
            raise AllocationError(
                AllocationReason.WINDOW_EXHAUSTED,
                f"no {align}-page-aligned gap of {page_count} pages for backend {backend_id!r}",
            )
        start_page = found
    else:
        if isinstance(start_page, bool) or not isinstance(start_page, int) or start_page < 0:
            raise ValueError(f"start_page must be a non-negative int, got {start_page!r}")
        if _usable_part(start_page, page_count, align)[1] == 0:
            raise AllocationError(
                AllocationReason.BACKEND_TOO_SMALL,
                f"backend {backend_id!r} at page {start_page} holds no whole {align}-page alignment unit",
            )
        if not _is_free(layout, start_page, page_count):
            raise AllocationError(
                AllocationReason.WINDOW_EXHAUSTED,
                f"pages [{start_page}, {start_page + page_count}) are not free in the window",
            )
    usable_start, usable_count = _usable_part(start_page, page_count, align)
    vdimm = Vdimm(
        backend_id=backend_id,
        size_bytes=size_bytes,
        start_page=start_page,
        page_count=page_count,
        usable_start=usable_start,
        usable_count=usable_count,
        alignment_pages=align,
    )
    vdimms = layout.vdimms
    index = bisect.bisect_left(vdimms, start_page, key=lambda v: v.start_page)
    new = dataclasses.replace(layout, vdimms=(*vdimms[:index], vdimm, *vdimms[index:]))
    return new, vdimm


def _require(layout: VdimmLayout, backend_id: str) -> tuple[int, Vdimm]:
    for index, vdimm in enumerate(layout.vdimms):
        if vdimm.backend_id == backend_id:
            return index, vdimm
    raise AllocationError(AllocationReason.UNKNOWN_ID, f"no vDIMM for backend {backend_id!r}")


def _replace_at(layout: VdimmLayout, index: int, vdimm: Vdimm) -> VdimmLayout:
    vdimms = layout.vdimms
    return dataclasses.replace(layout, vdimms=(*vdimms[:index], vdimm, *vdimms[index + 1 :]))


def unplug(layout: VdimmLayout, backend_id: str) -> VdimmLayout:
    """Remove a vDIMM the guest has not accepted any memory from.

    BACKEND_IN_USE once ``added_pages > 0``, even if all of it was hot-removed since: the guest has
    registered those memory blocks and, as QEMU notes, "Windows keeps on using it until the system is
    restarted"; only a reboot (:func:`release_all`) frees the backend.  UNKNOWN_ID if not plugged.

    >>> layout, _ = plug(new_layout(0, 1 << 20), "mem1", 1 << 30, 7)
    >>> unplug(layout, "mem1").vdimms
    ()

    Runtime complexity: O(n)
    """
    index, vdimm = _require(layout, backend_id)
    if vdimm.added_pages > 0:
        raise AllocationError(
            AllocationReason.BACKEND_IN_USE,
            f"guest accepted {vdimm.added_pages} pages of backend {backend_id!r}; it is freed only on reboot",
        )
    vdimms = layout.vdimms
    return dataclasses.replace(layout, vdimms=(*vdimms[:index], *vdimms[index + 1 :]))


def plan_chunk(layout: VdimmLayout, max_pages: int) -> HotAddChunk | None:
    """The next hot-add request to send, growing the guest by at most ``max_pages``; None if none.

    Follows QEMU's HOT_ADD_SETUP and POSTING (HVB L472-585): take the lowest-addressed vDIMM with
    pages remaining (v2 hot-added its queued vDIMMs in order), start at ``usable_start +
    added_pages``, and send min(remaining, chunk max, ``max_pages``) rounded **down** to the
    alignment.  If that rounds to 0 nothing is planned (QEMU goes back to IDLE), and later vDIMMs are
    not tried either: a growth request smaller than one alignment unit does nothing.

    >>> layout, _ = plug(new_layout(0, 1 << 22), "mem1", 3 << 30, 7)
    >>> plan_chunk(layout, 1 << 30)
    HotAddChunk(backend_id='mem1', start_page=0, page_count=524288)
    >>> plan_chunk(layout, 40000)
    HotAddChunk(backend_id='mem1', start_page=0, page_count=32768)
    >>> plan_chunk(layout, 30000) is None
    True

    Runtime complexity: O(n)
    """
    if isinstance(max_pages, bool) or not isinstance(max_pages, int):
        raise TypeError(f"max_pages must be an int, got {max_pages!r}")
    if max_pages < 0:
        raise ValueError(f"max_pages must be >= 0, got {max_pages}")
    for vdimm in layout.vdimms:
        remaining = vdimm.remaining_pages
        if remaining <= 0:
            continue
        align = vdimm.alignment_pages
        count = _round_down(min(remaining, chunk_max_pages(align), max_pages), align)
        if count == 0:
            return None
        return HotAddChunk(vdimm.backend_id, vdimm.usable_start + vdimm.added_pages, count)
    return None


def record_hot_add(
    layout: VdimmLayout,
    backend_id: str,
    offered_pages: int,
    accepted_pages: int,
    success: bool,
) -> VdimmLayout:
    """Apply the guest's DM_MEM_HOT_ADD_RESPONSE to a chunk of ``offered_pages`` from ``backend_id``.

    QEMU's reply handling (HVB L1166-1223):

    * on success the accepted count is clamped to what was offered (a guest claiming more gets no
      more) and added to ``added_pages``;
    * on failure (result 0) the count is ignored entirely, as QEMU only looks at it when result != 0;
    * a failure or a short count marks everything not yet added unusable until reboot
      (``unusable_tail = usable_count - added_pages``); hot-add is never retried.

    ``offered_pages`` must be what :func:`plan_chunk` planned for this vDIMM (positive, aligned, at
    most ``remaining_pages``), else ValueError; a negative ``accepted_pages`` is a ValueError too.
    UNKNOWN_ID if the backend is not plugged.

    >>> layout, _ = plug(new_layout(0, 1 << 22), "mem1", 3 << 30, 7)
    >>> v = record_hot_add(layout, "mem1", 524288, 524288, True).get("mem1")
    >>> v.added_pages, v.remaining_pages
    (524288, 262144)
    >>> v = record_hot_add(layout, "mem1", 524288, 1000, True).get("mem1")
    >>> v.added_pages, v.unusable_tail, v.remaining_pages
    (1000, 785432, 0)

    Runtime complexity: O(n)
    """
    index, vdimm = _require(layout, backend_id)
    for name, value in (("offered_pages", offered_pages), ("accepted_pages", accepted_pages)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if offered_pages <= 0 or offered_pages % vdimm.alignment_pages or offered_pages > vdimm.remaining_pages:
        raise ValueError(
            f"offered_pages {offered_pages} was not planned for backend {backend_id!r}: it must be a positive"
            f" multiple of {vdimm.alignment_pages} and at most {vdimm.remaining_pages}"
        )
    if accepted_pages < 0:
        raise ValueError(f"accepted_pages must be >= 0, got {accepted_pages}")
    accepted = min(accepted_pages, offered_pages) if success else 0
    added = vdimm.added_pages + accepted
    unusable_tail = vdimm.usable_count - added if accepted < offered_pages else 0
    updated = dataclasses.replace(vdimm, added_pages=added, unusable_tail=unusable_tail)
    return _replace_at(layout, index, updated)


def record_hot_remove(layout: VdimmLayout, backend_id: str, pages: int) -> VdimmLayout:
    """Count ``pages`` of ``backend_id``'s hot-added memory as hot-removed (protocol 2.0).

    Bookkeeping only: the engine keeps the exact page sets.  QEMU has no hot-remove (section 8); hvdm
    supports it as Hyper-V does.  ValueError if more than ``added_pages - removed_pages`` or negative;
    UNKNOWN_ID if the backend is not plugged.

    >>> layout, _ = plug(new_layout(0, 1 << 22), "mem1", 1 << 30, 7)
    >>> layout = record_hot_add(layout, "mem1", 262144, 262144, True)
    >>> record_hot_remove(layout, "mem1", 4096).get("mem1").removed_pages
    4096

    Runtime complexity: O(n)
    """
    index, vdimm = _require(layout, backend_id)
    if isinstance(pages, bool) or not isinstance(pages, int):
        raise TypeError(f"pages must be an int, got {pages!r}")
    present = vdimm.added_pages - vdimm.removed_pages
    if not 0 <= pages <= present:
        raise ValueError(f"cannot hot-remove {pages} pages of backend {backend_id!r}: {present} are present")
    return _replace_at(layout, index, dataclasses.replace(vdimm, removed_pages=vdimm.removed_pages + pages))


def release_all(layout: VdimmLayout) -> tuple[VdimmLayout, tuple[str, ...]]:
    """Guest reboot (system reset): drop every vDIMM and return their backend ids, ascending by address.

    QEMU v2 deleted all vDIMMs on system reset and emitted one ``HV_BALLOON_MEMORY_BACKEND_UNUSED
    {id}`` per backend, so management can ``object_del`` it or add it again; the guest comes back at
    its boot size with nothing hot-added.  The window itself stays.

    >>> layout, _ = plug(new_layout(0, 1 << 22), "mem1", 1 << 30, 7)
    >>> release_all(layout)
    (VdimmLayout(window_start_page=0, window_end_page=4194304, vdimms=()), ('mem1',))

    Runtime complexity: O(n)
    """
    ids = tuple(v.backend_id for v in layout.vdimms)
    return dataclasses.replace(layout, vdimms=()), ids


def find_vdimm(layout: VdimmLayout, page: int) -> Vdimm | None:
    """The vDIMM whose backend ``[start_page, end_page)`` covers ``page``, or None.

    Covers head and tail too; callers that need "hot-added" check ``added_range`` themselves.

    >>> layout, _ = plug(new_layout(0, 1 << 22), "mem1", 1 << 30, 7)
    >>> find_vdimm(layout, 5).backend_id, find_vdimm(layout, 262144)
    ('mem1', None)

    Runtime complexity: O(log(n))
    """
    vdimms = layout.vdimms
    index = bisect.bisect_right(vdimms, page, key=lambda v: v.start_page) - 1
    if index >= 0 and page < vdimms[index].end_page:
        return vdimms[index]
    return None
