"""decide / evolve / advance: the host protocol of one VM, with no I/O.

* ``decide(state, input)`` reacts to one inbox input and returns events; it never mutates state.
* ``evolve(state, event)`` folds one event into the state (in place, returning it).
* ``advance(state, now)`` is QEMU's IDLE handler: when the VM is idle and its size differs from
  the target, it starts the next transaction (unballoon first, then hot-add; balloon to shrink).
* ``process`` chains them the way every runner does: decide, evolve, then advance while it
  yields. Each of decide and advance makes at most one protocol transition, QEMU's rule.

Guests are untrusted: every returned page is classified by exact membership in the VM's RAM
(boot RAM and hot-added vDIMM memory) and in the ballooned set, and anything wrong becomes a
``GuestViolation`` event instead of an exception or a wrong count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from services.dm_engine import events as ev
from services.dm_engine import inputs as inp
from services.dm_engine import qemu_vm
from services.dm_engine.config import MAX_RANGE_PAGES, EngineConfig
from services.dm_engine.state import (
    NEGOTIATED_STATES,
    Capabilities,
    GuestStatus,
    ProtocolState,
    Transaction,
    VmState,
)
from services.dm_protocol import (
    BalloonResponse,
    CapabilitiesReport,
    DecodeError,
    HotAddResponse,
    HotRemoveResponse,
    Message,
    MessageType,
    StatusReport,
    UnballoonResponse,
    VersionRequest,
    decode,
)
from services.range_store import PageRangeSet, coalesce
from services.vdimm_allocator import (
    AllocationError,
    new_layout,
    plan_chunk,
    plug,
    record_hot_add,
    record_hot_remove,
    release_all,
    unplug,
)

PAGE_SIZE = 4096
PAGE_SHIFT = 12
#: QEMU places the hot-add window at a 32 GiB boundary, the largest alignment a guest can ask for.
WINDOW_ALIGN_PAGES = (32 << 30) >> PAGE_SHIFT
#: Protocol versions QEMU accepts: a numeric range test, 0.3 ("WIN7") .. 2.0 ("WIN10").
VERSION_MIN = 0x0000_0003
VERSION_MAX = 0x0002_0000

DEFAULT_CONFIG = EngineConfig()

Ranges = tuple[tuple[int, int], ...]


def initial_state(vm_id: str) -> VmState:
    """The state of a VM no event has touched yet."""
    return VmState(vm_id=vm_id)


# ====================================================================================== decide
def decide(state: VmState, input: inp.Input, config: EngineConfig = DEFAULT_CONFIG) -> list[ev.Event]:
    """The events one inbox input causes. Reads ``state``, never changes it."""
    if state.qemu is not None or type(input) in inp.QEMU_INPUTS:
        return qemu_vm.decide(state, input, config)
    handler = _INPUT_HANDLERS[type(input)]
    return handler(state, input, config)


def _violation(
    reason: ev.ViolationReason | str,
    tick: int,
    *,
    message_type: str = "",
    guest_trans_id: int = 0,
    detail: str = "",
    ranges: Sequence[tuple[int, int]] = (),
) -> ev.GuestViolation:
    return ev.GuestViolation(
        reason=str(reason),
        message_type=message_type,
        guest_trans_id=guest_trans_id,
        detail=detail,
        ranges=tuple(ranges),
        pages=sum(c for _, c in ranges),
        tick=tick,
    )


def _flag(
    reason: ev.ViolationReason,
    msg: Message,
    tick: int,
    detail: str,
    ranges: Sequence[tuple[int, int]] = (),
) -> ev.GuestViolation:
    """A violation about one decoded guest message."""
    return _violation(
        reason, tick, message_type=msg.TYPE.name, guest_trans_id=msg.trans_id, detail=detail, ranges=ranges
    )


def _describe(state: VmState, i: inp.ChannelOpened) -> ev.VmDescribed:
    boot = i.boot_bytes >> PAGE_SHIFT
    maxmem = max(i.maxmem_bytes >> PAGE_SHIFT, boot)
    if i.hot_add_base_page is not None:
        start = i.hot_add_base_page
    else:
        start = -(-boot // WINDOW_ALIGN_PAGES) * WINDOW_ALIGN_PAGES
    return ev.VmDescribed(
        boot_pages=boot,
        maxmem_pages=maxmem,
        window_start_page=start,
        window_end_page=start + (maxmem - boot),
        status_reports=i.status_reports,
    )


def _pristine(state: VmState) -> bool:
    return state.ballooned.page_count == 0 and not state.layout.vdimms


def _on_channel_opened(state: VmState, i: inp.ChannelOpened, config: EngineConfig) -> list[ev.Event]:
    out: list[ev.Event] = []
    if state.protocol is not ProtocolState.CLOSED:
        # The gateway lost the close (e.g. it restarted): close the old channel first.
        out.append(ev.ChannelClosed(reason="reopened"))
    described = _describe(state, i)
    current = (
        state.boot_pages,
        state.maxmem_pages,
        state.layout.window_start_page,
        state.layout.window_end_page,
        state.status_reports_enabled,
    )
    wanted = (
        described.boot_pages,
        described.maxmem_pages,
        described.window_start_page,
        described.window_end_page,
        described.status_reports,
    )
    if not state.described or (current != wanted and _pristine(state)):
        out.append(described)
    elif current != wanted:
        out.append(
            ev.CommandRejected(
                command="channel-open",
                error_class="GenericError",
                desc="VM memory layout cannot change while memory is ballooned or hot-added",
            )
        )
    out.append(ev.ChannelOpened())
    return out


def _on_channel_closed(state: VmState, i: inp.ChannelClosed, config: EngineConfig) -> list[ev.Event]:
    if state.protocol is ProtocolState.CLOSED:
        return []
    return [ev.ChannelClosed(reason=i.reason or "closed")]


def _on_vmbus_reset(state: VmState, i: inp.VmbusReset, config: EngineConfig) -> list[ev.Event]:
    return [ev.VmbusReset(ballooned_pages_dropped=state.ballooned.page_count)]


def _on_system_reset(state: VmState, i: inp.SystemReset, config: EngineConfig) -> list[ev.Event]:
    _, unused = release_all(state.layout)
    out: list[ev.Event] = [
        ev.SystemReset(
            ballooned_pages_dropped=state.ballooned.page_count,
            hot_added_pages_dropped=state.hot_added_pages,
            unused_backends=unused,
        )
    ]
    out.extend(ev.MemoryBackendUnused(backend_id=b) for b in unused)
    return out


def _on_set_target(state: VmState, i: inp.SetTarget, config: EngineConfig) -> list[ev.Event]:
    if i.target_bytes <= 0:
        return [
            ev.CommandRejected(
                command="balloon",
                error_class="GenericError",
                desc="Parameter 'value' expects a size greater than zero",
            )
        ]
    pages = i.target_bytes >> PAGE_SHIFT
    if pages == 0:
        return []  # QEMU silently ignores a target below one page
    return [ev.TargetSet(target_pages=pages)]


def _on_add_backend(state: VmState, i: inp.AddBackend, config: EngineConfig) -> list[ev.Event]:
    if i.backend_id in state.backends:
        return [
            ev.CommandRejected(
                command="object-add",
                error_class="GenericError",
                desc=f"attempt to add duplicate property '{i.backend_id}' to object (type 'container')",
            )
        ]
    if not i.backend_id:
        return [ev.CommandRejected(command="object-add", error_class="GenericError", desc="id is required")]
    if i.size_bytes <= 0 or i.size_bytes % PAGE_SIZE:
        return [
            ev.CommandRejected(
                command="object-add",
                error_class="GenericError",
                desc=f"memory backend '{i.backend_id}': size must be a positive multiple of 4096",
            )
        ]
    return [ev.MemoryBackendAdded(backend_id=i.backend_id, size_bytes=i.size_bytes)]


def _on_remove_backend(state: VmState, i: inp.RemoveBackend, config: EngineConfig) -> list[ev.Event]:
    if i.backend_id not in state.backends:
        return [
            ev.CommandRejected(
                command="object-del", error_class="GenericError", desc=f"object '{i.backend_id}' not found"
            )
        ]
    vdimm = state.layout.get(i.backend_id)
    in_flight = state.txn is not None and state.txn.backend_id == i.backend_id
    if vdimm is not None and (vdimm.added_pages > 0 or in_flight):
        return [
            ev.CommandRejected(
                command="object-del",
                error_class="GenericError",
                desc=f"object '{i.backend_id}' is in use, can not be deleted",
            )
        ]
    out: list[ev.Event] = []
    if vdimm is not None:
        out.append(ev.VdimmUnplugged(backend_id=i.backend_id))
    out.append(ev.MemoryBackendDeleted(backend_id=i.backend_id))
    return out


def _on_plug_backend(state: VmState, i: inp.PlugBackend, config: EngineConfig) -> list[ev.Event]:
    def reject(desc: str, error_class: str = "GenericError") -> list[ev.Event]:
        return [ev.CommandRejected(command="hv-balloon-add-memory", error_class=error_class, desc=desc)]

    if i.backend_id not in state.backends:
        return reject(f"Memory backend '{i.backend_id}' not found")
    if state.protocol not in NEGOTIATED_STATES or state.caps is None:
        return reject("no guest attached to the DM protocol yet")
    if not state.caps.hot_add:
        return reject("guest does not support hot-add")
    if state.layout.get(i.backend_id) is not None:
        return reject(f"memory backend '{i.backend_id}' is busy")
    size = state.backends[i.backend_id]
    try:
        _, vdimm = plug(state.layout, i.backend_id, size, state.caps.hot_add_alignment)
    except AllocationError as e:
        return reject(str(e))
    return [
        ev.VdimmPlugged(
            backend_id=i.backend_id,
            size_bytes=size,
            hot_add_alignment=state.caps.hot_add_alignment,
            start_page=vdimm.start_page,
        )
    ]


def _timeout_for(kind: str, config: EngineConfig) -> int:
    return {
        "balloon": config.balloon_timeout_ticks,
        "unballoon": config.unballoon_timeout_ticks,
        "hot_add": config.hot_add_timeout_ticks,
        "hot_remove": config.hot_remove_timeout_ticks,
    }[kind]


def _on_tick(state: VmState, i: inp.Tick, config: EngineConfig) -> list[ev.Event]:
    now = i.tick
    if state.protocol is ProtocolState.POST_INIT_WAIT and now >= state.post_init_until_tick:
        return [ev.PostInitWaitEnded()]
    txn = state.txn
    if txn is None:
        return []
    waited = now - txn.last_activity_tick
    if waited < _timeout_for(txn.kind, config):
        return []
    backoff = min(config.retry_backoff_ticks << state.consecutive_timeouts, config.retry_backoff_max_ticks)
    out: list[ev.Event] = []
    if txn.kind == "balloon":
        out.append(
            ev.BalloonTransactionEnded(
                trans_id=txn.trans_id,
                requested_pages=txn.requested_pages,
                received_pages=txn.received_pages,
                outcome="timeout",
                tick=now,
            )
        )
    elif txn.kind == "hot_add":
        out.append(
            ev.HotAddAbandoned(
                trans_id=txn.trans_id,
                backend_id=txn.backend_id,
                requested_pages=txn.requested_pages,
                tick=now,
            )
        )
    elif txn.kind == "hot_remove":
        out.append(
            ev.HotRemoveTransactionEnded(
                trans_id=txn.trans_id,
                requested_pages=txn.requested_pages,
                received_pages=txn.received_pages,
                outcome="timeout",
                tick=now,
            )
        )
    out.append(
        ev.TransactionTimedOut(
            kind=txn.kind, trans_id=txn.trans_id, waited_ticks=waited, retry_at_tick=now + backoff, tick=now
        )
    )
    out.append(
        _violation(
            ev.ViolationReason.TIMEOUT,
            now,
            detail=f"no answer to {txn.kind} request {txn.trans_id} for {waited} ticks",
        )
    )
    return out


def _on_malformed_frame(state: VmState, i: inp.MalformedFrame, config: EngineConfig) -> list[ev.Event]:
    return [_violation(ev.ViolationReason.MALFORMED_FRAME, i.tick, detail=i.reason)]


# ------------------------------------------------------------------------- guest messages
_DECODE_REASONS = {r.value for r in ev.ViolationReason}

#: Types only the host sends; a guest sending them is confused or hostile.
_HOST_TO_GUEST = frozenset(
    {
        MessageType.DM_VERSION_RESPONSE,
        MessageType.DM_CAPABILITIES_RESPONSE,
        MessageType.DM_BALLOON_REQUEST,
        MessageType.DM_UNBALLOON_REQUEST,
        MessageType.DM_MEM_HOT_ADD_REQUEST,
        MessageType.DM_INFO_MESSAGE,
        MessageType.DM_MEM_HOT_REMOVE_REQUEST,
    }
)


def _type_name_of(raw: bytes) -> str:
    if len(raw) < 2:
        return ""
    value = raw[0] | (raw[1] << 8)
    try:
        return MessageType(value).name
    except ValueError:
        return f"type {value}"


def _on_guest_message(state: VmState, i: inp.GuestMessage, config: EngineConfig) -> list[ev.Event]:
    tick = i.tick
    try:
        msg = decode(i.raw)
    except DecodeError as e:
        reason = str(e.reason) if str(e.reason) in _DECODE_REASONS else ev.ViolationReason.MALFORMED_MESSAGE
        return [_violation(reason, tick, message_type=_type_name_of(i.raw), detail=e.detail)]
    out: list[ev.Event] = []
    if msg.anomalies:
        out.append(_flag(ev.ViolationReason.RESERVED_BITS_SET, msg, tick, ",".join(str(a) for a in msg.anomalies)))
    if state.protocol is ProtocolState.CLOSED:
        out.append(_flag(ev.ViolationReason.UNEXPECTED_MESSAGE, msg, tick, "message on a closed channel"))
        return out
    if msg.TYPE in _HOST_TO_GUEST:
        out.append(_flag(ev.ViolationReason.WRONG_DIRECTION, msg, tick, "only the host sends this message type"))
        return out
    handler = _MESSAGE_HANDLERS.get(type(msg))
    if handler is None:  # DM_ERROR: never sent by a real guest
        out.append(_flag(ev.ViolationReason.UNEXPECTED_MESSAGE, msg, tick, "guests do not send this message type"))
        return out
    out.extend(handler(state, msg, tick, config))
    return out


def _unexpected(state: VmState, msg: Message, tick: int) -> list[ev.Event]:
    return [_flag(ev.ViolationReason.UNEXPECTED_MESSAGE, msg, tick, f"unexpected in state {state.protocol.value}")]


def _on_version_request(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, VersionRequest)
    if state.protocol is not ProtocolState.VERSION:
        return _unexpected(state, msg, tick)
    if VERSION_MIN <= msg.version <= VERSION_MAX:
        return [ev.VersionAccepted(version=msg.version, guest_trans_id=msg.trans_id)]
    return [ev.VersionRejected(version=msg.version, guest_trans_id=msg.trans_id)]


def _on_caps_report(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, CapabilitiesReport)
    if state.protocol is not ProtocolState.CAPS:
        return _unexpected(state, msg, tick)
    return [
        ev.CapabilitiesAccepted(
            guest_trans_id=msg.trans_id,
            balloon=msg.balloon,
            hot_add=msg.hot_add,
            hot_add_alignment=msg.hot_add_alignment,
            hot_remove=msg.hot_remove,
            min_page_cnt=msg.min_page_cnt,
            max_page_number=msg.max_page_number,
            suppress_pressure_reports=config.suppress_status_reports or not state.status_reports_enabled,
            post_init_until_tick=tick + config.post_init_wait_ticks,
        )
    ]


def _on_status_report(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, StatusReport)
    if state.status_tick == tick and state.status_in_tick >= config.max_status_reports_per_tick:
        return [
            _flag(
                ev.ViolationReason.STATUS_REPORT_FLOOD,
                msg,
                tick,
                f"more than {config.max_status_reports_per_tick} status reports in one tick",
            )
        ]
    return [
        ev.StatusReported(
            tick=tick,
            available_pages=msg.num_avail,
            committed_pages=msg.num_committed,
            page_file_size_pages=msg.page_file_size,
            zero_free_pages=msg.zero_free,
            page_file_writes=msg.page_file_writes,
            io_diff=msg.io_diff,
        )
    ]


def _overlaps_within(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pages that appear more than once in one message, as coalesced ranges."""
    dup: list[tuple[int, int]] = []
    reach = -1
    for start, count in sorted(r for r in ranges if r[1] > 0):
        end = start + count
        if start < reach:
            dup.append((start, min(end, reach) - start))
        reach = max(reach, end)
    return coalesce(dup)


def _all_inside(universe: PageRangeSet, merged: list[tuple[int, int]]) -> bool:
    """Whether every (sorted, coalesced) range lies inside one range of a small universe.

    Guest RAM is a handful of ranges (boot RAM and accepted vDIMM parts), so one linear pass is
    much cheaper than a general intersection, and honest guests always pass it.
    """
    if len(universe) > 64:
        return False
    bounds = universe.to_list()
    n = len(bounds)
    j = 0
    for start, count in merged:
        while j < n and bounds[j][0] + bounds[j][1] <= start:
            j += 1
        if j == n or start < bounds[j][0] or start + count > bounds[j][0] + bounds[j][1]:
            return False
    return True


def _classify_returned(
    state: VmState, msg: Any, tick: int, universe: PageRangeSet
) -> tuple[list[ev.Event], list[tuple[int, int]], int]:
    """Split a guest's returned ranges into pages it may give back and violations.

    Returns (violation events, acceptable ranges, acceptable pages): acceptable pages lie in
    ``universe`` and are not ballooned yet. Everything else is reported with its exact ranges.
    """
    ranges = msg.ranges
    out: list[ev.Event] = []
    empty = sum(1 for r in ranges if r[1] == 0)
    if empty:
        out.append(_flag(ev.ViolationReason.EMPTY_RANGE, msg, tick, f"{empty} range(s) with a zero page count"))
    merged = coalesce(ranges)
    reported = sum(c for _, c in ranges)
    merged_pages = sum(c for _, c in merged)
    if reported != merged_pages:
        out.append(
            _flag(
                ev.ViolationReason.DOUBLE_FREE, msg, tick, "pages repeated within one message", _overlaps_within(ranges)
            )
        )
    if _all_inside(universe, merged):
        inside, inside_pages = merged, merged_pages  # the honest case, without a walk of the store
    else:
        inside = universe.intersection(merged)
        inside_pages = sum(c for _, c in inside)
    if inside_pages != merged_pages:
        out.append(
            _flag(
                ev.ViolationReason.PAGES_NOT_OWNED,
                msg,
                tick,
                "pages outside the guest's RAM",
                universe.difference(merged),
            )
        )
    fresh = state.ballooned.difference(inside)
    fresh_pages = sum(c for _, c in fresh)
    if fresh_pages != inside_pages:
        out.append(
            _flag(
                ev.ViolationReason.DOUBLE_FREE,
                msg,
                tick,
                "pages already ballooned out",
                state.ballooned.intersection(inside),
            )
        )
    return out, fresh, fresh_pages


def _on_balloon_response(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, BalloonResponse)
    late = state.protocol is ProtocolState.IDLE and state.late_balloon_ok
    if state.protocol is not ProtocolState.BALLOON_REPLY_WAIT and not late:
        return _unexpected(state, msg, tick)
    out, fresh, fresh_pages = _classify_returned(state, msg, tick, state.owned)
    if fresh_pages:
        out.append(ev.PagesBallooned(ranges=tuple(fresh), pages=fresh_pages, tick=tick))
    if late:
        out.append(
            _flag(
                ev.ViolationReason.UNEXPECTED_MESSAGE,
                msg,
                tick,
                f"late balloon response after a timeout; {fresh_pages} pages accounted",
            )
        )
        return out
    txn = state.txn
    assert txn is not None
    received = txn.received_pages + fresh_pages
    if received > txn.requested_pages:
        excess = received - max(txn.requested_pages, txn.received_pages)
        out.append(
            _flag(
                ev.ViolationReason.PAGES_BEYOND_REQUEST,
                msg,
                tick,
                f"{excess} pages beyond the {txn.requested_pages} requested (accounted)",
            )
        )
    # QEMU ends the transaction on an empty message even when more_pages is set.
    if not msg.more_pages or not msg.ranges:
        out.append(
            ev.BalloonTransactionEnded(
                trans_id=txn.trans_id,
                requested_pages=txn.requested_pages,
                received_pages=received,
                outcome="complete" if received >= txn.requested_pages else "partial",
                tick=tick,
            )
        )
    return out


def _on_unballoon_response(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, UnballoonResponse)
    txn = state.txn
    if state.protocol is not ProtocolState.UNBALLOON_REPLY_WAIT or txn is None:
        return _unexpected(state, msg, tick)
    return [ev.UnballoonCompleted(trans_id=txn.trans_id, pages=txn.requested_pages, tick=tick)]


def _on_hot_add_response(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, HotAddResponse)
    txn = state.txn
    if state.protocol is not ProtocolState.HOT_ADD_REPLY_WAIT or txn is None:
        return _unexpected(state, msg, tick)
    out: list[ev.Event] = []
    accepted = msg.page_count if msg.result != 0 else 0
    if accepted > txn.requested_pages:
        out.append(
            _flag(
                ev.ViolationReason.HOT_ADD_OVERCLAIM,
                msg,
                tick,
                f"claimed {msg.page_count} pages of {txn.requested_pages} offered (clamped)",
            )
        )
        accepted = txn.requested_pages
    out.append(
        ev.HotAddCompleted(
            trans_id=txn.trans_id,
            backend_id=txn.backend_id,
            start_page=txn.start_page,
            requested_pages=txn.requested_pages,
            accepted_pages=accepted,
            result=msg.result,
            tick=tick,
        )
    )
    return out


def _hot_added_part(state: VmState) -> PageRangeSet:
    """Owned pages that are hot-added (not boot RAM) and not ballooned: what hot-remove may take."""
    part = PageRangeSet(state.owned.irange(state.boot_pages, state.layout.window_end_page))
    part.remove_many(state.ballooned.irange(state.boot_pages, state.layout.window_end_page))
    return part


def _on_hot_remove_response(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, HotRemoveResponse)
    txn = state.txn
    if state.protocol is not ProtocolState.HOT_REMOVE_REPLY_WAIT or txn is None:
        return _unexpected(state, msg, tick)
    removable = _hot_added_part(state)
    merged = coalesce(msg.ranges)
    valid = removable.intersection(merged)
    valid_pages = sum(c for _, c in valid)
    out: list[ev.Event] = []
    if valid_pages != sum(c for _, c in merged):
        out.append(
            _flag(
                ev.ViolationReason.HOT_REMOVE_INVALID_PAGES,
                msg,
                tick,
                "hot-removed pages that are not hot-added guest RAM, or are ballooned",
                removable.difference(merged),
            )
        )
    if valid_pages:
        out.append(ev.PagesHotRemoved(ranges=tuple(valid), pages=valid_pages, tick=tick))
    if not msg.more_pages or not msg.ranges:
        received = txn.received_pages + valid_pages
        out.append(
            ev.HotRemoveTransactionEnded(
                trans_id=txn.trans_id,
                requested_pages=txn.requested_pages,
                received_pages=received,
                outcome="complete" if received >= txn.requested_pages else "partial",
                tick=tick,
            )
        )
    return out


_MESSAGE_HANDLERS: dict[type, Callable[[VmState, Any, int, EngineConfig], list[ev.Event]]] = {
    VersionRequest: _on_version_request,
    CapabilitiesReport: _on_caps_report,
    StatusReport: _on_status_report,
    BalloonResponse: _on_balloon_response,
    UnballoonResponse: _on_unballoon_response,
    HotAddResponse: _on_hot_add_response,
    HotRemoveResponse: _on_hot_remove_response,
}

_INPUT_HANDLERS: dict[type, Callable[[VmState, Any, EngineConfig], list[ev.Event]]] = {
    inp.ChannelOpened: _on_channel_opened,
    inp.ChannelClosed: _on_channel_closed,
    inp.VmbusReset: _on_vmbus_reset,
    inp.SystemReset: _on_system_reset,
    inp.GuestMessage: _on_guest_message,
    inp.MalformedFrame: _on_malformed_frame,
    inp.SetTarget: _on_set_target,
    inp.AddBackend: _on_add_backend,
    inp.RemoveBackend: _on_remove_backend,
    inp.PlugBackend: _on_plug_backend,
    inp.Tick: _on_tick,
}


# ===================================================================================== advance
def advance(state: VmState, now: int, config: EngineConfig = DEFAULT_CONFIG) -> list[ev.Event]:
    """QEMU's IDLE handler: start the transaction that moves the VM toward its target.

    Growth gives ballooned pages back first, then hot-adds; shrinking hot-removes hot-added
    memory when the guest supports it (protocol 2.0) and balloons the rest.
    """
    if (
        state.protocol is not ProtocolState.IDLE
        or not state.target_pending
        or state.target_pages is None
        or now < state.retry_at_tick
    ):
        return []
    caps = state.caps
    assert caps is not None
    target = state.target_pages
    current = state.current_pages
    if target > current:
        diff = target - current
        unballoon = min(diff, state.ballooned.page_count)
        if unballoon > 0:
            return _unballoon_messages(state, unballoon, now, config)
        if caps.hot_add:
            chunk = plan_chunk(state.layout, diff)
            if chunk is not None:
                return [
                    ev.HotAddRequested(
                        trans_id=state.trans_id,
                        backend_id=chunk.backend_id,
                        start_page=chunk.start_page,
                        page_count=chunk.page_count,
                        tick=now,
                    )
                ]
        return []
    if target < current and caps.balloon:
        diff = current - target
        if config.use_hot_remove and caps.hot_remove and not state.hot_remove_tried:
            removable = _hot_added_part(state).page_count
            if removable:
                return [
                    ev.HotRemoveRequested(
                        trans_id=state.trans_id,
                        page_count=min(diff, removable, config.balloon_request_max_pages),
                        tick=now,
                    )
                ]
        return [
            ev.BalloonRequested(
                trans_id=state.trans_id, num_pages=min(diff, config.balloon_request_max_pages), tick=now
            )
        ]
    return []


def _unballoon_windows(state: VmState) -> list[tuple[int, int]]:
    """[lo, hi) page windows in the order memory is given back: boot RAM first (the least
    valuable to keep ballooned), then each vDIMM in ascending address order, as QEMU's v2 did."""
    windows = [(0, state.boot_pages)]
    windows.extend((v.start_page, v.end_page) for v in state.layout.vdimms)
    return windows


def _unballoon_messages(state: VmState, pages: int, now: int, config: EngineConfig) -> list[ev.Event]:
    """Pack the pages to give back into as few UNBALLOON_REQUEST messages as possible.

    QEMU sends one range per message; we pack up to ``unballoon_max_ranges`` ranges (a 4 KiB
    message), highest addresses first within each window.
    """
    chosen: list[tuple[int, int]] = []
    remaining = pages
    for lo, hi in _unballoon_windows(state):
        if remaining <= 0:
            break
        picked = state.ballooned.peek_highest(remaining, 1 << 62, lo, hi)
        for start, count in picked:
            remaining -= count
            # A range's count is 24 bits on the wire: split from the top, like pop_highest.
            while count > MAX_RANGE_PAGES:
                count -= MAX_RANGE_PAGES
                chosen.append((start + count, MAX_RANGE_PAGES))
            chosen.append((start, count))
    per_message = config.unballoon_max_ranges
    out: list[ev.Event] = []
    for first in range(0, len(chosen), per_message):
        batch = tuple(chosen[first : first + per_message])
        out.append(
            ev.UnballoonRequested(
                trans_id=state.trans_id,
                ranges=batch,
                pages=sum(c for _, c in batch),
                more_pages=first + per_message < len(chosen),
                tick=now,
            )
        )
    return out


# ====================================================================================== evolve
def evolve(state: VmState, event: ev.Event) -> VmState:
    """Fold one event into ``state`` (in place) and return it."""
    _EVOLVERS[type(event)](state, event)
    return state


def _ev_vm_described(s: VmState, e: ev.VmDescribed) -> None:
    s.described = True
    s.boot_pages = e.boot_pages
    s.maxmem_pages = e.maxmem_pages
    s.status_reports_enabled = e.status_reports
    s.layout = new_layout(e.window_start_page, e.window_end_page)
    s.owned = PageRangeSet([(0, e.boot_pages)])
    s.ballooned = PageRangeSet()


def _ev_channel_opened(s: VmState, e: ev.ChannelOpened) -> None:
    s.protocol = ProtocolState.VERSION
    s.version = None
    s.caps = None
    s.txn = None


def _ev_channel_closed(s: VmState, e: ev.ChannelClosed) -> None:
    s.protocol = ProtocolState.CLOSED
    s.txn = None
    s.status = None  # QEMU: "no guest memory status report received yet" after a close
    s.late_balloon_ok = False


def _ev_vmbus_reset(s: VmState, e: ev.VmbusReset) -> None:
    _ev_channel_closed(s, ev.ChannelClosed(reason="vmbus reset"))
    s.ballooned = PageRangeSet()
    s.trans_id = 0
    s.retry_at_tick = 0
    s.consecutive_timeouts = 0


def _ev_system_reset(s: VmState, e: ev.SystemReset) -> None:
    _ev_vmbus_reset(s, ev.VmbusReset(ballooned_pages_dropped=e.ballooned_pages_dropped))
    s.layout, _ = release_all(s.layout)
    s.owned = PageRangeSet([(0, s.boot_pages)])
    s.target_pending = False


def _ev_backend_unused(s: VmState, e: ev.MemoryBackendUnused) -> None:
    pass


def _ev_version_accepted(s: VmState, e: ev.VersionAccepted) -> None:
    s.protocol = ProtocolState.CAPS
    s.version = e.version


def _ev_version_rejected(s: VmState, e: ev.VersionRejected) -> None:
    pass


def _ev_caps_accepted(s: VmState, e: ev.CapabilitiesAccepted) -> None:
    s.caps = Capabilities(
        balloon=e.balloon,
        hot_add=e.hot_add,
        hot_add_alignment=e.hot_add_alignment,
        hot_remove=e.hot_remove,
        min_page_cnt=e.min_page_cnt,
        max_page_number=e.max_page_number,
    )
    s.suppress_pressure_reports = e.suppress_pressure_reports
    s.post_init_until_tick = e.post_init_until_tick
    s.protocol = ProtocolState.POST_INIT_WAIT


def _ev_post_init_ended(s: VmState, e: ev.PostInitWaitEnded) -> None:
    s.protocol = ProtocolState.IDLE


def _ev_status_reported(s: VmState, e: ev.StatusReported) -> None:
    s.status = GuestStatus(tick=e.tick, available_pages=e.available_pages, committed_pages=e.committed_pages)
    s.status_reports_total += 1
    if s.status_tick == e.tick:
        s.status_in_tick += 1
    else:
        s.status_tick = e.tick
        s.status_in_tick = 1


def _ev_target_set(s: VmState, e: ev.TargetSet) -> None:
    s.target_pages = e.target_pages
    s.target_pending = True
    s.target_generation += 1
    s.hot_remove_tried = False


def _start(s: VmState, protocol: ProtocolState, txn: Transaction) -> None:
    s.protocol = protocol
    s.txn = replace(txn, target_generation=s.target_generation)
    s.late_balloon_ok = False


def _ev_balloon_requested(s: VmState, e: ev.BalloonRequested) -> None:
    _start(
        s,
        ProtocolState.BALLOON_REPLY_WAIT,
        Transaction("balloon", e.trans_id, e.num_pages, 0, e.tick, e.tick),
    )


def _ev_pages_ballooned(s: VmState, e: ev.PagesBallooned) -> None:
    s.ballooned.add_many(e.ranges)
    s.balloon_out_pages_total += e.pages
    txn = s.txn
    if txn is not None and txn.kind == "balloon":
        s.txn = replace(txn, received_pages=txn.received_pages + e.pages, last_activity_tick=e.tick)


def _give_up_on_target(s: VmState) -> None:
    """The guest could not deliver: stop pursuing the target it was working toward (QEMU does
    not retry), unless the operator set a new one meanwhile."""
    txn = s.txn
    if txn is None or txn.target_generation == s.target_generation:
        s.target_pending = False


def _finish(s: VmState) -> None:
    s.protocol = ProtocolState.IDLE
    s.txn = None
    s.trans_id = (s.trans_id + 1) & 0xFFFF_FFFF


def _ev_balloon_ended(s: VmState, e: ev.BalloonTransactionEnded) -> None:
    if e.outcome not in ("complete", "timeout"):
        _give_up_on_target(s)  # the guest is at its floor
    _finish(s)
    if e.outcome == "timeout":
        s.late_balloon_ok = True
        return
    s.consecutive_timeouts = 0


def _ev_unballoon_requested(s: VmState, e: ev.UnballoonRequested) -> None:
    # Optimistic, as QEMU: the pages stop counting as ballooned when the request is sent.
    s.ballooned.remove_many(e.ranges)
    s.balloon_in_pages_total += e.pages
    txn = s.txn
    if txn is not None and txn.kind == "unballoon":
        s.txn = replace(txn, requested_pages=txn.requested_pages + e.pages)
    else:
        _start(
            s,
            ProtocolState.UNBALLOON_REPLY_WAIT,
            Transaction("unballoon", e.trans_id, e.pages, 0, e.tick, e.tick),
        )


def _ev_unballoon_completed(s: VmState, e: ev.UnballoonCompleted) -> None:
    _finish(s)
    s.consecutive_timeouts = 0


def _ev_backend_added(s: VmState, e: ev.MemoryBackendAdded) -> None:
    s.backends[e.backend_id] = e.size_bytes


def _ev_backend_deleted(s: VmState, e: ev.MemoryBackendDeleted) -> None:
    s.backends.pop(e.backend_id, None)


def _ev_vdimm_plugged(s: VmState, e: ev.VdimmPlugged) -> None:
    s.layout, vdimm = plug(s.layout, e.backend_id, e.size_bytes, e.hot_add_alignment)
    assert vdimm.start_page == e.start_page, "vDIMM placement must be deterministic"
    if s.target_pages is not None and s.target_pages > s.current_pages:
        s.target_pending = True  # new memory to hot-add: a growth that stalled may proceed


def _ev_vdimm_unplugged(s: VmState, e: ev.VdimmUnplugged) -> None:
    s.layout = unplug(s.layout, e.backend_id)


def _ev_hot_add_requested(s: VmState, e: ev.HotAddRequested) -> None:
    _start(
        s,
        ProtocolState.HOT_ADD_REPLY_WAIT,
        Transaction("hot_add", e.trans_id, e.page_count, 0, e.tick, e.tick, e.backend_id, e.start_page),
    )


def _ev_hot_add_completed(s: VmState, e: ev.HotAddCompleted) -> None:
    s.layout = record_hot_add(s.layout, e.backend_id, e.requested_pages, e.accepted_pages, e.result != 0)
    if e.accepted_pages:
        s.owned.add(e.start_page, e.accepted_pages)
        s.hot_added_pages_total += e.accepted_pages
    if e.result == 0 or e.accepted_pages < e.requested_pages:
        _give_up_on_target(s)  # QEMU never retries a failed hot-add
    _finish(s)
    s.consecutive_timeouts = 0


def _ev_hot_add_abandoned(s: VmState, e: ev.HotAddAbandoned) -> None:
    s.layout = record_hot_add(s.layout, e.backend_id, e.requested_pages, 0, False)
    _finish(s)


def _ev_hot_remove_requested(s: VmState, e: ev.HotRemoveRequested) -> None:
    s.hot_remove_tried = True
    _start(
        s,
        ProtocolState.HOT_REMOVE_REPLY_WAIT,
        Transaction("hot_remove", e.trans_id, e.page_count, 0, e.tick, e.tick),
    )


def _ev_pages_hot_removed(s: VmState, e: ev.PagesHotRemoved) -> None:
    s.owned.remove_many(e.ranges)
    s.hot_removed_pages_total += e.pages
    for vdimm in s.layout.vdimms:
        lo, hi = vdimm.usable_start, vdimm.usable_start + vdimm.added_pages
        inside = sum(min(hi, a + n) - max(lo, a) for a, n in e.ranges if a < hi and a + n > lo)
        if inside:
            s.layout = record_hot_remove(s.layout, vdimm.backend_id, inside)
    txn = s.txn
    if txn is not None and txn.kind == "hot_remove":
        s.txn = replace(txn, received_pages=txn.received_pages + e.pages, last_activity_tick=e.tick)


def _ev_hot_remove_ended(s: VmState, e: ev.HotRemoveTransactionEnded) -> None:
    _finish(s)
    if e.outcome != "timeout":
        s.consecutive_timeouts = 0


def _ev_timed_out(s: VmState, e: ev.TransactionTimedOut) -> None:
    if s.txn is not None:  # unballoon: nothing else closed the transaction
        _finish(s)
    s.protocol = ProtocolState.IDLE
    s.retry_at_tick = e.retry_at_tick
    s.consecutive_timeouts += 1


def _ev_violation(s: VmState, e: ev.GuestViolation) -> None:
    s.violations[e.reason] = s.violations.get(e.reason, 0) + 1


def _ev_command_rejected(s: VmState, e: ev.CommandRejected) -> None:
    s.commands_rejected_total += 1


_EVOLVERS: dict[type, Callable[[VmState, Any], None]] = {
    ev.VmDescribed: _ev_vm_described,
    ev.ChannelOpened: _ev_channel_opened,
    ev.ChannelClosed: _ev_channel_closed,
    ev.VmbusReset: _ev_vmbus_reset,
    ev.SystemReset: _ev_system_reset,
    ev.MemoryBackendUnused: _ev_backend_unused,
    ev.VersionAccepted: _ev_version_accepted,
    ev.VersionRejected: _ev_version_rejected,
    ev.CapabilitiesAccepted: _ev_caps_accepted,
    ev.PostInitWaitEnded: _ev_post_init_ended,
    ev.StatusReported: _ev_status_reported,
    ev.TargetSet: _ev_target_set,
    ev.BalloonRequested: _ev_balloon_requested,
    ev.PagesBallooned: _ev_pages_ballooned,
    ev.BalloonTransactionEnded: _ev_balloon_ended,
    ev.UnballoonRequested: _ev_unballoon_requested,
    ev.UnballoonCompleted: _ev_unballoon_completed,
    ev.MemoryBackendAdded: _ev_backend_added,
    ev.MemoryBackendDeleted: _ev_backend_deleted,
    ev.VdimmPlugged: _ev_vdimm_plugged,
    ev.VdimmUnplugged: _ev_vdimm_unplugged,
    ev.HotAddRequested: _ev_hot_add_requested,
    ev.HotAddCompleted: _ev_hot_add_completed,
    ev.HotAddAbandoned: _ev_hot_add_abandoned,
    ev.HotRemoveRequested: _ev_hot_remove_requested,
    ev.PagesHotRemoved: _ev_pages_hot_removed,
    ev.HotRemoveTransactionEnded: _ev_hot_remove_ended,
    ev.TransactionTimedOut: _ev_timed_out,
    ev.GuestViolation: _ev_violation,
    ev.CommandRejected: _ev_command_rejected,
    **qemu_vm.EVENT_HANDLERS,
}


# ===================================================================================== process
#: advance() can follow itself only after a transaction it started ends within the same input,
#: which never chains more than a couple of times; the bound turns a logic error into a stop.
_MAX_ADVANCES = 8


def process(state: VmState, input: inp.Input, config: EngineConfig = DEFAULT_CONFIG) -> list[ev.Event]:
    """Decide, fold, and let the IDLE handler act: the engine's whole reaction to one input.

    Replaying an inbox through ``process`` from ``initial_state`` reproduces its event log.
    """
    if state.qemu is not None or type(input) in inp.QEMU_INPUTS:
        # QEMU-managed: QEMU runs the protocol, so there is no IDLE handler to advance.
        if type(input) is inp.Tick and not qemu_vm.wants_tick(state):
            return []
        qemu_events = qemu_vm.decide(state, input, config)
        for event in qemu_events:
            evolve(state, event)
        return qemu_events
    if (
        type(input) is inp.Tick
        and state.txn is None
        and state.protocol is not ProtocolState.POST_INIT_WAIT
        and not (state.protocol is ProtocolState.IDLE and state.target_pending)
    ):
        # Most ticks reach VMs with nothing to time out and nothing to start: decide and advance
        # would both return nothing, so say so without running them.
        return []
    events = decide(state, input, config)
    for event in events:
        evolve(state, event)
    now = input.tick
    for _ in range(_MAX_ADVANCES):
        more = advance(state, now, config)
        if not more:
            break
        for event in more:
            evolve(state, event)
        events.extend(more)
    return events
