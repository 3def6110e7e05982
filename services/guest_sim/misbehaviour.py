"""What malicious profiles send: the messages a well-behaved host must flag, and their names.

Why a separate module: the protocol machine (``guest.py``) stays the honest Linux guest; this module
only decides *which* misbehaviour applies to a transaction and builds the bad messages. Every bad
message sent is recorded by name in ``snapshot()["misbehaviour_sent"]`` so that host-side tests can
assert the host flagged exactly those. Names:

* ``not_owned`` - a balloon response range the guest does not own: alternately far beyond its RAM
  and in a hole (hot-add space that is not online, or the pages right after the end of RAM);
* ``double_free`` - a ballooned range reported again (within one message, or in a later message);
* ``beyond_request`` - more pages than the balloon request asked (recorded on the message that
  crosses the requested count), or a hot-add response with page_count above the request;
* ``malformed_truncated`` / ``malformed_oversized`` / ``malformed_header_size`` /
  ``malformed_range_count`` - a balloon response that does not decode (see ``malformed_message``);
* ``unsolicited_balloon_response`` / ``unsolicited_unballoon_response`` /
  ``unsolicited_hot_add_response`` / ``version_request_after_negotiation`` - wrong-state messages;
* ``silent`` - a balloon, unballoon or hot-add request left unanswered on purpose;
* ``status_flood`` - a status report sent less than a second after the previous one.
"""

from __future__ import annotations

import struct
from typing import Final

from ..dm_protocol import (
    BalloonResponse,
    HotAddResponse,
    Message,
    UnballoonResponse,
    VersionRequest,
)
from .profiles import Profile

NOT_OWNED_VARIANTS: Final = ("beyond_ram", "hole")
MALFORMED_VARIANTS: Final = ("truncated", "oversized", "header_size", "range_count")
WRONG_STATE_VARIANTS: Final = (
    "unsolicited_balloon_response",
    "unsolicited_unballoon_response",
    "unsolicited_hot_add_response",
    "version_request_after_negotiation",
)

_HEADER: Final = struct.Struct("<HHI")
_BALLOON_RESPONSE_TYPE: Final = 7


class Saboteur:
    """Chooses the misbehaviour of each host transaction for a profile, deterministically.

    Single-misbehaviour profiles use theirs on every transaction; ``malicious`` takes the next one
    of ``MISBEHAVIOUR_MODES`` per transaction (balloon, unballoon or hot-add request). A mode that
    does not apply to the transaction kind (e.g. ``not_owned`` for an unballoon) leaves that
    transaction honest.
    """

    def __init__(self, profile: Profile) -> None:
        self.modes = profile.misbehaviours
        self.transactions = 0
        #: The mode of the latest transaction; ``status_flood`` stays on until the next one.
        self.current: str | None = self.modes[0] if len(self.modes) == 1 else None
        self._malformed = 0
        self._wrong_state = 0
        self._not_owned = 0

    @property
    def active(self) -> bool:
        return bool(self.modes)

    def next_transaction(self) -> str | None:
        if not self.modes:
            return None
        self.current = self.modes[self.transactions % len(self.modes)]
        self.transactions += 1
        return self.current

    def flooding(self) -> bool:
        return self.current == "status_flood"

    def next_not_owned_variant(self) -> str:
        variant = NOT_OWNED_VARIANTS[self._not_owned % len(NOT_OWNED_VARIANTS)]
        self._not_owned += 1
        return variant

    def next_malformed_variant(self) -> str:
        variant = MALFORMED_VARIANTS[self._malformed % len(MALFORMED_VARIANTS)]
        self._malformed += 1
        return variant

    def next_wrong_state_variant(self) -> str:
        variant = WRONG_STATE_VARIANTS[self._wrong_state % len(WRONG_STATE_VARIANTS)]
        self._wrong_state += 1
        return variant


def malformed_message(variant: str, trans_id: int, fake_start: int) -> bytes:
    """A BALLOON_RESPONSE that no strict decoder accepts (the pages in it are never given away).

    * ``truncated``: a 12-byte message whose header says 12: shorter than the 16-byte fixed part;
    * ``oversized``: 511 ranges, 4104 bytes: over the 4096-byte payload limit;
    * ``header_size``: header ``size`` 16 on a 24-byte message carrying one range;
    * ``range_count``: ``range_count`` 5 while only 2 ranges follow (size is consistent).
    """
    word = struct.Struct("<Q")
    if variant == "truncated":
        return _HEADER.pack(_BALLOON_RESPONSE_TYPE, 12, trans_id) + struct.pack("<I", 0)
    if variant == "oversized":
        count = 511
        body = b"".join(word.pack((fake_start + i) | (1 << 40)) for i in range(count))
        return _HEADER.pack(_BALLOON_RESPONSE_TYPE, 16 + 8 * count, trans_id) + struct.pack("<II", 0, count << 1) + body
    if variant == "header_size":
        return (
            _HEADER.pack(_BALLOON_RESPONSE_TYPE, 16, trans_id)
            + struct.pack("<II", 0, 1 << 1)
            + word.pack(fake_start | (512 << 40))
        )
    if variant == "range_count":
        body = word.pack(fake_start | (1 << 40)) + word.pack((fake_start + 1) | (1 << 40))
        return _HEADER.pack(_BALLOON_RESPONSE_TYPE, 32, trans_id) + struct.pack("<II", 0, 5 << 1) + body
    raise ValueError(f"unknown malformed variant {variant!r}")


def wrong_state_message(variant: str, fake_start: int, chunk_pages: int) -> Message:
    """A well-formed message nobody asked for. The pages named are not given away."""
    if variant == "unsolicited_balloon_response":
        return BalloonResponse(more_pages=False, ranges=((fake_start, 512),))
    if variant == "unsolicited_unballoon_response":
        return UnballoonResponse()
    if variant == "unsolicited_hot_add_response":
        return HotAddResponse(page_count=chunk_pages, result=1)
    if variant == "version_request_after_negotiation":
        return VersionRequest(version=0x00020000, is_last_attempt=False)
    raise ValueError(f"unknown wrong-state variant {variant!r}")
