"""What a gateway needs from the log it sits on, so one gateway serves both deployments.

Each deployment implements it in its own package: ``embedded.gateway_backend`` talks to the
in-process ``EmbeddedService``, ``kafka_engine.gateway_backend`` publishes to and consumes from
topics. Delivery positions are kept per VM so that a restarted gateway resumes host-to-guest
delivery exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..dm_engine.inputs import Input
from ..event_log.sqlite_log import OutboxRow


class GatewayBackend(Protocol):
    def submit(self, vm: str, record: Input) -> int: ...
    def read_outbox(self, vm: str, after_seq: int, limit: int = 1000) -> list[OutboxRow]: ...
    def outbox_high_watermark(self, vm: str) -> int: ...
    def delivered(self, vm: str) -> int: ...
    def set_delivered(self, vm: str, seq: int) -> None: ...
    def on_outbox(self, cb: Callable[[set[str]], None]) -> None: ...
    def known_vm(self, vm: str) -> bool:
        """Whether the log already has this VM (a hello for an unknown id creates a VM: limited)."""
        ...

    def owner(self, vm: str) -> int:
        """Digest of the peer identity that last held the VM's channel (0: none), kept across
        gateway restarts where the backend can, so only that peer may resume the channel."""
        ...

    def set_owner(self, vm: str, digest: int) -> None: ...
