"""The examples in guest_sim docstrings run."""

from __future__ import annotations

import doctest

import pytest

from services.guest_sim import memory


@pytest.mark.parametrize("module", [memory])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module, raise_on_error=False)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
