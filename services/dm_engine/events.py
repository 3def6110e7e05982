"""Event types: the facts the engine decided. A VM's state is the fold of its events.

Events carry facts only, in units that name themselves (``pages``, ``bytes``, ``*_page``), and
enough detail that a fold needs nothing else: a ``PagesBallooned`` lists the exact ranges newly
taken back, not the message they came in.
"""

from __future__ import annotations

import enum
import typing
from dataclasses import dataclass
from typing import ClassVar, Literal

PageRanges = tuple[tuple[int, int], ...]
#: How a transaction ended: everything asked for, less (the guest refused the rest), or no answer.
Outcome = Literal["complete", "partial", "floor", "limit", "timeout"]
TransactionKind = Literal["balloon", "unballoon", "hot_add", "hot_remove"]


class ViolationReason(enum.StrEnum):
    """Why a guest's behaviour was rejected or flagged; the ``reason`` label of the violation metric."""

    # The message could not be decoded (the codec's reason codes).
    TRUNCATED = "TRUNCATED"
    SIZE_MISMATCH = "SIZE_MISMATCH"
    RANGE_COUNT_MISMATCH = "RANGE_COUNT_MISMATCH"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    #: Decoded and processed, but reserved bits were not zero.
    RESERVED_BITS_SET = "RESERVED_BITS_SET"
    #: The gateway could not frame the byte stream (bad VMBus descriptor, oversized packet).
    MALFORMED_FRAME = "MALFORMED_FRAME"
    #: A message type only the host may send (responses to the guest, requests to the guest).
    WRONG_DIRECTION = "WRONG_DIRECTION"
    #: A known message the host was not waiting for in its current state.
    UNEXPECTED_MESSAGE = "UNEXPECTED_MESSAGE"
    #: Returned pages that are neither boot RAM nor hot-added memory (QEMU counts them anyway).
    PAGES_NOT_OWNED = "PAGES_NOT_OWNED"
    #: Returned pages that were already ballooned out (or repeated within one message).
    DOUBLE_FREE = "DOUBLE_FREE"
    #: More pages returned than the transaction asked for (accounted, since the guest gave them up).
    PAGES_BEYOND_REQUEST = "PAGES_BEYOND_REQUEST"
    #: A range with a zero page count.
    EMPTY_RANGE = "EMPTY_RANGE"
    #: Hot-add response claiming more pages than were offered (clamped, as QEMU does).
    HOT_ADD_OVERCLAIM = "HOT_ADD_OVERCLAIM"
    #: Hot-remove response with pages that are not hot-added, not owned, or ballooned.
    HOT_REMOVE_INVALID_PAGES = "HOT_REMOVE_INVALID_PAGES"
    #: No answer within the configured number of ticks.
    TIMEOUT = "TIMEOUT"
    #: More status reports in one tick than a real guest ever sends.
    STATUS_REPORT_FLOOD = "STATUS_REPORT_FLOOD"
    #: Returned pages that would fragment the VM's ballooned set beyond ``max_ballooned_ranges``
    #: ranges: not accounted, and ballooning stops (a bound on what one guest costs the host).
    RANGE_LIMIT = "RANGE_LIMIT"


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBase:
    KIND: ClassVar[str] = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class VmDescribed(EventBase):
    """The VM's memory layout, from the gateway hello: boot RAM is the ``ram`` ranges (x86 keeps
    part of it above 4 GiB), or pages [0, boot_pages) when ``ram`` is empty (older hellos)."""

    KIND: ClassVar[str] = "VmDescribed"
    boot_pages: int
    maxmem_pages: int
    window_start_page: int
    window_end_page: int
    status_reports: bool
    ram: PageRanges = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class VmIdentified(EventBase):
    """The VM's UUID, as the hello (``source="hello"``) or QEMU's ``query-uuid`` (``"qemu"``) gave
    it, when it differs from the one recorded: for projections (the metrics' ``uuid`` label); no
    decision reads it. Only emitted for an input that names a UUID, so logs without one are
    unchanged."""

    KIND: ClassVar[str] = "VmIdentified"
    uuid: str
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelOpened(EventBase):
    KIND: ClassVar[str] = "ChannelOpened"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelClosed(EventBase):
    """Any transaction in flight is abandoned; ballooned pages stay ballooned (hibernate/resume)."""

    KIND: ClassVar[str] = "ChannelClosed"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VmbusReset(EventBase):
    """Ballooned trees and counters cleared, host trans_id back to 0, hot-added memory kept."""

    KIND: ClassVar[str] = "VmbusReset"
    ballooned_pages_dropped: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemReset(EventBase):
    """Reboot: on top of a VMBus reset, every vDIMM is released (listed in unused_backends)."""

    KIND: ClassVar[str] = "SystemReset"
    ballooned_pages_dropped: int
    hot_added_pages_dropped: int
    unused_backends: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryBackendUnused(EventBase):
    """QMP ``HV_BALLOON_MEMORY_BACKEND_UNUSED``: management may now delete or re-plug it."""

    KIND: ClassVar[str] = "MemoryBackendUnused"
    backend_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionAccepted(EventBase):
    KIND: ClassVar[str] = "VersionAccepted"
    version: int
    guest_trans_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionRejected(EventBase):
    KIND: ClassVar[str] = "VersionRejected"
    version: int
    guest_trans_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CapabilitiesAccepted(EventBase):
    """The guest's capabilities; the post-init wait runs until ``post_init_until_tick``."""

    KIND: ClassVar[str] = "CapabilitiesAccepted"
    guest_trans_id: int
    balloon: bool
    hot_add: bool
    hot_add_alignment: int
    hot_remove: bool
    min_page_cnt: int
    max_page_number: int
    suppress_pressure_reports: bool
    post_init_until_tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PostInitWaitEnded(EventBase):
    KIND: ClassVar[str] = "PostInitWaitEnded"


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReported(EventBase):
    """A guest memory status report; counts are 4 KiB pages as on the wire."""

    KIND: ClassVar[str] = "StatusReported"
    tick: int
    available_pages: int
    committed_pages: int
    page_file_size_pages: int
    zero_free_pages: int
    page_file_writes: int
    io_diff: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSet(EventBase):
    KIND: ClassVar[str] = "TargetSet"
    target_pages: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BalloonRequested(EventBase):
    KIND: ClassVar[str] = "BalloonRequested"
    trans_id: int
    num_pages: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PagesBallooned(EventBase):
    """Pages newly taken back from the guest by one balloon response message (exact ranges)."""

    KIND: ClassVar[str] = "PagesBallooned"
    ranges: PageRanges
    pages: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BalloonTransactionEnded(EventBase):
    """outcome: ``complete`` (all asked for), ``partial`` (the guest gave less in a non-empty last
    answer: the host asks again for the rest, as QEMU's ``hv_balloon_handle_remove_response``
    does), ``floor`` (the last answer was empty, range_count 0: the guest is at its floor and the
    host stops pursuing the target, as QEMU does), ``limit`` (the answer would fragment the
    ballooned set beyond ``max_ballooned_ranges``: stop, as for ``floor``), or ``timeout``. Logs
    written before ``floor`` existed record ``partial`` for both."""

    KIND: ClassVar[str] = "BalloonTransactionEnded"
    trans_id: int
    requested_pages: int
    received_pages: int
    outcome: Outcome
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnballoonRequested(EventBase):
    """One UNBALLOON_REQUEST message; its pages stop counting as ballooned when it is sent."""

    KIND: ClassVar[str] = "UnballoonRequested"
    trans_id: int
    ranges: PageRanges
    pages: int
    more_pages: bool
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnballoonCompleted(EventBase):
    KIND: ClassVar[str] = "UnballoonCompleted"
    trans_id: int
    pages: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryBackendAdded(EventBase):
    KIND: ClassVar[str] = "MemoryBackendAdded"
    backend_id: str
    size_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryBackendDeleted(EventBase):
    KIND: ClassVar[str] = "MemoryBackendDeleted"
    backend_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VdimmPlugged(EventBase):
    """A backend laid out as a vDIMM in the hot-add window (the seed's v2 design)."""

    KIND: ClassVar[str] = "VdimmPlugged"
    backend_id: str
    size_bytes: int
    hot_add_alignment: int
    start_page: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VdimmUnplugged(EventBase):
    KIND: ClassVar[str] = "VdimmUnplugged"
    backend_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HotAddRequested(EventBase):
    KIND: ClassVar[str] = "HotAddRequested"
    trans_id: int
    backend_id: str
    start_page: int
    page_count: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HotAddCompleted(EventBase):
    """accepted_pages (clamped to the offer) are now guest RAM; a short or failed answer makes
    the rest of that vDIMM unusable until reboot, as in QEMU."""

    KIND: ClassVar[str] = "HotAddCompleted"
    trans_id: int
    backend_id: str
    start_page: int
    requested_pages: int
    accepted_pages: int
    result: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HotAddAbandoned(EventBase):
    """Timed out: the chunk is treated as failed (rest of the vDIMM unusable)."""

    KIND: ClassVar[str] = "HotAddAbandoned"
    trans_id: int
    backend_id: str
    requested_pages: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HotRemoveRequested(EventBase):
    KIND: ClassVar[str] = "HotRemoveRequested"
    trans_id: int
    page_count: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PagesHotRemoved(EventBase):
    """Hot-added pages the guest gave back through protocol 2.0 hot-remove (exact ranges)."""

    KIND: ClassVar[str] = "PagesHotRemoved"
    ranges: PageRanges
    pages: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HotRemoveTransactionEnded(EventBase):
    KIND: ClassVar[str] = "HotRemoveTransactionEnded"
    trans_id: int
    requested_pages: int
    received_pages: int
    outcome: Outcome
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTimedOut(EventBase):
    """An unanswered transaction was abandoned; the next one waits until ``retry_at_tick``."""

    KIND: ClassVar[str] = "TransactionTimedOut"
    kind: TransactionKind
    trans_id: int
    waited_ticks: int
    retry_at_tick: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestViolation(EventBase):
    """The guest misbehaved; nothing wrong was accounted. ``ranges`` are the exact pages involved."""

    KIND: ClassVar[str] = "GuestViolation"
    reason: str
    message_type: str
    guest_trans_id: int
    detail: str
    ranges: PageRanges
    pages: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRejected(EventBase):
    """An operator command that could not be applied, with QEMU's QMP error class."""

    KIND: ClassVar[str] = "CommandRejected"
    command: str
    error_class: str
    desc: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionStarted(EventBase):
    """A tick found the VM disconnected with ``retention_ticks`` set: it is forgotten once that
    many ticks pass without a new channel. Recorded (events carry no time of their own) so that
    recovery from the log knows when the countdown began."""

    KIND: ClassVar[str] = "RetentionStarted"
    since_tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class VmForgotten(EventBase):
    """The VM was retired while disconnected: every runner drops its state when it folds this
    (``step.forget``), and the next record for the same id starts from ``initial_state``."""

    KIND: ClassVar[str] = "VmForgotten"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InputRejected(EventBase):
    """The engine raised while processing one input for this VM (deciding, folding or encoding
    what it decided). The input changed nothing but this record; the VM needs attention.

    Why an event and not a crash: one input must never stop the other VMs or the inputs after it,
    and a replay must show the same rejection at the same place."""

    KIND: ClassVar[str] = "InputRejected"
    #: The input's record type (``GuestMessage``, ``Tick``, ...), or what an unreadable record claimed.
    input_type: str
    inbox_pos: int
    tick: int
    error_class: str
    error: str


# ----------------------------------------------------------------------------- QEMU-managed VMs
@dataclass(frozen=True, slots=True, kw_only=True)
class QemuAttached(EventBase):
    """A real QEMU VM's monitor is attached: the VM is QEMU-managed from now on."""

    KIND: ClassVar[str] = "QemuAttached"
    device: str
    boot_pages: int
    maxmem_pages: int
    actual_pages: int
    qemu_version: str
    address: str
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuActualChanged(EventBase):
    KIND: ClassVar[str] = "QemuActualChanged"
    actual_pages: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuBalloonCommanded(EventBase):
    """hvdm asks QEMU for ``value_bytes`` (QMP ``balloon``); the outbox record is derived from it."""

    KIND: ClassVar[str] = "QemuBalloonCommanded"
    target_pages: int
    value_bytes: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuTargetReached(EventBase):
    KIND: ClassVar[str] = "QemuTargetReached"
    target_pages: int
    waited_ticks: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuTargetStalled(EventBase):
    """No progress toward the target for the configured ticks: a guest at its floor, a
    hibernation-capable guest, a missing driver. A finding in the audit; the target stays."""

    KIND: ClassVar[str] = "QemuTargetStalled"
    target_pages: int
    actual_pages: int
    waited_ticks: int
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuCommandFailed(EventBase):
    KIND: ClassVar[str] = "QemuCommandFailed"
    command: str
    error_class: str
    desc: str
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuDetached(EventBase):
    KIND: ClassVar[str] = "QemuDetached"
    reason: str
    tick: int


@dataclass(frozen=True, slots=True, kw_only=True)
class QemuPagesTraced(EventBase):
    """Page-level shadow accounting from QEMU's hv-balloon trace: exact ranges that changed."""

    KIND: ClassVar[str] = "QemuPagesTraced"
    op: str
    ranges: PageRanges
    pages: int
    tick: int


Event = (
    VmDescribed
    | VmIdentified
    | ChannelOpened
    | ChannelClosed
    | VmbusReset
    | SystemReset
    | MemoryBackendUnused
    | VersionAccepted
    | VersionRejected
    | CapabilitiesAccepted
    | PostInitWaitEnded
    | StatusReported
    | TargetSet
    | BalloonRequested
    | PagesBallooned
    | BalloonTransactionEnded
    | UnballoonRequested
    | UnballoonCompleted
    | MemoryBackendAdded
    | MemoryBackendDeleted
    | VdimmPlugged
    | VdimmUnplugged
    | HotAddRequested
    | HotAddCompleted
    | HotAddAbandoned
    | HotRemoveRequested
    | PagesHotRemoved
    | HotRemoveTransactionEnded
    | TransactionTimedOut
    | GuestViolation
    | CommandRejected
    | InputRejected
    | RetentionStarted
    | VmForgotten
    | QemuAttached
    | QemuActualChanged
    | QemuBalloonCommanded
    | QemuTargetReached
    | QemuTargetStalled
    | QemuCommandFailed
    | QemuDetached
    | QemuPagesTraced
)

#: KIND -> event class, built from the ``Event`` union so a new event type needs one line, not two.
EVENT_TYPES: dict[str, type[EventBase]] = {cls.KIND: cls for cls in typing.get_args(Event)}
