"""Every test gets its own QMP socket directory.

``hvdm run`` serves per-VM QMP sockets in ``default_qmp_dir()`` unless told otherwise (the directory
``hvdm ctl`` looks in), so tests that start services, in-process or as subprocesses, must not share
one: ``HVDM_QMP_DIR`` points each test at a fresh, short directory (socket paths are limited to 107
bytes) that is removed afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _private_qmp_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    path = tempfile.mkdtemp(prefix="hq-")
    monkeypatch.setenv("HVDM_QMP_DIR", f"{path}/qmp")
    yield
    shutil.rmtree(path, ignore_errors=True)
