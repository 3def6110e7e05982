"""The bounds module and the validators built on it: docstring examples run, and the bounds agree
with the wire format and the engine they describe."""

from __future__ import annotations

import doctest
import importlib

import pytest

from services.dm_engine import decider, limits
from services.dm_protocol import EncodeError, HotAddRequest, encode

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


def test_the_bounds_are_the_engines_and_the_wire_formats() -> None:
    assert limits.WINDOW_ALIGN_PAGES == decider.WINDOW_ALIGN_PAGES
    assert limits.PAGE_SHIFT == decider.PAGE_SHIFT
    # The last page a hot-add range can start at encodes; one more does not.
    last = limits.MAX_PAGE_NUMBER
    assert encode(HotAddRequest(range=(last, 1)))
    with pytest.raises(EncodeError):
        encode(HotAddRequest(range=(last + 1, 1)))


def test_the_largest_layout_a_hello_may_describe_fits_the_wire() -> None:
    boot = 4 << 30
    window = limits.PAGE_LIMIT - limits.default_window_start(boot >> limits.PAGE_SHIFT)
    maxmem = boot + (window << limits.PAGE_SHIFT)
    limits.check_layout(boot, maxmem, None)
    with pytest.raises(limits.BoundsError):
        limits.check_layout(boot, maxmem + 4096, None)
