"""``GuestConfig``: everything that makes one simulated guest different from another, in one record.

Why one frozen record: the conventions ask for one typed configuration object passed down, and a
frozen value makes a run reproducible from ``(config, inputs)`` alone. Defaults model the Linux
x86-64 guest of guest-behaviour.md 11; each field says where its default comes from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from ..units import PAGE_SIZE
from ..vdimm_allocator.ram_layout import MACHINES, RamRanges, check_ram_ranges, legacy_ram_ranges, x86_ram_ranges
from .profiles import get_profile
from .workload import make_workload

MIB_PAGES: Final = 256

#: Kinds of ``add_memory`` failure a test can inject (guest-behaviour.md 6, "Adding blocks").
AddMemoryFault = Literal["transient", "eexist"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestConfig:
    """Configuration of one ``SimulatedGuest``.

    * ``boot_bytes``: RAM at boot; pages ``[0, boot_bytes // 4096)`` (a multiple of 2 MiB).
    * ``profile`` / ``workload``: names from ``PROFILES`` / ``WORKLOADS``; ``seed`` drives the workload.
    * ``hot_add_alignment``: log2 of the memory-block size in MiB (7..11). None computes it as
      Linux does (section 2.3): 7 below 64 GiB of boot RAM, else the largest power of two <= 2 GiB
      dividing the end of boot memory. The Windows profile always uses 7.
    * ``hibernation_capable``: balloon/unballoon ignored, hot-add answered (0, 1) (sections 4-6).
    * ``hot_add_enabled``: Linux's ``hot_add`` module parameter; False answers hot-add (0, 1).
    * ``instant``: answer within the same ``receive`` call. False models time: balloon at
      ``balloon_bytes_per_minute`` (default 230 GB/min, the seed's measured figure), each hot-added
      block taking ``hot_add_seconds_per_block`` (Linux waits up to 5 s per block for onlining).
    * ``reserved_bytes``: memory the kernel keeps out of MemTotal (memmap, kernel image). Real
      kernels keep 2-4 %; the default 0 keeps arithmetic in tests obvious.
    * ``page_cache_fraction``: share of the not-committed memory held as reclaimable page cache.
      It counts in MemAvailable but the balloon's no-retry allocations do not take it.
    * ``hz``: kernel tick rate; the status rate limit is counted in jiffies (section 3).
    * ``add_memory_faults``: ``(block start page, "transient" | "eexist")`` pairs; each makes the
      next ``add_memory`` of that block fail once (-EAGAIN-like or -EEXIST).
    * ``max_phys_page``: ``add_memory`` beyond this fails transiently (46-bit physical addresses).
    * ``flood_reports_per_second``: status rate of the ``status_flood`` misbehaviour.
    * ``machine`` / ``ram``: where RAM is. ``"q35"`` or ``"pc"`` split it around the PCI hole as
      QEMU does (``ram_layout``); ``"flat"`` keeps it at ``[0, boot)``; an explicit ``ram`` list of
      ``(start_page, page_count)`` overrides both. The hello a simulated guest sends says the same.
    * ``vcpus``: with 1 (the real guest of ``../shared/realguest`` has one) the status thread does
      not run while the balloon worker is allocating; it runs when the worker sends.
    """

    boot_bytes: int = 4 << 30
    profile: str = "linux"
    workload: str = "steady"
    seed: int = 0
    hot_add_alignment: int | None = None
    hibernation_capable: bool = False
    hot_add_enabled: bool = True
    instant: bool = True
    reserved_bytes: int = 0
    page_cache_fraction: float = 0.0
    hz: int = 250
    balloon_bytes_per_minute: int = 230 * 10**9
    hot_add_seconds_per_block: float = 0.5
    add_memory_faults: tuple[tuple[int, AddMemoryFault], ...] = ()
    max_phys_page: int = 1 << 34
    flood_reports_per_second: int = 50
    vcpus: int = 1
    machine: str = "q35"
    ram: RamRanges | None = None

    def __post_init__(self) -> None:
        # Invalid configuration is a programmer error: fail at construction, not mid-run.
        if self.boot_bytes <= 0 or self.boot_bytes % (2 << 20):
            raise ValueError(f"boot_bytes must be a positive multiple of 2 MiB, got {self.boot_bytes}")
        get_profile(self.profile)
        make_workload(self.workload, self.boot_pages, self.seed)
        if self.hot_add_alignment is not None and not 7 <= self.hot_add_alignment <= 11:
            raise ValueError(f"hot_add_alignment must be 7..11, got {self.hot_add_alignment}")
        if not 0 <= self.reserved_bytes < self.boot_bytes or self.reserved_bytes % PAGE_SIZE:
            raise ValueError("reserved_bytes must be a whole number of pages below boot_bytes")
        if not 0.0 <= self.page_cache_fraction < 1.0:
            raise ValueError("page_cache_fraction must be in [0, 1)")
        if self.hz <= 0 or self.balloon_bytes_per_minute <= 0 or self.hot_add_seconds_per_block < 0:
            raise ValueError("hz and balloon_bytes_per_minute must be positive, hot-add time >= 0")
        if self.machine not in (*MACHINES, "flat"):
            raise ValueError(f"machine must be one of {', '.join((*MACHINES, 'flat'))}")
        if self.ram is not None:
            check_ram_ranges(self.ram, self.boot_pages)
        if self.vcpus < 1:
            raise ValueError("vcpus must be at least 1")
        if self.flood_reports_per_second <= 1:
            raise ValueError("flood_reports_per_second must be above 1 to be a flood")
        for _, kind in self.add_memory_faults:
            if kind not in ("transient", "eexist"):
                raise ValueError(f"unknown add_memory fault {kind!r}")

    @property
    def boot_pages(self) -> int:
        return self.boot_bytes // PAGE_SIZE

    def ram_ranges(self) -> RamRanges:
        """Boot RAM as page ranges (see ``machine`` / ``ram``)."""
        if self.ram is not None:
            return self.ram
        if self.machine == "flat":
            return legacy_ram_ranges(self.boot_pages)
        return x86_ram_ranges("pc" if self.machine == "pc" else "q35", self.boot_pages)

    @property
    def ram_end_page(self) -> int:
        """Linux's ``max_pfn`` at boot: one past the highest RAM page, the PCI hole included."""
        ranges = self.ram_ranges()
        return ranges[-1][0] + ranges[-1][1]

    @property
    def reserved_pages(self) -> int:
        return self.reserved_bytes // PAGE_SIZE

    @property
    def balloon_pages_per_second(self) -> float:
        return self.balloon_bytes_per_minute / PAGE_SIZE / 60.0

    def effective_alignment(self) -> int:
        """The advertised ``hot_add_alignment`` (section 2.3, ``probe_memory_block_size``)."""
        if get_profile(self.profile).is_windows:
            return 7 if self.hot_add_alignment is None else self.hot_add_alignment
        if self.hot_add_alignment is not None:
            return self.hot_add_alignment
        if self.boot_bytes < 64 << 30:
            return 7
        end_mib = (self.ram_end_page * PAGE_SIZE) >> 20  # the end of boot memory: max_pfn
        alignment = 11
        while end_mib % (1 << alignment):
            alignment -= 1
        return max(alignment, 7)

    @property
    def chunk_pages(self) -> int:
        """Pages per hot-add chunk (one memory block): 2**alignment MiB."""
        return (1 << self.effective_alignment()) * MIB_PAGES
