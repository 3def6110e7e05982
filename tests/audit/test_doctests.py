"""The docstring examples are executable documentation: keep them true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["services.audit.report", "services.audit.render", "services.audit.behaviour", "services.audit.html"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), verbose=False)
    assert result.attempted > 0
    assert result.failed == 0
