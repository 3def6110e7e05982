"""Host-to-guest DM messages, derived from events.

The outbox is a projection of the event log, so replaying events can rebuild it but never sends
anything by itself: only the runner appends these messages, in the same transaction as the
events that caused them.
"""

from __future__ import annotations

from ..dm_protocol import (
    BalloonRequest,
    CapabilitiesResponse,
    HotAddRequest,
    HotRemoveRequest,
    Message,
    UnballoonRequest,
    VersionResponse,
)
from . import events as ev

#: The event types ``outbox_messages`` answers with a message; every other event sends nothing.
SENDS: frozenset[type[ev.Event]] = frozenset(
    {
        ev.VersionAccepted,
        ev.VersionRejected,
        ev.CapabilitiesAccepted,
        ev.BalloonRequested,
        ev.UnballoonRequested,
        ev.HotAddRequested,
        ev.HotRemoveRequested,
    }
)


def outbox_messages(event: ev.Event) -> list[Message]:
    """The DM messages the host must send because of ``event`` (usually none)."""
    match event:
        case ev.VersionAccepted():
            # QEMU echoes the guest's trans_id in version and caps responses.
            return [VersionResponse(trans_id=event.guest_trans_id, is_accepted=True)]
        case ev.VersionRejected():
            return [VersionResponse(trans_id=event.guest_trans_id, is_accepted=False)]
        case ev.CapabilitiesAccepted():
            return [
                CapabilitiesResponse(
                    trans_id=event.guest_trans_id,
                    is_accepted=True,
                    hot_remove=True,
                    suppress_pressure_reports=event.suppress_pressure_reports,
                )
            ]
        case ev.BalloonRequested():
            return [BalloonRequest(trans_id=event.trans_id, num_pages=event.num_pages)]
        case ev.UnballoonRequested():
            return [UnballoonRequest(trans_id=event.trans_id, more_pages=event.more_pages, ranges=event.ranges)]
        case ev.HotAddRequested():
            # QEMU sends the with-region form, range and region identical.
            rng = (event.start_page, event.page_count)
            return [HotAddRequest(trans_id=event.trans_id, range=rng, region=rng)]
        case ev.HotRemoveRequested():
            return [HotRemoveRequest(trans_id=event.trans_id, virtual_node=0, page_count=event.page_count, qos_flags=0)]
    return []
