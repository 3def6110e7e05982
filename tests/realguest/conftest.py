"""Fixtures of the real-guest tests: the kit, set up once per session; every guest is stopped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.realguest.kit import Rig, find_kit


@pytest.fixture(scope="session")
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    kit = find_kit()
    if kit is None:
        pytest.skip("the real-guest kit (../shared/realguest/rig) is not next to this repository")
    r = Rig(kit)
    r.setup()
    yield r
    r.down()
    if request.session.testsfailed:
        # Logs stay for a failed run's post-mortem (rig keeps them); the images are the bulk.
        shutil.rmtree(r.work / "images", ignore_errors=True)
    else:
        shutil.rmtree(r.work, ignore_errors=True)
