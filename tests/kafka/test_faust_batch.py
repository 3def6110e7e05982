"""The Faust internals the worker relies on are guarded: an unsupported Faust fails at start, loudly.

No broker needed: these check the guard itself, on the installed Faust and on a pretended one.
"""

from __future__ import annotations

from types import SimpleNamespace

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.kafka_engine.faust_batch import (
    FAUST_INTERNALS,
    SUPPORTED_FAUST,
    UnsupportedFaust,
    batching_consumer,
    check_faust_version,
    require_internals,
)
from services.kafka_engine.settings import KafkaSettings
from services.kafka_engine.worker import make_app


def test_the_installed_faust_is_supported() -> None:
    version = check_faust_version()
    assert version == faust.__version__
    assert ".".join(version.split(".")[:2]) in SUPPORTED_FAUST


@pytest.mark.parametrize("version", ["0.16.0", "0.14.9", "1.10.4", "unknown", ""])
def test_an_unsupported_faust_version_is_refused_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(faust, "__version__", version)
    with pytest.raises(UnsupportedFaust) as exc_info:
        check_faust_version()
    message = str(exc_info.value)
    assert f"faust-streaming {version} is not supported" in message
    assert "0.15.x" in message
    assert "faust_batch.py" in message


def test_building_the_worker_app_refuses_an_unsupported_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faust, "__version__", "0.16.1")
    with pytest.raises(UnsupportedFaust, match=r"0\.16\.1"):
        make_app(KafkaSettings.from_url("kafka://127.0.0.1:1"), batch=10)


def test_a_consumer_missing_an_internal_is_refused() -> None:
    """A release that renamed a private attribute is refused before the drain loop reads a record."""
    complete = SimpleNamespace(**dict.fromkeys(FAUST_INTERNALS))
    require_internals(complete)
    for name in FAUST_INTERNALS:
        partial = SimpleNamespace(**{n: None for n in FAUST_INTERNALS if n != name})
        with pytest.raises(UnsupportedFaust, match=f"does not support this Faust version \\(no {name}\\)"):
            require_internals(partial)


def test_the_batching_consumer_of_the_installed_faust_has_the_class_level_internals() -> None:
    consumer_class = batching_consumer(faust_aiokafka.Consumer)
    for name in ("_wait_next_records", "perform_seek", "flow_active", "consumer_stopped_errors"):
        assert hasattr(consumer_class, name), name
