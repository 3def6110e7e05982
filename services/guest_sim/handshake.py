"""Version negotiation and the capabilities exchange, as Linux's probe does them (section 2).

Why model the "host event" explicitly: Linux does not check message order. Any VERSION_RESPONSE
with is_accepted = 0, even a late unsolicited one, makes it send the next fallback version; any
accepted VERSION_RESPONSE *or any* CAPABILITIES_RESPONSE completes the one completion the probe is
waiting on. A simulator that checks order would hide host bugs a real guest exposes. So the
channel callback only records facts (``dm->state = DM_INIT_ERROR``, ``complete(&host_event)``) and
``settle`` moves the probe forward exactly as the waiting probe thread would.

Order: 2.0 (is_last_attempt 0) -> 1.0 (0) -> 0.3 (1) -> give up. One 5 s wait covers the whole
version negotiation, another 5 s the caps response; a timeout or an error closes the channel.
Quirk kept: ``next_version`` is set to 1.0 only at the first probe, so a resume after a
negotiation that ended at 1.0 goes 2.0 -> 0.3.
"""

from __future__ import annotations

from typing import Final, Literal

from ..dm_protocol import CapabilitiesReport, Message, VersionRequest

WIN10: Final = 0x00020000
WIN8: Final = 0x00010000
WIN7: Final = 0x00000003
HANDSHAKE_TIMEOUT_S: Final = 5.0

Phase = Literal["off", "version", "caps", "ready", "closed"]


def version_text(version: int) -> str:
    """``major.minor`` of a protocol version word (Linux prints the minor masked with 0xFF)."""
    return f"{version >> 16}.{version & 0xFF}"


class Handshake:
    """Probe progress of one channel: phase, versions tried, deadline, the host event."""

    def __init__(self) -> None:
        self.phase: Phase = "off"
        self.version = WIN10
        self.next_version = WIN8
        self.negotiated: int | None = None
        self.deadline: float | None = None
        self.init_error = False
        self.host_event = False
        self.close_reason: str | None = None

    def open(self, t: float, *, first_probe: bool) -> VersionRequest:
        """Channel opened: ask for 2.0 and wait up to 5 s for the whole negotiation."""
        if first_probe:
            self.next_version = WIN8
        self.phase = "version"
        self.version = WIN10
        self.negotiated = None
        self.init_error = False
        self.host_event = False
        self.close_reason = None
        self.deadline = t + HANDSHAKE_TIMEOUT_S
        return VersionRequest(version=WIN10, is_last_attempt=False)

    def on_version_response(self, accepted: bool) -> VersionRequest | None:
        """``version_resp``: accepted completes the host event; a rejection sends the next
        fallback, or sets the error state when none is left. Returns the request to send."""
        if accepted:
            self.host_event = True
            return None
        if self.next_version == 0:
            self.init_error = True
            self.host_event = True
            return None
        self.version = self.next_version
        last = self.version != WIN8
        self.next_version = WIN7 if self.version == WIN8 else 0
        return VersionRequest(version=self.version, is_last_attempt=last)

    def on_caps_response(self, accepted: bool) -> None:
        if not accepted:
            self.init_error = True
        self.host_event = True

    def settle(self, t: float, caps: CapabilitiesReport) -> tuple[list[Message], bool]:
        """Let the waiting probe run: returns (messages to send, whether the guest just became ready)."""
        if not self.host_event or self.phase not in ("version", "caps"):
            return [], False
        self.host_event = False
        if self.init_error:
            self.close("EPROTO")
            return [], False
        if self.phase == "version":
            self.negotiated = self.version
            self.phase = "caps"
            self.deadline = t + HANDSHAKE_TIMEOUT_S
            return [caps], False
        self.phase = "ready"
        self.deadline = None
        return [], True

    def timed_out(self) -> None:
        self.close("ETIMEDOUT")

    def close(self, reason: str) -> None:
        self.phase = "closed"
        self.deadline = None
        self.close_reason = reason
