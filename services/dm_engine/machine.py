"""The host protocol's state machine, in one table: read this file to draw the diagram.

Every event type has one row: the protocol states in which ``decide``/``advance`` may produce it and
the state folding it leads to (``None``: the protocol state does not change, QEMU's
``S_NO_CHANGE``). ``evolve`` takes its protocol writes from this table and nowhere else, so the
table is the machine, not a description of it.

A *step* is what one handler decides at once: one ``decide`` of an input, or one ``advance``.
As in QEMU's hv-balloon (where a handler that changes the state twice trips an assertion), a
step makes at most one protocol transition; ``check_step`` enforces it while ``process`` folds.
Folding a stored log (recovery, audits) does not check: the log is what happened.

Transactions -- a host request waiting for the guest's reply -- are described by ``TxnKind``:
the state it waits in, the configured timeout, and the events that close it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from . import events as ev
from .config import EngineConfig


class ProtocolState(enum.StrEnum):
    """Named after what the host is waiting for, as in QEMU's hv-balloon; the ring-buffer
    reservation states (``*_RB_WAIT``, ``*_POSTING``) disappear because host messages go to an
    outbox log instead of a ring."""

    CLOSED = "CLOSED"  # no channel; nothing is read
    VERSION = "VERSION"  # waiting for DM_VERSION_REQUEST
    CAPS = "CAPS"  # waiting for DM_CAPABILITIES_REPORT
    POST_INIT_WAIT = "POST_INIT_WAIT"  # caps accepted; no request before the post-init delay
    IDLE = "IDLE"  # acts when the target differs from the current size
    BALLOON_REPLY_WAIT = "BALLOON_REPLY_WAIT"
    UNBALLOON_REPLY_WAIT = "UNBALLOON_REPLY_WAIT"
    HOT_ADD_REPLY_WAIT = "HOT_ADD_REPLY_WAIT"
    HOT_REMOVE_REPLY_WAIT = "HOT_REMOVE_REPLY_WAIT"


S = ProtocolState
ANY: Final = frozenset(S)
OPEN: Final = ANY - {S.CLOSED}


class TransitionError(AssertionError):
    """A step broke the state machine: an event in a state the table does not allow, or more
    than one transition in one step. A logic error in the engine, never the guest's doing."""


@dataclass(frozen=True, slots=True)
class Transition:
    event: type[ev.EventBase]
    #: States in which a step may produce the event.
    allowed: frozenset[ProtocolState]
    #: The state after folding it; ``None`` leaves the protocol state as it is.
    to: ProtocolState | None = None


def _t(event: type[ev.EventBase], allowed: Iterable[ProtocolState], to: ProtocolState | None = None) -> Transition:
    return Transition(event, frozenset(allowed), to)


#: The machine. Rows without a target are facts that never move the protocol.
TABLE: Final[tuple[Transition, ...]] = (
    # channel life cycle
    _t(ev.ChannelOpened, {S.CLOSED}, S.VERSION),
    _t(ev.ChannelClosed, OPEN, S.CLOSED),
    _t(ev.VmbusReset, ANY, S.CLOSED),
    _t(ev.SystemReset, ANY, S.CLOSED),
    # handshake
    _t(ev.VersionAccepted, {S.VERSION}, S.CAPS),
    _t(ev.VersionRejected, {S.VERSION}),
    _t(ev.CapabilitiesAccepted, {S.CAPS}, S.POST_INIT_WAIT),
    _t(ev.PostInitWaitEnded, {S.POST_INIT_WAIT}, S.IDLE),
    # balloon: IDLE -> BALLOON_REPLY_WAIT -> IDLE; a late answer after a timeout is still counted
    _t(ev.BalloonRequested, {S.IDLE}, S.BALLOON_REPLY_WAIT),
    _t(ev.PagesBallooned, {S.BALLOON_REPLY_WAIT, S.IDLE}),
    _t(ev.BalloonTransactionEnded, {S.BALLOON_REPLY_WAIT}, S.IDLE),
    # unballoon: one step may send several requests (more_pages), the first one moves the state
    _t(ev.UnballoonRequested, {S.IDLE, S.UNBALLOON_REPLY_WAIT}, S.UNBALLOON_REPLY_WAIT),
    _t(ev.UnballoonCompleted, {S.UNBALLOON_REPLY_WAIT}, S.IDLE),
    # hot-add
    _t(ev.HotAddRequested, {S.IDLE}, S.HOT_ADD_REPLY_WAIT),
    _t(ev.HotAddCompleted, {S.HOT_ADD_REPLY_WAIT}, S.IDLE),
    _t(ev.HotAddAbandoned, {S.HOT_ADD_REPLY_WAIT}, S.IDLE),
    # hot-remove (protocol 2.0)
    _t(ev.HotRemoveRequested, {S.IDLE}, S.HOT_REMOVE_REPLY_WAIT),
    _t(ev.PagesHotRemoved, {S.HOT_REMOVE_REPLY_WAIT}),
    _t(ev.HotRemoveTransactionEnded, {S.HOT_REMOVE_REPLY_WAIT}, S.IDLE),
    # a timeout follows the kind's own closing event (already IDLE), except unballoon's
    _t(ev.TransactionTimedOut, {S.IDLE, S.UNBALLOON_REPLY_WAIT}, S.IDLE),
    # facts that never move the protocol
    _t(ev.VmDescribed, ANY),
    _t(ev.VmIdentified, ANY),
    _t(ev.StatusReported, OPEN),
    _t(ev.TargetSet, ANY),
    _t(ev.MemoryBackendAdded, ANY),
    _t(ev.MemoryBackendDeleted, ANY),
    _t(ev.MemoryBackendUnused, ANY),
    _t(ev.VdimmPlugged, ANY),
    _t(ev.VdimmUnplugged, ANY),
    _t(ev.GuestViolation, ANY),
    _t(ev.CommandRejected, ANY),
    _t(ev.InputRejected, ANY),
    # retiring a VM: only without a channel (or QEMU monitor); the runners then drop its state
    _t(ev.RetentionStarted, {S.CLOSED}),
    _t(ev.VmForgotten, {S.CLOSED}),
    # QEMU-managed VMs (qemu_vm): the protocol runs inside QEMU, so hvdm's state is only whether
    # QEMU's monitor is attached (IDLE) or not (CLOSED); targets in flight are QEMU's business.
    _t(ev.QemuAttached, {S.CLOSED}, S.IDLE),
    _t(ev.QemuDetached, OPEN, S.CLOSED),
    _t(ev.QemuActualChanged, ANY),
    _t(ev.QemuBalloonCommanded, {S.IDLE}),
    _t(ev.QemuTargetReached, ANY),
    _t(ev.QemuTargetStalled, {S.IDLE}),
    _t(ev.QemuCommandFailed, ANY),
    _t(ev.QemuPagesTraced, ANY),
)

TRANSITIONS: Final[Mapping[type[ev.EventBase], Transition]] = MappingProxyType({t.event: t for t in TABLE})


class TxnKind(enum.StrEnum):
    """A host request that waits for the guest's reply; the value is the name logs and audits use."""

    BALLOON = "balloon"
    UNBALLOON = "unballoon"
    HOT_ADD = "hot_add"
    HOT_REMOVE = "hot_remove"

    @property
    def logged(self) -> ev.TransactionKind:
        """The name as event fields type it (the same string)."""
        return self.value

    @property
    def wait_state(self) -> ProtocolState:
        """The state the host is in while the request is unanswered."""
        return _TXN[self].wait_state

    def timeout_ticks(self, config: EngineConfig) -> int:
        """Ticks without an answer after which the request is abandoned."""
        return _TXN[self].timeout(config)

    @property
    def opening(self) -> type[ev.EventBase]:
        """The event that starts the transaction."""
        return _TXN[self].opening

    @property
    def closing(self) -> tuple[type[ev.EventBase], ...]:
        """The events that end it (a timeout ends it too, after the kind's own closing event)."""
        return _TXN[self].closing


@dataclass(frozen=True, slots=True)
class _TxnSpec:
    wait_state: ProtocolState
    timeout: Callable[[EngineConfig], int]
    opening: type[ev.EventBase]
    closing: tuple[type[ev.EventBase], ...]


_TXN: Final[Mapping[TxnKind, _TxnSpec]] = MappingProxyType(
    {
        TxnKind.BALLOON: _TxnSpec(
            S.BALLOON_REPLY_WAIT,
            lambda c: c.balloon_timeout_ticks,
            ev.BalloonRequested,
            (ev.BalloonTransactionEnded,),
        ),
        TxnKind.UNBALLOON: _TxnSpec(
            S.UNBALLOON_REPLY_WAIT,
            lambda c: c.unballoon_timeout_ticks,
            ev.UnballoonRequested,
            (ev.UnballoonCompleted, ev.TransactionTimedOut),
        ),
        TxnKind.HOT_ADD: _TxnSpec(
            S.HOT_ADD_REPLY_WAIT,
            lambda c: c.hot_add_timeout_ticks,
            ev.HotAddRequested,
            (ev.HotAddCompleted, ev.HotAddAbandoned),
        ),
        TxnKind.HOT_REMOVE: _TxnSpec(
            S.HOT_REMOVE_REPLY_WAIT,
            lambda c: c.hot_remove_timeout_ticks,
            ev.HotRemoveRequested,
            (ev.HotRemoveTransactionEnded,),
        ),
    }
)

#: Protocol states in which the guest's handshake is complete.
NEGOTIATED_STATES: Final = frozenset({S.POST_INIT_WAIT, S.IDLE} | {spec.wait_state for spec in _TXN.values()})

#: Reply-wait state -> the kind of transaction that must be in flight in it (the invariants' view).
WAITING: Final[Mapping[ProtocolState, TxnKind]] = MappingProxyType({k.wait_state: k for k in TxnKind})


def timeout_for(kind: str, config: EngineConfig) -> int:
    """The timeout of a transaction kind, by its logged name."""
    return TxnKind(kind).timeout_ticks(config)


def next_state(protocol: ProtocolState, event: ev.EventBase) -> ProtocolState:
    """The protocol state after folding ``event`` (the fold is lenient: it never refuses)."""
    to = TRANSITIONS[type(event)].to
    return protocol if to is None else to


def check_step(protocol: ProtocolState, events: Iterable[ev.EventBase]) -> None:
    """Raise ``TransitionError`` unless ``events``, folded from ``protocol``, are one legal step."""
    changes = 0
    for event in events:
        t = TRANSITIONS[type(event)]
        if protocol not in t.allowed:
            raise TransitionError(f"{event.KIND} is not allowed in state {protocol.value}")
        if t.to is not None and t.to is not protocol:
            changes += 1
            if changes > 1:
                raise TransitionError(f"{event.KIND}: a second protocol transition in one step ({protocol.value} ->)")
            protocol = t.to
