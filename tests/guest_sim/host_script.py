"""A scripted host for guest_sim tests: encode host messages, decode what the guest sends."""

from __future__ import annotations

from typing import Any, TypeVar

from services.dm_protocol import (
    BalloonRequest,
    BalloonResponse,
    CapabilitiesResponse,
    Message,
    VersionResponse,
    decode,
    encode,
)
from services.guest_sim import GuestConfig, SimulatedGuest

M = TypeVar("M")
GIB_PAGES = 1 << 18
MIB_PAGES = 256


def dec(out: list[bytes]) -> list[Message]:
    return [decode(b) for b in out]


def only(messages: list[Message], cls: type[M]) -> list[M]:
    return [m for m in messages if isinstance(m, cls)]


def ready_guest(now: float = 0.0, **config: Any) -> SimulatedGuest:
    """A guest whose handshake (2.0 accepted, caps accepted) completed at ``now``."""
    config.setdefault("workload", "idle")
    # The worked examples place RAM at [0, boot); test_layout.py covers the x86 PCI-hole layouts.
    config.setdefault("machine", "flat")
    guest = SimulatedGuest(GuestConfig(**config))
    guest.connect(now)
    guest.receive(encode(VersionResponse(is_accepted=True)), now)
    guest.receive(encode(CapabilitiesResponse(is_accepted=True)), now)
    assert guest.snapshot()["state"] == "initialized"
    return guest


def send(guest: SimulatedGuest, message: Message, now: float) -> list[Message]:
    return dec(guest.receive(encode(message), now))


def balloon(guest: SimulatedGuest, num_pages: int, now: float = 1.0) -> list[BalloonResponse]:
    return only(send(guest, BalloonRequest(num_pages=num_pages), now), BalloonResponse)


def shape(responses: list[BalloonResponse]) -> list[tuple[int, int, int]]:
    """(more_pages, range_count, pages) per message, as the worked-sequences table writes them."""
    return [(int(r.more_pages), len(r.ranges), sum(c for _, c in r.ranges)) for r in responses]
