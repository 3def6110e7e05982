"""A scripted, in-process driver for one VM's engine: inputs in, events and host messages out.

Tests use it to play the guest by hand (with the real codec) and to assert on what the engine
decided; every event is checked against the accounting invariants as it is folded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.dm_engine import EngineConfig, check_invariants, initial_state, outbox_messages, process
from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine.records import event_json, input_json
from services.dm_engine.state import VmState
from services.dm_protocol import BalloonResponse, CapabilitiesReport, HotAddResponse, Message, VersionRequest, encode

GIB_PAGES = 1 << 18
FAST = EngineConfig(post_init_wait_ticks=2)


@dataclass
class Harness:
    boot_bytes: int = 4 << 30
    maxmem_bytes: int = 64 << 30
    config: EngineConfig = FAST
    vm_id: str = "vm1"
    tick: int = 0
    state: VmState = field(init=False)
    inputs: list[inp.Input] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = initial_state(self.vm_id)

    def feed(self, record: inp.Input) -> list[ev.Event]:
        """The engine's own ``process``, checking the invariants after every single event."""
        self.inputs.append(record)
        return process(self.state, record, self.config, self._observe)

    def _observe(self, state: VmState, e: ev.Event) -> None:
        problems = check_invariants(state)
        assert not problems, f"after {e}: {problems}"
        self.events.append(e)
        self.sent.extend(outbox_messages(e))

    # -------------------------------------------------------------- convenience inputs
    def open(self, **kw: Any) -> list[ev.Event]:
        return self.feed(
            inp.ChannelOpened(tick=self.tick, boot_bytes=self.boot_bytes, maxmem_bytes=self.maxmem_bytes, **kw)
        )

    def guest(self, msg: Message) -> list[ev.Event]:
        return self.feed(inp.GuestMessage(tick=self.tick, raw=encode(msg)))

    def raw(self, data: bytes) -> list[ev.Event]:
        return self.feed(inp.GuestMessage(tick=self.tick, raw=data))

    def advance_ticks(self, n: int) -> list[ev.Event]:
        out: list[ev.Event] = []
        for _ in range(n):
            self.tick += 1
            out.extend(self.feed(inp.Tick(tick=self.tick)))
        return out

    def command(self, record: inp.Input) -> list[ev.Event]:
        return self.feed(record)

    def set_target_pages(self, pages: int) -> list[ev.Event]:
        return self.feed(inp.SetTarget(tick=self.tick, target_bytes=pages << 12))

    def hot_add_then_balloon_boot_ram(self) -> int:
        """Hot-add 1 GiB through a vDIMM ("m"), then balloon 1 GiB of boot RAM out; returns the boot size in pages.

        Leaves the VM with both kinds of books, which is what reset and reboot tests need."""
        boot = self.state.boot_pages
        self.command(inp.AddBackend(tick=self.tick, backend_id="m", size_bytes=1 << 30))
        self.command(inp.PlugBackend(tick=self.tick, backend_id="m"))
        self.set_target_pages(boot + GIB_PAGES)
        self.guest(HotAddResponse(page_count=GIB_PAGES, result=1))
        self.set_target_pages(boot)
        self.guest(BalloonResponse(more_pages=False, ranges=((0, GIB_PAGES),)))
        return boot

    def handshake(self, *, hot_remove: bool = False, alignment: int = 7) -> None:
        self.open()
        self.handshake_again(hot_remove=hot_remove, alignment=alignment)

    def handshake_again(self, *, hot_remove: bool = False, alignment: int = 7) -> None:
        """The guest's side of a handshake on a channel that is already open."""
        self.guest(VersionRequest(trans_id=1, version=0x00020000))
        self.guest(
            CapabilitiesReport(
                trans_id=2, balloon=True, hot_add=True, hot_add_alignment=alignment, hot_remove=hot_remove
            )
        )
        self.advance_ticks(self.config.post_init_wait_ticks)

    def last_sent(self) -> Message:
        return self.sent[-1]

    def violations(self) -> list[str]:
        return [e.reason for e in self.events if isinstance(e, ev.GuestViolation)]

    def event_log(self) -> list[str]:
        return [event_json(e) for e in self.events]

    def input_log(self) -> list[str]:
        return [input_json(i) for i in self.inputs]
