"""A real Kafka-protocol broker for the Kafka tests: tansu on a free loopback port, one per session.

Each test gets its own topic prefix, so tests share the broker (starting it takes a fraction of a
second, but Faust workers joining a fresh group take seconds either way) without sharing logs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from services.kafka_engine.tansu import LocalBroker, start_broker

_prefixes = itertools.count(1)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    b = start_broker(log_path=str(log))
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}"
