"""What the gateway counts for its metrics: connections accepted, refused and closed, frames.

Reasons are short codes, never the free text of a log line: a metric label must have a small,
fixed set of values whatever a peer sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Refusal of a well-formed hello naming a VM that is already connected (refused hellos have their
#: own codes, ``hello.HELLO_REASONS``, counted in ``GatewayServer.hello_rejected``).
VM_CONNECTED = "vm_connected"

#: Disconnect codes by the start of the reason the gateway logs (``server._receive_loop``).
_DISCONNECT_PREFIXES = (
    ("guest closed", "guest_closed"),
    ("no data for", "idle_timeout"),
    ("unrecoverable framing", "framing_error"),
    ("violation budget", "violation_budget"),
    ("rate budget", "rate_budget"),
)


def disconnect_code(reason: str) -> str:
    """The metric label for a disconnect reason.

    >>> disconnect_code("no data for 300 s"), disconnect_code("something new")
    ('idle_timeout', 'other')
    """
    for prefix, code in _DISCONNECT_PREFIXES:
        if reason.startswith(prefix):
            return code
    return "other"


@dataclass(slots=True)
class GatewayCounters:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    disconnects: dict[str, int] = field(default_factory=dict)
    #: Frames of connections that have closed; open connections count their own.
    frames_in_closed: int = 0
    frames_out_closed: int = 0

    def refuse(self, code: str) -> None:
        self.refused[code] = self.refused.get(code, 0) + 1

    def disconnect(self, reason: str) -> None:
        code = disconnect_code(reason)
        self.disconnects[code] = self.disconnects.get(code, 0) + 1
