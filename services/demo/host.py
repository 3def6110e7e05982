"""What the demo needs from a deployment: submit operator inputs, read VM states, tell the time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..dm_engine.inputs import Input
from ..dm_engine.state import VmState


class DemoHost(Protocol):
    """A running deployment, as the demo script sees it (``EmbeddedService``, the Kafka
    ``BrokerService``). ``submit`` returns a token that ``consumed`` reaches once the engine has
    processed the input, so a script waits for its own inputs before it judges the state."""

    @property
    def states(self) -> Mapping[str, VmState]: ...

    @property
    def consumed(self) -> int: ...

    def submit(self, vm: str, record: Input) -> int: ...

    def now_tick(self) -> int: ...

    def now_seconds(self) -> float: ...
