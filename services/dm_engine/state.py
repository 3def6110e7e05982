"""The state of one VM: what the fold of its events yields.

The protocol states and the transitions between them are in ``machine``; ``ProtocolState`` and
``NEGOTIATED_STATES`` are re-exported here for the code that reads states.
"""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from ..range_store import PageRangeSet
from ..vdimm_allocator import VdimmLayout, new_layout
from .machine import NEGOTIATED_STATES, ProtocolState, TxnKind
from .qemu_state import QemuVm

__all__ = [
    "NEGOTIATED_STATES",
    "Capabilities",
    "GuestStatus",
    "ProtocolState",
    "Transaction",
    "VmCounters",
    "VmState",
    "hot_added_part",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    balloon: bool
    hot_add: bool
    hot_add_alignment: int
    hot_remove: bool
    min_page_cnt: int
    max_page_number: int


@dataclass(frozen=True, slots=True)
class Transaction:
    """The host request in flight. ``last_activity_tick`` moves with every accepted answer, so a
    slow but progressing guest is not timed out."""

    kind: TxnKind
    trans_id: int
    requested_pages: int
    received_pages: int
    started_tick: int
    last_activity_tick: int
    backend_id: str = ""
    start_page: int = 0
    #: The target generation when the transaction began: a guest refusal only cancels the
    #: target it was asked to reach, not one the operator set while it was running.
    target_generation: int = 0


@dataclass(frozen=True, slots=True)
class GuestStatus:
    tick: int
    available_pages: int
    committed_pages: int


@dataclass(slots=True)
class VmCounters:
    """Running totals that only projections read (metrics, audits, summaries, QMP). Kept apart
    from the decision state so it is plain which facts can change what the engine decides."""

    status_reports_total: int = 0
    balloon_out_pages_total: int = 0
    balloon_in_pages_total: int = 0
    hot_added_pages_total: int = 0
    hot_removed_pages_total: int = 0
    #: Guest violations by reason code.
    violations: dict[str, int] = field(default_factory=dict)
    commands_rejected_total: int = 0
    inputs_rejected_total: int = 0


@dataclass(slots=True)
class VmState:
    """Mutable for speed: ``evolve`` updates it in place (copying range sets per event would make
    every balloon message O(ranges held)). ``decide`` and ``advance`` only read it."""

    vm_id: str
    described: bool = False
    boot_pages: int = 0
    maxmem_pages: int = 0
    status_reports_enabled: bool = True
    #: Boot RAM as page ranges (``[0, boot_pages)`` unless the hello placed part of it above 4 GiB).
    ram: tuple[tuple[int, int], ...] = ()
    layout: VdimmLayout = field(default_factory=lambda: new_layout(0, 0))
    protocol: ProtocolState = ProtocolState.CLOSED
    version: int | None = None
    caps: Capabilities | None = None
    suppress_pressure_reports: bool = False
    post_init_until_tick: int = 0
    #: Host transaction id: stamps requests, +1 when a transaction completes, 0 after a VMBus reset.
    trans_id: int = 0
    target_pages: int | None = None
    #: QEMU's target_changed: set by a new target, cleared when the guest could not deliver
    #: (no automatic retry after a refusal, as in QEMU).
    target_pending: bool = False
    #: +1 per TargetSet, even to the same value ("the user might be asking us to try again").
    target_generation: int = 0
    hot_remove_tried: bool = False
    txn: Transaction | None = None
    retry_at_tick: int = 0
    consecutive_timeouts: int = 0
    #: After a balloon timeout, a late answer is still accounted (with a violation).
    late_balloon_ok: bool = False
    #: Pages taken back from the guest (subset of ``owned``).
    ballooned: PageRangeSet = field(default_factory=PageRangeSet)
    #: Guest RAM: boot RAM plus hot-added pages, minus hot-removed ones.
    owned: PageRangeSet = field(default_factory=PageRangeSet)
    backends: dict[str, int] = field(default_factory=dict)
    status: GuestStatus | None = None
    status_tick: int = -1
    status_in_tick: int = 0
    #: An input for this VM made the engine raise (``InputRejected``): an operator should look.
    needs_attention: bool = False
    #: With ``retention_ticks`` set: the tick from which this disconnected VM's retention runs
    #: (``RetentionStarted``); None while connected or when retention is off.
    retention_since_tick: int | None = field(default=None, metadata={"omit_if_none": True})
    #: Set when the VM is QEMU-managed (attached through its QMP monitor, not the DM gateway).
    qemu: QemuVm | None = field(default=None, metadata={"omit_if_none": True})
    #: The VM's UUID (``VmIdentified``), None until a hello or QEMU named one.
    uuid: str | None = field(default=None, metadata={"omit_if_none": True})
    #: What projections count; nothing in decide or advance reads it.
    counters: VmCounters = field(default_factory=VmCounters)

    # ----------------------------------------------------------------- derived accounting
    @property
    def ballooned_pages(self) -> int:
        q = self.qemu
        if q is not None:
            # QEMU reports one number; the trace, when followed, gives the exact pages.
            if q.traced:
                return q.traced_ballooned.page_count
            return max(0, self.boot_pages - q.actual_pages)
        return self.ballooned.page_count

    @property
    def hot_added_pages(self) -> int:
        """Hot-added pages still in the guest (boot RAM is always owned)."""
        q = self.qemu
        if q is not None:
            if q.traced:
                return q.traced_hot_added.page_count
            return max(0, q.actual_pages - self.boot_pages)
        return self.owned.page_count - self.boot_pages

    @property
    def current_pages(self) -> int:
        """Boot + hot-added - ballooned: what the guest can use now (QEMU's actual when QEMU-managed)."""
        q = self.qemu
        if q is not None:
            return q.actual_pages
        return self.owned.page_count - self.ballooned.page_count

    # ----------------------------------------------------------------- snapshots
    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able image of the state, so start-up need not fold every event again.

        Derived from the dataclass fields (``_to_json``), so a field added to the state is in its
        snapshot without anyone remembering to add it; ``tests/dm_engine/test_snapshot.py`` checks
        that every field comes back."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_if_none"):
                continue
            data[f.name] = _to_json(value)
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> VmState:
        state: VmState = _from_json(cls, _upgrade(data))
        return state


#: Counters that snapshots written before ``VmCounters`` existed kept at the top level.
_FLAT_COUNTERS = (
    "status_reports_total",
    "balloon_out_pages_total",
    "balloon_in_pages_total",
    "hot_added_pages_total",
    "hot_removed_pages_total",
    "violations",
    "commands_rejected_total",
    "inputs_rejected_total",
)


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """An older snapshot in today's shape (a field it lacks keeps its default)."""
    data = dict(data)
    if "counters" not in data:
        data["counters"] = {k: data.pop(k) for k in _FLAT_COUNTERS if k in data}
    if "ram" not in data:
        # Taken before RAM layouts existed: RAM was [0, boot).
        described = data.get("described") and data.get("boot_pages")
        data["ram"] = [[0, data["boot_pages"]]] if described else []
    return data


def _to_json(value: Any) -> Any:
    """The JSON form of a state value: enums by value, range sets and tuples as lists, dataclasses
    as objects of their fields, dicts with sorted keys."""
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, PageRangeSet):
        return [list(r) for r in value]
    if isinstance(value, VdimmLayout):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in sorted(value.items())}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    raise TypeError(f"no snapshot form for {type(value).__name__}")


_HINTS: dict[type, dict[str, Any]] = {}


def _from_json(hint: Any, data: Any) -> Any:
    """``_to_json`` reversed, guided by the type hint of the field being read."""
    if data is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        (inner,) = (a for a in typing.get_args(hint) if a is not type(None))
        return _from_json(inner, data)
    if hint is PageRangeSet:
        return PageRangeSet((s, c) for s, c in data)
    if hint is VdimmLayout:
        return VdimmLayout.from_dict(data)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(data)
    if origin is dict:
        return dict(data)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v) for v in data)
        return tuple(_from_json(a, v) for a, v in zip(args, data, strict=True))
    if isinstance(hint, type) and is_dataclass(hint):
        hints = _HINTS.get(hint)
        if hints is None:
            hints = _HINTS[hint] = typing.get_type_hints(hint)
        return hint(**{f.name: _from_json(hints[f.name], data[f.name]) for f in fields(hint) if f.name in data})
    return data


def hot_added_part(state: VmState) -> PageRangeSet:
    """Owned pages that are hot-added (not boot RAM) and not ballooned: what hot-remove may take."""
    layout = state.layout
    part = PageRangeSet(state.owned.irange(layout.window_start_page, layout.window_end_page))
    part.remove_many(state.ballooned.irange(layout.window_start_page, layout.window_end_page))
    return part
