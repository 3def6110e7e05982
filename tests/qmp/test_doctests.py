"""The docstring examples of the QMP and metrics modules are executable documentation."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "services.qmp.hmp",
    "services.qmp.paths",
    "services.qmp.protocol",
    "services.qmp.ratelimit",
    "services.metrics.exposition",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
