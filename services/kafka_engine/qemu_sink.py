"""The QEMU agent on the Kafka deployment: inputs to the inbox topic, commands from the outbox topic.

``hvdm gateway --broker ... --qemu ...`` runs it beside the VMBus gateway on a hypervisor host:
the engine workers decide for QEMU-managed VMs exactly as the embedded engine does (the outbox
records of their ``QemuBalloonCommanded`` events are QMP commands), and this host's agent
delivers them to its QEMU monitors.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..dm_engine.inputs import Input
from ..qemu_agent.agent import QemuAgent
from .gateway_backend import KafkaBackend


class KafkaSink:
    def __init__(self, backend: KafkaBackend) -> None:
        self.backend = backend

    def submit(self, vm: str, record: Input) -> int:
        return self.backend.submit(vm, record)

    def outbox_after(self, vm: str, after_seq: int) -> list[tuple[int, bytes]]:
        rows = self.backend.read_outbox(vm, after_seq)
        if rows:
            self.backend.set_delivered(vm, rows[-1].seq)
        return [(row.seq, row.message) for row in rows]

    def outbox_high_watermark(self, vm: str) -> int:
        return self.backend.outbox_high_watermark(vm)


async def attach_to_backend(
    backend: KafkaBackend,
    addresses: Sequence[str],
    *,
    directory: str | None = None,
    poll_seconds: float = 1.0,
    trace_file: str | None = None,
) -> QemuAgent:
    """Start an agent publishing to ``backend``'s inbox; outbox records wake its sessions."""
    agent = QemuAgent(
        KafkaSink(backend), addresses, directory=directory, poll_seconds=poll_seconds, trace_file=trace_file
    )

    def wake(vms: set[str]) -> None:
        for vm in vms:
            session = agent.sessions.get(vm)
            if session is not None:
                session.wake.set()

    backend.on_outbox(wake)
    await agent.start()
    return agent
