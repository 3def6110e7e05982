"""The docstring examples of the protocol modules are executable documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "services.dm_protocol.codec",
    "services.dm_protocol.framing",
    "services.dm_protocol.json_form",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
