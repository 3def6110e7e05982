"""The embedded deployment's QEMU agent sink: inputs into the SQLite inbox, commands from its outbox."""

from __future__ import annotations

from collections.abc import Sequence

from ..dm_engine.inputs import Input
from ..qemu_agent.agent import QemuAgent
from .service import EmbeddedService


class EmbeddedSink:
    def __init__(self, service: EmbeddedService) -> None:
        self.service = service

    def submit(self, vm: str, record: Input) -> int:
        return self.service.submit(vm, record)

    def outbox_after(self, vm: str, after_seq: int) -> list[tuple[int, bytes]]:
        return [(row.seq, row.message) for row in self.service.log.read_outbox(vm, after_seq)]

    def outbox_high_watermark(self, vm: str) -> int:
        return self.service.log.outbox_high_watermark(vm)


async def attach_to_service(
    service: EmbeddedService,
    addresses: Sequence[str],
    *,
    directory: str | None = None,
    poll_seconds: float = 1.0,
    trace_file: str | None = None,
) -> QemuAgent:
    """Start an agent feeding ``service``; the caller closes it before stopping the service."""
    agent = QemuAgent(
        EmbeddedSink(service), addresses, directory=directory, poll_seconds=poll_seconds, trace_file=trace_file
    )
    service.add_listener(agent.on_batch)
    await agent.start()
    return agent
