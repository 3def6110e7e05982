"""What one ``hvdm engine --broker`` process is told to do, typed and fixed before it starts.

Why a frozen dataclass: the CLI validates every flag once and builds this; the worker modules read
named, typed fields instead of probing an ``argparse.Namespace`` with ``getattr`` defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..dm_engine.config import EngineConfig

if TYPE_CHECKING:
    from ..metrics import MetricsLabels


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    #: ``kafka://HOST:PORT[?option=value...]`` (``KafkaSettings.from_url``).
    broker: str
    #: Proposed engine config; the first one recorded in the meta topic wins (``deployment_config``).
    engine_config: EngineConfig | None = None
    #: Inbox records per fetch (Faust's ``broker_max_poll_records``), at least 1.
    batch: int = 500
    #: Inbox records a partition processes between checkpoint rounds (``checkpoints``).
    snapshot_every: int = 2000
    #: Log at info level.
    verbose: bool = False
    #: Fetches that may wait for the writer (back-pressure on the fetcher).
    pipeline: int = 2
    #: Serve /metrics at (host, port) while running (port 0: any free one).
    metrics: tuple[str, int] | None = None
    metrics_labels: MetricsLabels | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, not {self.batch}")
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, not {self.snapshot_every}")
        if self.pipeline < 1:
            raise ValueError(f"pipeline must be at least 1, not {self.pipeline}")
