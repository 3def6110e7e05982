"""The QEMU-managed part of a VM's state: what the fold of the ``Qemu*`` events yields.

A QEMU-managed VM runs the balloon protocol inside QEMU (hv-balloon) or uses virtio-balloon, so
hvdm holds no page-level protocol state for it: it holds QEMU's reported size, the target it
commanded and how that target is doing, and (when QEMU's trace is followed) the exact ballooned
and hot-added page sets as a shadow account.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..range_store import PageRangeSet


@dataclass(slots=True)
class QemuVm:
    device: str = "none"
    address: str = ""
    qemu_version: str = ""
    attached: bool = False
    #: QEMU's ``query-balloon`` actual, in pages.
    actual_pages: int = 0
    #: The target QEMU was last told to reach and has not reached yet (None: nothing in flight).
    commanded_pages: int | None = None
    commanded_tick: int = 0
    #: Last tick at which ``actual`` moved closer to the commanded target, and how close it was.
    progress_tick: int = 0
    best_distance: int = 0
    stalled: bool = False
    commands_total: int = 0
    reached_total: int = 0
    stalls_total: int = 0
    command_failures_total: int = 0
    detaches_total: int = 0
    #: Shadow accounting from the hv-balloon trace (exact pages), once any trace line arrived.
    traced: bool = False
    traced_ballooned: PageRangeSet = field(default_factory=PageRangeSet)
    traced_hot_added: PageRangeSet = field(default_factory=PageRangeSet)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "address": self.address,
            "qemu_version": self.qemu_version,
            "attached": self.attached,
            "actual_pages": self.actual_pages,
            "commanded_pages": self.commanded_pages,
            "commanded_tick": self.commanded_tick,
            "progress_tick": self.progress_tick,
            "best_distance": self.best_distance,
            "stalled": self.stalled,
            "commands_total": self.commands_total,
            "reached_total": self.reached_total,
            "stalls_total": self.stalls_total,
            "command_failures_total": self.command_failures_total,
            "detaches_total": self.detaches_total,
            "traced": self.traced,
            "traced_ballooned": [list(r) for r in self.traced_ballooned],
            "traced_hot_added": [list(r) for r in self.traced_hot_added],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QemuVm:
        values = dict(data)
        ballooned = values.pop("traced_ballooned")
        hot_added = values.pop("traced_hot_added")
        return cls(
            **values,
            traced_ballooned=PageRangeSet((s, c) for s, c in ballooned),
            traced_hot_added=PageRangeSet((s, c) for s, c in hot_added),
        )
