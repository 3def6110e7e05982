"""The embedded deployment's gateway backend: the gateway's view of the in-process service."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..dm_engine.inputs import Input
from ..dm_engine.step import Processed
from ..event_log.sqlite_log import OutboxRow
from .service import EmbeddedService


class EmbeddedBackend:
    """The gateway's view of the embedded service (same process, same SQLite file)."""

    def __init__(self, service: EmbeddedService) -> None:
        self.service = service

    def submit(self, vm: str, record: Input) -> int:
        return self.service.submit(vm, record)

    def read_outbox(self, vm: str, after_seq: int, limit: int = 1000) -> list[OutboxRow]:
        return self.service.log.read_outbox(vm, after_seq, limit)

    def outbox_high_watermark(self, vm: str) -> int:
        return self.service.log.outbox_high_watermark(vm)

    def delivered(self, vm: str) -> int:
        return self.service.log.get_position(f"delivered:{vm}")

    def set_delivered(self, vm: str, seq: int) -> None:
        self.service.log.set_position(f"delivered:{vm}", seq)

    def known_vm(self, vm: str) -> bool:
        return vm in self.service.runner.states

    def owner(self, vm: str) -> int:
        return self.service.log.get_position(f"owner:{vm}")

    def set_owner(self, vm: str, digest: int) -> None:
        self.service.log.set_position(f"owner:{vm}", digest)

    def on_outbox(self, cb: Callable[[set[str]], None]) -> None:
        def listener(batch: Sequence[Processed]) -> None:
            cb({p.vm for p in batch})

        self.service.add_listener(listener)
