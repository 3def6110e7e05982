"""evolve: fold one event into a VM's state. The fold of a VM's events is its state.

The protocol state is not written here: ``evolve`` takes it from the transition table in
``machine``, so the handlers below only move the accounting and the transaction in flight.
Folding never refuses an event -- a stored log is what happened -- and must stay deterministic:
recovery, replicas and audits all rebuild state by folding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..range_store import PageRangeSet
from ..vdimm_allocator import new_layout, plug, record_hot_add, record_hot_remove, release_all, unplug
from ..vdimm_allocator.ram_layout import legacy_ram_ranges
from . import events as ev
from . import qemu_vm
from .machine import ProtocolState, TxnKind, next_state
from .state import Capabilities, GuestStatus, Transaction, VmState


def evolve(state: VmState, event: ev.Event) -> VmState:
    """Fold one event into ``state`` (in place) and return it."""
    _EVOLVERS[type(event)](state, event)
    state.protocol = next_state(state.protocol, event)
    if state.retention_since_tick is not None and state.protocol is not ProtocolState.CLOSED:
        state.retention_since_tick = None  # connected again: a later close starts a new countdown
    return state


def _ev_vm_described(s: VmState, e: ev.VmDescribed) -> None:
    s.described = True
    s.boot_pages = e.boot_pages
    s.maxmem_pages = e.maxmem_pages
    s.status_reports_enabled = e.status_reports
    s.layout = new_layout(e.window_start_page, e.window_end_page)
    s.ram = e.ram or legacy_ram_ranges(e.boot_pages)
    s.owned = PageRangeSet(s.ram)
    s.ballooned = PageRangeSet()


def _ev_vm_identified(s: VmState, e: ev.VmIdentified) -> None:
    s.uuid = e.uuid


def _ev_channel_opened(s: VmState, e: ev.ChannelOpened) -> None:
    s.version = None
    s.caps = None
    s.txn = None


def _ev_channel_closed(s: VmState, e: ev.ChannelClosed) -> None:
    s.txn = None
    s.status = None  # QEMU: "no guest memory status report received yet" after a close
    s.late_balloon_ok = False


def _ev_vmbus_reset(s: VmState, e: ev.VmbusReset) -> None:
    # QEMU keeps the target across a reset but acts on it again only if the operator's request
    # was still pending (``target_changed``): a target already reached, or one a transaction was
    # working toward when the reset cut it off, waits for the next ``balloon`` command.
    reached = s.target_pages is not None and s.target_pages == s.current_pages
    if s.txn is not None or reached:
        s.target_pending = False
    _ev_channel_closed(s, ev.ChannelClosed(reason="vmbus reset"))
    s.ballooned = PageRangeSet()
    s.trans_id = 0
    s.retry_at_tick = 0
    s.consecutive_timeouts = 0


def _ev_system_reset(s: VmState, e: ev.SystemReset) -> None:
    _ev_vmbus_reset(s, ev.VmbusReset(ballooned_pages_dropped=e.ballooned_pages_dropped))
    s.layout, _ = release_all(s.layout)
    s.owned = PageRangeSet(s.ram)
    s.target_pending = False


def _ev_backend_unused(s: VmState, e: ev.MemoryBackendUnused) -> None:
    pass


def _ev_version_accepted(s: VmState, e: ev.VersionAccepted) -> None:
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


def _ev_post_init_ended(s: VmState, e: ev.PostInitWaitEnded) -> None:
    pass


def _ev_status_reported(s: VmState, e: ev.StatusReported) -> None:
    s.status = GuestStatus(tick=e.tick, available_pages=e.available_pages, committed_pages=e.committed_pages)
    s.counters.status_reports_total += 1
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


def _start(s: VmState, txn: Transaction) -> None:
    s.txn = replace(txn, target_generation=s.target_generation)
    s.late_balloon_ok = False


def _ev_balloon_requested(s: VmState, e: ev.BalloonRequested) -> None:
    _start(
        s,
        Transaction(TxnKind.BALLOON, e.trans_id, e.num_pages, 0, e.tick, e.tick),
    )


def _ev_pages_ballooned(s: VmState, e: ev.PagesBallooned) -> None:
    s.ballooned.add_many(e.ranges)
    s.counters.balloon_out_pages_total += e.pages
    txn = s.txn
    if txn is not None and txn.kind == TxnKind.BALLOON:
        s.txn = replace(txn, received_pages=txn.received_pages + e.pages, last_activity_tick=e.tick)


def _give_up_on_target(s: VmState) -> None:
    """The guest could not deliver: stop pursuing the target it was working toward (QEMU does
    not retry), unless the operator set a new one meanwhile."""
    txn = s.txn
    if txn is None or txn.target_generation == s.target_generation:
        s.target_pending = False


def _finish(s: VmState) -> None:
    s.txn = None
    s.trans_id = (s.trans_id + 1) & 0xFFFF_FFFF


def _ev_balloon_ended(s: VmState, e: ev.BalloonTransactionEnded) -> None:
    if e.outcome in ("floor", "limit"):
        _give_up_on_target(s)  # an empty answer (the guest is at its floor; QEMU stops too) or the range cap
    _finish(s)
    if e.outcome == "timeout":
        s.late_balloon_ok = True
        return
    s.consecutive_timeouts = 0


def _ev_unballoon_requested(s: VmState, e: ev.UnballoonRequested) -> None:
    # Optimistic, as QEMU: the pages stop counting as ballooned when the request is sent.
    s.ballooned.remove_many(e.ranges)
    s.counters.balloon_in_pages_total += e.pages
    txn = s.txn
    if txn is not None and txn.kind == TxnKind.UNBALLOON:
        s.txn = replace(txn, requested_pages=txn.requested_pages + e.pages)
    else:
        _start(
            s,
            Transaction(TxnKind.UNBALLOON, e.trans_id, e.pages, 0, e.tick, e.tick),
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
        Transaction(TxnKind.HOT_ADD, e.trans_id, e.page_count, 0, e.tick, e.tick, e.backend_id, e.start_page),
    )


def _ev_hot_add_completed(s: VmState, e: ev.HotAddCompleted) -> None:
    s.layout = record_hot_add(s.layout, e.backend_id, e.requested_pages, e.accepted_pages, e.result != 0)
    if e.accepted_pages:
        s.owned.add(e.start_page, e.accepted_pages)
        s.counters.hot_added_pages_total += e.accepted_pages
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
        Transaction(TxnKind.HOT_REMOVE, e.trans_id, e.page_count, 0, e.tick, e.tick),
    )


def _ev_pages_hot_removed(s: VmState, e: ev.PagesHotRemoved) -> None:
    s.owned.remove_many(e.ranges)
    s.counters.hot_removed_pages_total += e.pages
    for vdimm in s.layout.vdimms:
        lo, hi = vdimm.usable_start, vdimm.usable_start + vdimm.added_pages
        inside = sum(min(hi, a + n) - max(lo, a) for a, n in e.ranges if a < hi and a + n > lo)
        if inside:
            s.layout = record_hot_remove(s.layout, vdimm.backend_id, inside)
    txn = s.txn
    if txn is not None and txn.kind == TxnKind.HOT_REMOVE:
        s.txn = replace(txn, received_pages=txn.received_pages + e.pages, last_activity_tick=e.tick)


def _ev_hot_remove_ended(s: VmState, e: ev.HotRemoveTransactionEnded) -> None:
    _finish(s)
    if e.outcome != "timeout":
        s.consecutive_timeouts = 0


def _ev_timed_out(s: VmState, e: ev.TransactionTimedOut) -> None:
    if s.txn is not None:  # unballoon: nothing else closed the transaction
        _finish(s)
    s.retry_at_tick = e.retry_at_tick
    s.consecutive_timeouts += 1


def _ev_violation(s: VmState, e: ev.GuestViolation) -> None:
    s.counters.violations[e.reason] = s.counters.violations.get(e.reason, 0) + 1


def _ev_command_rejected(s: VmState, e: ev.CommandRejected) -> None:
    s.counters.commands_rejected_total += 1


def _ev_input_rejected(s: VmState, e: ev.InputRejected) -> None:
    s.needs_attention = True
    s.counters.inputs_rejected_total += 1


def _ev_retention_started(s: VmState, e: ev.RetentionStarted) -> None:
    s.retention_since_tick = e.since_tick


def _ev_vm_forgotten(s: VmState, e: ev.VmForgotten) -> None:
    """Nothing to fold: the state itself is dropped by whoever keeps the states (``step.forget``)."""


_EVOLVERS: dict[type, Callable[[VmState, Any], None]] = {
    ev.VmDescribed: _ev_vm_described,
    ev.VmIdentified: _ev_vm_identified,
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
    ev.InputRejected: _ev_input_rejected,
    ev.RetentionStarted: _ev_retention_started,
    ev.VmForgotten: _ev_vm_forgotten,
    **qemu_vm.EVENT_HANDLERS,
}
