"""Plays a Linux-like guest against a real, running EmbeddedService.

The metrics and QMP tests need VMs whose state came from the real engine: inputs go through
``service.submit`` (the inbox), guest messages are encoded with ``services.dm_protocol``, and the
guest answers whatever the engine wrote to its outbox, the way a guest answers the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.dm_engine import inputs as inp
from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesReport,
    HotAddRequest,
    HotAddResponse,
    Message,
    StatusReport,
    UnballoonRequest,
    UnballoonResponse,
    VersionRequest,
    decode,
    encode,
)
from services.embedded.service import EmbeddedService

GIB = 1 << 30
MIB = 1 << 20
PAGE = 4096


@dataclass
class GuestDriver:
    service: EmbeddedService
    vm: str
    boot_bytes: int = 4 * GIB
    maxmem_bytes: int = 64 * GIB
    hot_add: bool = True
    status_reports: bool = True
    #: Pages handed to the host are taken from the top of boot RAM downwards.
    _next_free_top: int = 0
    _outbox_seq: int = 0
    _trans: int = 100
    received: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._next_free_top = self.boot_bytes // PAGE

    async def put(self, record: inp.Input) -> int:
        pos = self.service.submit(self.vm, record)
        await self.service.wait_processed(pos)
        return pos

    async def send(self, msg: Message) -> int:
        return await self.put(inp.GuestMessage(raw=encode(msg)))

    async def open(self) -> None:
        await self.put(
            inp.ChannelOpened(
                boot_bytes=self.boot_bytes, maxmem_bytes=self.maxmem_bytes, status_reports=self.status_reports
            )
        )

    async def handshake(self) -> None:
        await self.open()
        await self.send(VersionRequest(trans_id=1, version=0x00020000))
        await self.send(CapabilitiesReport(trans_id=2, balloon=True, hot_add=self.hot_add, hot_add_alignment=7))

    async def tick(self, n: int = 1) -> None:
        """Move the engine clock by ``n`` ticks now (the tests freeze the wall-clock ticker)."""
        pos = 0
        for _ in range(n):
            pos = self.service.append_tick(self.service.now_tick() + 1)
        await self.service.wait_processed(pos)

    async def status(self, available_bytes: int, committed_bytes: int) -> None:
        self._trans += 1
        await self.send(
            StatusReport(trans_id=self._trans, num_avail=available_bytes // PAGE, num_committed=committed_bytes // PAGE)
        )

    def _new_outbox(self) -> list[Message]:
        rows = self.service.log.read_outbox(self.vm, self._outbox_seq)
        if rows:
            self._outbox_seq = rows[-1].seq
        msgs = [decode(r.message) for r in rows]
        self.received.extend(msgs)
        return msgs

    async def answer(self, rounds: int = 50) -> int:
        """Answer every host request until the host has nothing more to say; returns answers sent."""
        sent = 0
        for _ in range(rounds):
            msgs = self._new_outbox()
            if not msgs:
                return sent
            for m in msgs:
                if isinstance(m, BalloonRequest):
                    top = self._next_free_top
                    self._next_free_top -= m.num_pages
                    await self.send(
                        BalloonResponse(
                            trans_id=m.trans_id,
                            more_pages=False,
                            ranges=((self._next_free_top, m.num_pages),),
                        )
                    )
                    assert top > m.num_pages
                    sent += 1
                elif isinstance(m, UnballoonRequest):
                    if not m.more_pages:
                        await self.send(UnballoonResponse(trans_id=m.trans_id))
                        sent += 1
                elif isinstance(m, HotAddRequest):
                    await self.send(HotAddResponse(trans_id=m.trans_id, page_count=m.range[1], result=1))
                    sent += 1
        raise AssertionError("the host kept asking; the guest gave up answering")
