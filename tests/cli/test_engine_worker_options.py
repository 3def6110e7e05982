"""``hvdm engine --broker``'s flags become one typed, frozen ``WorkerOptions`` (no Namespace reaches the worker)."""

from __future__ import annotations

import dataclasses

import pytest

from services.cli.config_file import config_of
from services.cli.engine_cmd import worker_options_of
from services.cli.main import build_parser
from services.kafka_engine.worker_options import WorkerOptions


def _options(*argv: str) -> WorkerOptions:
    args = build_parser("engine").parse_args(["engine", *argv])
    args.engine_config = config_of(args).engine_config()
    return worker_options_of(args)


def test_flags_map_to_named_fields() -> None:
    options = _options(
        "--broker",
        "kafka://127.0.0.1:9092?prefix=t",
        "--batch",
        "64",
        "--snapshot-every",
        "300",
        "-v",
        "--metrics-port",
        "9731",
        "--metrics-host",
        "0.0.0.0",
        "--metrics-host-label",
        "h1",
        "--metrics-vm-label",
        "vm,domain",
    )
    assert options.broker == "kafka://127.0.0.1:9092?prefix=t"
    assert (options.batch, options.snapshot_every, options.verbose) == (64, 300, True)
    assert options.metrics == ("0.0.0.0", 9731)
    assert options.metrics_labels is not None
    assert options.metrics_labels.host == "h1"
    assert options.metrics_labels.vm_labels == ("vm", "domain")
    assert options.engine_config is None  # no [engine_config] in a config file: the meta topic's or the default


def test_defaults_serve_no_metrics_and_the_options_are_frozen() -> None:
    options = _options("--broker", "kafka://127.0.0.1:9092")
    assert options.metrics is None
    assert (options.batch, options.snapshot_every, options.verbose, options.pipeline) == (500, 2000, False, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch = 1  # type: ignore[misc]


@pytest.mark.parametrize("field", ["batch", "snapshot_every", "pipeline"])
def test_a_non_positive_count_is_refused(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be at least 1"):
        WorkerOptions(broker="kafka://127.0.0.1:9092", **{field: 0})  # type: ignore[arg-type]
