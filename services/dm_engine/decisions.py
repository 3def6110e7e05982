"""decide: the events one inbox input causes, read from the VM's state without changing it.

One handler per input type (and per guest message type). Each handler is one *step* of the
state machine in ``machine``: it produces events that make at most one protocol transition.
The one input that needs two steps -- a channel opened over one the gateway never closed -- is
decided as two (``decide_steps``): the lost close, then the open.

Guests are untrusted: every returned page is classified by exact membership in the VM's RAM
(boot RAM and hot-added vDIMM memory) and in the ballooned set, and anything wrong becomes a
``GuestViolation`` event instead of an exception or a wrong count.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..dm_protocol import (
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
from ..range_store import PageRangeSet, RangeBatch, coalesce
from ..units import PAGE_SHIFT, PAGE_SIZE
from ..vdimm_allocator import AllocationError, plug, release_all
from ..vdimm_allocator.ram_layout import (
    RamLayoutError,
    check_ram_ranges,
    hot_add_window_start_page,
    legacy_ram_ranges,
    ram_end_page,
)
from . import events as ev
from . import inputs as inp
from . import qemu_vm
from .config import EngineConfig
from .machine import NEGOTIATED_STATES, TRANSITIONS, ProtocolState, TxnKind
from .state import VmState, hot_added_part

#: QEMU places the hot-add window at a 32 GiB boundary, the largest alignment a guest can ask for.
WINDOW_ALIGN_PAGES = (32 << 30) >> PAGE_SHIFT
#: Protocol versions QEMU accepts: a numeric range test, 0.3 ("WIN7") .. 2.0 ("WIN10").
VERSION_MIN = 0x0000_0003
VERSION_MAX = 0x0002_0000

DEFAULT_CONFIG = EngineConfig()


def decide(state: VmState, input: inp.Input, config: EngineConfig = DEFAULT_CONFIG) -> list[ev.Event]:
    """The events one inbox input causes. Reads ``state``, never changes it."""
    kind = type(input)
    if (kind is inp.ChannelOpened or kind is inp.QemuAttached) and input.uuid:  # type: ignore[union-attr]
        return [e for step in decide_steps(state, input, config) for e in step]
    return _decide(state, input, config)


def _decide(state: VmState, input: inp.Input, config: EngineConfig) -> list[ev.Event]:
    if type(input) is inp.ForgetVm:
        return _on_forget_vm(state, input, config)
    if state.qemu is not None or type(input) in inp.QEMU_INPUTS:
        return [e for step in qemu_vm.decide_steps(state, input, config) for e in step]
    if type(input) is inp.ChannelOpened and (state.protocol is not ProtocolState.CLOSED or input.reset):
        return [e for step in decide_steps(state, input, config) for e in step]
    handler = _INPUT_HANDLERS[type(input)]
    return handler(state, input, config)


def decide_steps(state: VmState, input: inp.Input, config: EngineConfig = DEFAULT_CONFIG) -> list[list[ev.Event]]:
    """``decide``, cut into the state machine's steps (each at most one protocol transition)."""
    steps = _decide_steps(state, input, config)
    if type(input) is inp.ChannelOpened or type(input) is inp.QemuAttached:
        identified = _identified(state, input, steps)
        if identified is not None:
            steps[0] = [identified, *steps[0]]
    return steps


def _identified(
    state: VmState, input: inp.ChannelOpened | inp.QemuAttached, steps: list[list[ev.Event]]
) -> ev.VmIdentified | None:
    """``VmIdentified`` for an open or attach that names a UUID other than the recorded one, and
    that was accepted (a refused attach or open identifies nothing). Only inputs with a UUID can
    cause it, so logs of VMs without one are unchanged (``tests/dm_engine/test_log_digest.py``)."""
    if not input.uuid or input.uuid == state.uuid:
        return None
    opened = ev.ChannelOpened if type(input) is inp.ChannelOpened else ev.QemuAttached
    if not any(type(e) is opened for step in steps for e in step):
        return None
    return ev.VmIdentified(uuid=input.uuid, source="hello" if opened is ev.ChannelOpened else "qemu")


def _decide_steps(state: VmState, input: inp.Input, config: EngineConfig) -> list[list[ev.Event]]:
    if type(input) is inp.ForgetVm:
        return [_on_forget_vm(state, input, config)]
    if state.qemu is not None or type(input) in inp.QEMU_INPUTS:
        return qemu_vm.decide_steps(state, input, config)
    if type(input) is inp.ChannelOpened and input.reset and state.described:
        # A new channel comes after a VMBus device reset (QEMU only accepts an open in
        # S_POST_RESET_CLOSED, reached through hv_balloon_vmdev_reset); "system" is a reboot
        # (hv_balloon_system_reset also drops hot-added memory). The reset closes any channel
        # still open, so it is the first step; the open is decided for the state after it.
        if input.reset == "system":
            reset = _on_system_reset(state, inp.SystemReset(tick=input.tick), config)
        else:
            reset = _on_vmbus_reset(state, inp.VmbusReset(tick=input.tick), config)
        pristine = input.reset == "system" or not state.layout.vdimms
        return [reset, _on_channel_opened(state, input, config, pristine=pristine)]
    if type(input) is inp.ChannelOpened and state.protocol is not ProtocolState.CLOSED:
        # The gateway lost the close (e.g. it restarted): close the old channel first. The open
        # reads only the layout and the described flag, which the close does not change, so
        # both steps can be decided from the state as it is now.
        close = _on_channel_closed(state, inp.ChannelClosed(tick=input.tick, reason="reopened"), config)
        return [close, _on_channel_opened(state, input, config)]
    return [_INPUT_HANDLERS[type(input)](state, input, config)]


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


def _describe(state: VmState, i: inp.ChannelOpened) -> ev.VmDescribed | ev.CommandRejected:
    """The layout a hello describes: RAM where the hello says it is (an older hello: ``[0, boot)``),
    the hot-add window where QEMU puts hv-balloon's memory device unless the hello says where."""
    boot = i.boot_bytes >> PAGE_SHIFT
    maxmem = max(i.maxmem_bytes >> PAGE_SHIFT, boot)
    try:
        ram = check_ram_ranges(i.ram, boot) if i.ram else ()
    except RamLayoutError as e:
        return ev.CommandRejected(command="channel-open", error_class="GenericError", desc=f"ram: {e}")
    if i.hot_add_base_page is not None:
        start = i.hot_add_base_page
    else:
        start = hot_add_window_start_page(ram or legacy_ram_ranges(boot))
    if ram and start < ram_end_page(ram):
        return ev.CommandRejected(
            command="channel-open", error_class="GenericError", desc="hot-add window overlaps guest RAM"
        )
    return ev.VmDescribed(
        boot_pages=boot,
        maxmem_pages=maxmem,
        window_start_page=start,
        window_end_page=start + (maxmem - boot),
        status_reports=i.status_reports,
        ram=ram,
    )


def _pristine(state: VmState) -> bool:
    return state.ballooned.page_count == 0 and not state.layout.vdimms


def _on_channel_opened(
    state: VmState, i: inp.ChannelOpened, config: EngineConfig, *, pristine: bool | None = None
) -> list[ev.Event]:
    """``pristine``: whether nothing is ballooned or hot-added when the channel opens (given when a
    reset decided in the same input empties the books first)."""
    out: list[ev.Event] = []
    described = _describe(state, i)
    if isinstance(described, ev.CommandRejected):
        return [described, ev.ChannelOpened()] if state.described else [described]
    current = (
        state.boot_pages,
        state.maxmem_pages,
        state.layout.window_start_page,
        state.layout.window_end_page,
        state.status_reports_enabled,
        state.ram,
    )
    wanted = (
        described.boot_pages,
        described.maxmem_pages,
        described.window_start_page,
        described.window_end_page,
        described.status_reports,
        described.ram or legacy_ram_ranges(described.boot_pages),
    )
    if pristine is None:
        pristine = _pristine(state)
    if not state.described or (current != wanted and pristine):
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


def _on_tick(state: VmState, i: inp.Tick, config: EngineConfig) -> list[ev.Event]:
    now = i.tick
    if state.protocol is ProtocolState.POST_INIT_WAIT and now >= state.post_init_until_tick:
        return [ev.PostInitWaitEnded()]
    txn = state.txn
    if txn is None:
        return []
    waited = now - txn.last_activity_tick
    if waited < txn.kind.timeout_ticks(config):
        return []
    backoff = min(config.retry_backoff_ticks << state.consecutive_timeouts, config.retry_backoff_max_ticks)
    out: list[ev.Event] = []
    if txn.kind is TxnKind.BALLOON:
        out.append(
            ev.BalloonTransactionEnded(
                trans_id=txn.trans_id,
                requested_pages=txn.requested_pages,
                received_pages=txn.received_pages,
                outcome="timeout",
                tick=now,
            )
        )
    elif txn.kind is TxnKind.HOT_ADD:
        out.append(
            ev.HotAddAbandoned(
                trans_id=txn.trans_id,
                backend_id=txn.backend_id,
                requested_pages=txn.requested_pages,
                tick=now,
            )
        )
    elif txn.kind is TxnKind.HOT_REMOVE:
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
            kind=txn.kind.logged, trans_id=txn.trans_id, waited_ticks=waited, retry_at_tick=now + backoff, tick=now
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


#: A whole DM status report as the guest sends it: header (type, size, trans_id), then the body.
_STATUS_FRAME = struct.Struct("<HHIQQQQII")
_STATUS_TYPE = int(MessageType.DM_STATUS_REPORT)
_STATUS_ALLOWED = TRANSITIONS[ev.StatusReported].allowed - {ProtocolState.CLOSED}


def status_report(state: VmState, i: inp.GuestMessage, config: EngineConfig) -> ev.StatusReported | None:
    """The event of a plain status report (most of what a fleet sends), decided without the general
    path; None when that path must decide (anything else, a closed channel, a flood).

    What it returns is what ``decide`` returns for the input: the frame is exactly one well-formed
    status report (``codec.decode`` reads the same fields from it and finds no anomaly: the
    message has no reserved bits), the channel is open, so ``_on_guest_message`` hands it to
    ``_on_status_report``, and below the flood limit that builds this event. The state machine
    allows it in every open state and it moves nothing, so it is one legal step by itself.
    """
    raw = i.raw
    if len(raw) != _STATUS_FRAME.size or state.protocol not in _STATUS_ALLOWED or type(raw) is not bytes:
        return None
    kind, size, _trans_id, avail, committed, page_file_size, zero_free, writes, io_diff = _STATUS_FRAME.unpack(raw)
    if kind != _STATUS_TYPE or size != _STATUS_FRAME.size:
        return None
    tick = i.tick
    if state.status_tick == tick and state.status_in_tick >= config.max_status_reports_per_tick:
        return None
    return ev.StatusReported(
        tick=tick,
        available_pages=avail,
        committed_pages=committed,
        page_file_size_pages=page_file_size,
        zero_free_pages=zero_free,
        page_file_writes=writes,
        io_diff=io_diff,
    )


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


#: Balloon answers with at least this many ranges, into a ballooned set of at least as many, are
#: first checked as one ``RangeBatch``. Below that numpy's fixed cost (tens of microseconds) outweighs
#: the Python loops it replaces: measured on ``bench/engine.py``, answers in address order into a set
#: of a few ranges (the honest Linux case) ran at 3.7M ranges/s checked as a batch, 4.6M without;
#: shuffled answers into a fragmented set 0.58M-0.64M as a batch, 0.44M without.
_BATCH_CHECK_MIN = 32


def _classify_returned(
    state: VmState, msg: Any, tick: int, universe: PageRangeSet
) -> tuple[list[ev.Event], list[tuple[int, int]], int]:
    """Split a guest's returned ranges into pages it may give back and violations.

    Returns (violation events, acceptable ranges, acceptable pages): acceptable pages lie in
    ``universe`` and are not ballooned yet. Everything else is reported with its exact ranges.
    """
    ranges = msg.ranges
    if len(ranges) >= _BATCH_CHECK_MIN and len(state.ballooned) >= _BATCH_CHECK_MIN:
        # A long answer (up to 510 ranges) from an honest guest: every check below at once, in
        # numpy (``RangeBatch``); the same outcome as the general path, which any doubt falls to.
        batch = RangeBatch(ranges)
        if not batch.empty and not batch.repeats and universe.covers(batch) and state.ballooned.isdisjoint(batch):
            return [], batch.to_list(), batch.pages
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
    fresh, refused = _within_range_cap(state.ballooned, fresh, config.max_ballooned_ranges)
    if refused:
        refused_pages = sum(c for _, c in refused)
        fresh_pages -= refused_pages
        out.append(
            _flag(
                ev.ViolationReason.RANGE_LIMIT,
                msg,
                tick,
                f"the ballooned set would exceed {config.max_ballooned_ranges} ranges; "
                f"{refused_pages} pages not accounted, ballooning stopped",
                refused,
            )
        )
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
    if not msg.more_pages or not msg.ranges or refused:
        out.append(
            ev.BalloonTransactionEnded(
                trans_id=txn.trans_id,
                requested_pages=txn.requested_pages,
                received_pages=received,
                outcome="limit" if refused else _balloon_outcome(received, txn.requested_pages, msg),
                tick=tick,
            )
        )
    return out


def _within_range_cap(
    ballooned: PageRangeSet, fresh: list[tuple[int, int]], cap: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split ``fresh`` (disjoint from ``ballooned``, never adjacent to each other) into the ranges
    that keep the ballooned set at most ``cap`` ranges once added, in message order, and the rest.

    A fresh range adds one stored range, minus one for each ballooned neighbour it touches (it
    merges with them), so the count is exact without building the merged set.

    Runtime complexity: O(k log(n)) for k fresh ranges.
    """
    count = len(ballooned)
    if count + len(fresh) <= cap:
        return fresh, []  # the common case: no lookups
    overlap = ballooned.overlap_count
    for i, (start, pages) in enumerate(fresh):
        grows = 1 - (start > 0 and overlap(start - 1, 1) > 0) - (overlap(start + pages, 1) > 0)
        if count + grows > cap:
            return fresh[:i], fresh[i:]
        count += grows
    return fresh, []


def _balloon_outcome(received: int, requested: int, last: BalloonResponse) -> ev.Outcome:
    """QEMU (``hv_balloon_handle_remove_response``): an empty answer (range_count 0) zeroes the
    balloon diff and ends the pursuit; a non-empty last answer that fell short leaves the rest owed,
    so another request follows."""
    if received >= requested:
        return "complete"
    return "partial" if last.ranges else "floor"


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


def _on_hot_remove_response(state: VmState, msg: Any, tick: int, config: EngineConfig) -> list[ev.Event]:
    assert isinstance(msg, HotRemoveResponse)
    txn = state.txn
    if state.protocol is not ProtocolState.HOT_REMOVE_REPLY_WAIT or txn is None:
        return _unexpected(state, msg, tick)
    removable = hot_added_part(state)
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


def _on_forget_vm(state: VmState, i: inp.ForgetVm, config: EngineConfig) -> list[ev.Event]:
    """A connected VM is not forgotten: its guest (or QEMU) would keep talking to a VM that no
    longer exists, and the next message would silently create a fresh one."""
    if state.protocol is not ProtocolState.CLOSED:
        return [
            ev.CommandRejected(
                command="x-hvdm-forget",
                error_class="GenericError",
                desc=f"VM is connected (protocol state {state.protocol}); close its channel first",
            )
        ]
    return [ev.VmForgotten(reason=i.reason)]


def retention(state: VmState, tick: int, config: EngineConfig) -> list[ev.Event]:
    """What a tick does to a disconnected VM under ``retention_ticks``: start its countdown, or
    forget it once the countdown ran out. Decided from ticks in the log, so replays agree."""
    if not config.retention_ticks or state.protocol is not ProtocolState.CLOSED:
        return []
    since = state.retention_since_tick
    if since is None:
        return [ev.RetentionStarted(since_tick=tick)]
    if tick - since >= config.retention_ticks:
        return [ev.VmForgotten(reason="retention")]
    return []


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
    inp.ForgetVm: _on_forget_vm,
}
