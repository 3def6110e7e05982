"""The state of one VM: what the fold of its events yields.

The protocol states and the transitions between them are in ``machine``; ``ProtocolState`` and
``NEGOTIATED_STATES`` are re-exported here for the code that reads states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.dm_engine.machine import NEGOTIATED_STATES, ProtocolState, TxnKind
from services.dm_engine.qemu_state import QemuVm
from services.range_store import PageRangeSet
from services.vdimm_allocator import VdimmLayout, new_layout

__all__ = [
    "NEGOTIATED_STATES",
    "Capabilities",
    "GuestStatus",
    "ProtocolState",
    "Transaction",
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
    status_reports_total: int = 0
    balloon_out_pages_total: int = 0
    balloon_in_pages_total: int = 0
    hot_added_pages_total: int = 0
    hot_removed_pages_total: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    commands_rejected_total: int = 0
    #: An input for this VM made the engine raise (``InputRejected``): an operator should look.
    needs_attention: bool = False
    inputs_rejected_total: int = 0
    #: Set when the VM is QEMU-managed (attached through its QMP monitor, not the DM gateway).
    qemu: QemuVm | None = None

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
        """A JSON-able image of the state, so start-up need not fold every event again."""
        txn = self.txn
        data = {
            "vm_id": self.vm_id,
            "described": self.described,
            "boot_pages": self.boot_pages,
            "maxmem_pages": self.maxmem_pages,
            "status_reports_enabled": self.status_reports_enabled,
            "ram": [list(r) for r in self.ram],
            "layout": self.layout.to_dict(),
            "protocol": self.protocol.value,
            "version": self.version,
            "caps": None
            if self.caps is None
            else {
                "balloon": self.caps.balloon,
                "hot_add": self.caps.hot_add,
                "hot_add_alignment": self.caps.hot_add_alignment,
                "hot_remove": self.caps.hot_remove,
                "min_page_cnt": self.caps.min_page_cnt,
                "max_page_number": self.caps.max_page_number,
            },
            "suppress_pressure_reports": self.suppress_pressure_reports,
            "post_init_until_tick": self.post_init_until_tick,
            "trans_id": self.trans_id,
            "target_pages": self.target_pages,
            "target_pending": self.target_pending,
            "target_generation": self.target_generation,
            "hot_remove_tried": self.hot_remove_tried,
            "txn": None
            if txn is None
            else {
                "kind": txn.kind,
                "trans_id": txn.trans_id,
                "requested_pages": txn.requested_pages,
                "received_pages": txn.received_pages,
                "started_tick": txn.started_tick,
                "last_activity_tick": txn.last_activity_tick,
                "backend_id": txn.backend_id,
                "start_page": txn.start_page,
                "target_generation": txn.target_generation,
            },
            "retry_at_tick": self.retry_at_tick,
            "consecutive_timeouts": self.consecutive_timeouts,
            "late_balloon_ok": self.late_balloon_ok,
            "ballooned": [list(r) for r in self.ballooned],
            "owned": [list(r) for r in self.owned],
            "backends": dict(sorted(self.backends.items())),
            "status": None
            if self.status is None
            else {
                "tick": self.status.tick,
                "available_pages": self.status.available_pages,
                "committed_pages": self.status.committed_pages,
            },
            "status_tick": self.status_tick,
            "status_in_tick": self.status_in_tick,
            "status_reports_total": self.status_reports_total,
            "balloon_out_pages_total": self.balloon_out_pages_total,
            "balloon_in_pages_total": self.balloon_in_pages_total,
            "hot_added_pages_total": self.hot_added_pages_total,
            "hot_removed_pages_total": self.hot_removed_pages_total,
            "violations": dict(sorted(self.violations.items())),
            "commands_rejected_total": self.commands_rejected_total,
            "needs_attention": self.needs_attention,
            "inputs_rejected_total": self.inputs_rejected_total,
        }
        if self.qemu is not None:
            # Only QEMU-managed VMs carry the key, so protocol VMs' snapshots keep their bytes.
            data["qemu"] = self.qemu.to_dict()
        return data

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> VmState:
        caps = data["caps"]
        txn = data["txn"]
        status = data["status"]
        return cls(
            vm_id=data["vm_id"],
            described=data["described"],
            boot_pages=data["boot_pages"],
            maxmem_pages=data["maxmem_pages"],
            status_reports_enabled=data["status_reports_enabled"],
            # snapshots taken before RAM layouts existed: RAM was [0, boot)
            ram=tuple((int(a), int(b)) for a, b in data["ram"])
            if "ram" in data
            else (((0, data["boot_pages"]),) if data["described"] and data["boot_pages"] else ()),
            layout=VdimmLayout.from_dict(data["layout"]),
            protocol=ProtocolState(data["protocol"]),
            version=data["version"],
            caps=None if caps is None else Capabilities(**caps),
            suppress_pressure_reports=data["suppress_pressure_reports"],
            post_init_until_tick=data["post_init_until_tick"],
            trans_id=data["trans_id"],
            target_pages=data["target_pages"],
            target_pending=data["target_pending"],
            target_generation=data["target_generation"],
            hot_remove_tried=data["hot_remove_tried"],
            txn=None if txn is None else Transaction(**{**txn, "kind": TxnKind(txn["kind"])}),
            retry_at_tick=data["retry_at_tick"],
            consecutive_timeouts=data["consecutive_timeouts"],
            late_balloon_ok=data["late_balloon_ok"],
            ballooned=PageRangeSet((s, c) for s, c in data["ballooned"]),
            owned=PageRangeSet((s, c) for s, c in data["owned"]),
            backends=dict(data["backends"]),
            status=None if status is None else GuestStatus(**status),
            status_tick=data["status_tick"],
            status_in_tick=data["status_in_tick"],
            status_reports_total=data["status_reports_total"],
            balloon_out_pages_total=data["balloon_out_pages_total"],
            balloon_in_pages_total=data["balloon_in_pages_total"],
            hot_added_pages_total=data["hot_added_pages_total"],
            hot_removed_pages_total=data["hot_removed_pages_total"],
            violations=dict(data["violations"]),
            commands_rejected_total=data["commands_rejected_total"],
            # Absent from snapshots written before rejections were recorded.
            needs_attention=data.get("needs_attention", False),
            inputs_rejected_total=data.get("inputs_rejected_total", 0),
            qemu=None if data.get("qemu") is None else QemuVm.from_dict(data["qemu"]),
        )


def hot_added_part(state: VmState) -> PageRangeSet:
    """Owned pages that are hot-added (not boot RAM) and not ballooned: what hot-remove may take."""
    layout = state.layout
    part = PageRangeSet(state.owned.irange(layout.window_start_page, layout.window_end_page))
    part.remove_many(state.ballooned.irange(layout.window_start_page, layout.window_end_page))
    return part
