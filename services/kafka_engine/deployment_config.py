"""The engine config a Kafka deployment decides with: one for every worker and every audit.

Why in the meta topic: workers started with different flags must still decide identically (a
partition moving between them must replay to the same events), so the first proposal recorded wins.
"""

from __future__ import annotations

import json
from dataclasses import replace

from ..dm_engine.config import EngineConfig
from .kafka_log import put_meta_if_absent
from .settings import KafkaSettings


def engine_config_of(settings: KafkaSettings, default: EngineConfig | None = None) -> EngineConfig:
    """The deployment's engine config: the first one recorded in the meta topic wins, so every
    worker and every audit decides with the same one."""
    # Retention (forgetting VMs) is the embedded service's: a partition keeps every VM's cursor, so
    # a forgotten VM would be counted down and forgotten again forever. Kafka logs keep every VM.
    proposed = json.dumps(replace(default or EngineConfig(), retention_ticks=0).to_dict(), sort_keys=True)
    return EngineConfig.from_dict(json.loads(put_meta_if_absent(settings, "engine_config", proposed)))
