"""The bounds module and the validators built on it: docstring examples run, and the bounds agree
with the wire format and the engine they describe."""

from __future__ import annotations

import doctest
import importlib

import pytest

from services import units
from services.dm_engine import decider, limits
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_protocol import EncodeError, HotAddRequest, encode
from services.vdimm_allocator.ram_layout import x86_ram_ranges

MODULES = [
    "services.dm_engine.limits",
    "services.dm_engine.records",
    "services.vmbus_gateway.hello",
    "services.kafka_engine.envelope",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("boot_gib", [1, 4, 31, 32, 33, 1000])
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_the_engine_places_a_default_window_no_later_than_the_bound_assumes(boot_gib: int, machine: str) -> None:
    """``check_window`` is conservative only if the engine's window starts at or before
    ``default_window_start``: then a window the bound accepts ends below page 2**40."""
    boot = boot_gib << 30
    ram = x86_ram_ranges(machine, boot >> units.PAGE_SHIFT)  # type: ignore[arg-type]
    opened = inp.ChannelOpened(boot_bytes=boot, maxmem_bytes=2 * boot, ram=ram)
    [described] = [e for e in decider.process(decider.initial_state("vm"), opened) if isinstance(e, ev.VmDescribed)]
    assert described.window_start_page <= limits.default_window_start(boot >> units.PAGE_SHIFT, ram)
    assert units.PAGE_SHIFT == decider.PAGE_SHIFT


def test_the_bounds_are_the_wire_formats() -> None:
    # The last page a hot-add range can start at encodes; one more does not.
    last = limits.MAX_PAGE_NUMBER
    assert encode(HotAddRequest(range=(last, 1)))
    with pytest.raises(EncodeError):
        encode(HotAddRequest(range=(last + 1, 1)))


def test_the_largest_layout_a_hello_may_describe_fits_the_wire() -> None:
    boot = 4 << 30
    window = limits.PAGE_LIMIT - limits.default_window_start(boot >> units.PAGE_SHIFT)
    maxmem = boot + (window << units.PAGE_SHIFT)
    limits.check_layout(boot, maxmem, None)
    with pytest.raises(limits.BoundsError):
        limits.check_layout(boot, maxmem + 4096, None)
