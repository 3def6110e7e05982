"""The x86 RAM layout and the hot-add window start, checked against QEMU's own rules.

The examples restate ``pc_q35_init`` (hw/i386/pc_q35.c), ``pc_init1`` (hw/i386/pc_piix.c) and
``pc_get_device_memory_range`` (hw/i386/pc.c) with the numbers QEMU itself would compute; the
property tests check what must hold for every RAM size.
"""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.vdimm_allocator import ram_layout
from services.vdimm_allocator.ram_layout import (
    FOUR_GIB_PAGE,
    GIB_PAGES,
    HV_BALLOON_DEVICE_ALIGN_PAGES,
    RamLayoutError,
    check_ram_ranges,
    device_memory_start_page,
    hot_add_window_start_page,
    legacy_ram_ranges,
    ram_end_page,
    x86_ram_ranges,
)

MIB_PAGES = 256


def test_doctests() -> None:
    """The docstring examples are QEMU's own numbers."""
    result = doctest.testmod(ram_layout)
    assert result.attempted > 5 and result.failed == 0


@pytest.mark.parametrize(
    ("ram_mib", "expected"),
    [
        # pc_q35_init: lowmem = 0x80000000 if ram_size >= 0xb0000000 else 0xb0000000
        (1024, ((0, 1024 * MIB_PAGES),)),
        (2815, ((0, 2815 * MIB_PAGES),)),  # just below 2.75 GiB: still all below 4 GiB
        (2816, ((0, 2048 * MIB_PAGES), (FOUR_GIB_PAGE, 768 * MIB_PAGES))),  # exactly 0xb0000000
        (4096, ((0, 2048 * MIB_PAGES), (FOUR_GIB_PAGE, 2048 * MIB_PAGES))),
    ],
)
def test_q35_split_follows_pc_q35_init(ram_mib: int, expected: tuple[tuple[int, int], ...]) -> None:
    """pc_q35_init: lowmem 0x80000000 when ram_size >= 0xb0000000, else 0xb0000000."""
    assert x86_ram_ranges("q35", ram_mib * MIB_PAGES) == expected


@pytest.mark.parametrize(
    ("ram_mib", "expected"),
    [
        # pc_init1: max_ram_below_4g defaults to 0xe0000000; gigabyte_align lowers it to 0xc0000000
        (3072, ((0, 3072 * MIB_PAGES),)),
        (3583, ((0, 3583 * MIB_PAGES),)),
        (3584, ((0, 3072 * MIB_PAGES), (FOUR_GIB_PAGE, 512 * MIB_PAGES))),
        (8192, ((0, 3072 * MIB_PAGES), (FOUR_GIB_PAGE, 5120 * MIB_PAGES))),
    ],
)
def test_pc_split_follows_pc_init1(ram_mib: int, expected: tuple[tuple[int, int], ...]) -> None:
    """pc_init1: max_ram_below_4g 0xe0000000, lowered to 0xc0000000 by gigabyte_align."""
    assert x86_ram_ranges("pc", ram_mib * MIB_PAGES) == expected


def test_window_of_the_realguest_rig() -> None:
    """The rig's ``hotadd`` variant (``-m 1G,maxmem=40G``): QEMU reports memaddr 34359738368."""
    assert hot_add_window_start_page(x86_ram_ranges("q35", GIB_PAGES)) * 4096 == 34359738368


def test_window_clears_relocated_ram() -> None:
    """31 GiB on q35: RAM runs to 33 GiB, so the 32 GiB boundary is taken; the device goes to 64 GiB
    (hvdm's old rule, boot rounded up to 32 GiB, would have put it on top of relocated RAM)."""
    ram = x86_ram_ranges("q35", 31 * GIB_PAGES)
    assert ram_end_page(ram) == 33 * GIB_PAGES
    assert device_memory_start_page(ram) == 33 * GIB_PAGES
    assert hot_add_window_start_page(ram) == 64 * GIB_PAGES


def test_device_memory_rounds_to_a_gigabyte() -> None:
    """pc_get_device_memory_range: ROUND_UP(pc_above_4g_end, 1 GiB)."""
    ram = ((0, 2 * GIB_PAGES), (FOUR_GIB_PAGE, GIB_PAGES + 1))
    assert device_memory_start_page(ram) == 6 * GIB_PAGES


@given(machine=st.sampled_from(("q35", "pc")), ram=st.integers(min_value=1, max_value=1 << 30))
def test_layout_properties(machine: str, ram: int) -> None:
    """pc_q35_init / pc_init1 / pc_get_device_memory_range for every RAM size."""
    ranges = x86_ram_ranges(machine, ram)  # type: ignore[arg-type]
    # every page of -m is somewhere, exactly once, ascending and disjoint
    assert sum(c for _, c in ranges) == ram
    assert check_ram_ranges(ranges, ram) == ranges
    low_start, low_count = ranges[0]
    assert low_start == 0
    # the PCI hole: nothing between the low limit and 4 GiB
    limit = (0xB000_0000 if machine == "q35" else 0xE000_0000) >> 12
    assert low_count <= limit
    if len(ranges) == 2:
        assert ranges[1][0] == FOUR_GIB_PAGE
        assert low_count == (0x8000_0000 if machine == "q35" else 0xC000_0000) >> 12
    else:
        assert ram < limit
    # the hot-add window starts above all RAM, gigabyte- and device-aligned
    window = hot_add_window_start_page(ranges)
    assert window >= ram_end_page(ranges)
    assert window >= FOUR_GIB_PAGE
    assert window % HV_BALLOON_DEVICE_ALIGN_PAGES == 0
    assert window - device_memory_start_page(ranges) < HV_BALLOON_DEVICE_ALIGN_PAGES
    assert device_memory_start_page(ranges) % GIB_PAGES == 0


@given(boot=st.integers(min_value=1, max_value=1 << 30))
def test_legacy_layout_keeps_the_old_window(boot: int) -> None:
    """Upcast: an old hello (no layout) means RAM = [0, boot); its window must stay where hvdm put
    it before, boot rounded up to 32 GiB, so replaying an old log decides the same events."""
    old_rule = -(-boot // HV_BALLOON_DEVICE_ALIGN_PAGES) * HV_BALLOON_DEVICE_ALIGN_PAGES
    assert hot_add_window_start_page(legacy_ram_ranges(boot)) == old_rule


@pytest.mark.parametrize(
    ("ranges", "ram", "message"),
    [
        ([], 0, "at least one"),
        ([[0, 10], [5, 10]], 20, "overlap"),
        ([[10, 10], [0, 5]], 15, "ascending"),
        ([[0, 0]], 0, "positive count"),
        ([[-1, 5]], 5, "non-negative"),
        ([[0, 10]], 11, "add up"),
        ([[(1 << 40) - 1, 2]], 2, r"2\*\*40"),
        ([[0, 1.5]], 1, "integers"),
        ([[0, True]], 1, "integers"),
        ([[0, 1, 2]], 1, "integers"),
        ([[i * 2, 1] for i in range(65)], 65, "at most 64"),
    ],
)
def test_explicit_ram_is_validated(ranges: list[list[object]], ram: int, message: str) -> None:
    """An explicit map must be one a machine could have: ascending, disjoint, 40-bit pages, -m in total."""
    with pytest.raises(RamLayoutError, match=message):
        check_ram_ranges(ranges, ram)  # type: ignore[arg-type]


def test_unknown_machine_and_empty_ram_are_refused() -> None:
    """Only QEMU's q35 and pc (i440FX) rules are modelled."""
    with pytest.raises(RamLayoutError, match="machine"):
        x86_ram_ranges("microvm", GIB_PAGES)  # type: ignore[arg-type]
    with pytest.raises(RamLayoutError, match="positive"):
        x86_ram_ranges("q35", 0)
