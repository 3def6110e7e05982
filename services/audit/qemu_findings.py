"""What an audit says about a QEMU-managed VM: targets, stalls, failures, and the shadow account.

For these VMs the protocol ran inside QEMU, so there are no page-level transactions to report;
the audit lists each target hvdm commanded and how it ended (reached after N ticks, stalled, a
command QEMU refused), the monitor's attaches and detaches, and -- when QEMU's hv-balloon trace
was followed -- whether the exact page sets agree with QEMU's own reported size at the end of
the log (``shadow.divergence_pages`` 0). A stall or a divergence is listed under ``findings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..dm_engine import events as ev
from ..dm_engine.qemu_vm import shadow_divergence
from ..dm_engine.state import VmState
from ..units import PAGE_SIZE


@dataclass(slots=True)
class QemuFold:
    attaches: int = 0
    detaches: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    command_failures: list[dict[str, Any]] = field(default_factory=list)
    traced_changes: int = 0

    def apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.QemuAttached):
            self.attaches += 1
        elif isinstance(event, ev.QemuDetached):
            self.detaches.append({"tick": event.tick, "reason": event.reason})
        elif isinstance(event, ev.QemuBalloonCommanded):
            self.targets.append({"tick": event.tick, "target_bytes": event.value_bytes, "outcome": "in_flight"})
        elif isinstance(event, ev.QemuTargetReached):
            self._close("reached", event.tick, waited_ticks=event.waited_ticks)
        elif isinstance(event, ev.QemuTargetStalled):
            self._close("stalled", event.tick, waited_ticks=event.waited_ticks)
            self.findings.append(
                {
                    "finding": "TARGET_STALLED",
                    "tick": event.tick,
                    "target_bytes": event.target_pages * PAGE_SIZE,
                    "actual_bytes": event.actual_pages * PAGE_SIZE,
                    "waited_ticks": event.waited_ticks,
                }
            )
        elif isinstance(event, ev.QemuCommandFailed):
            self.command_failures.append(
                {"tick": event.tick, "command": event.command, "error_class": event.error_class, "desc": event.desc}
            )
            if event.command == "balloon":
                self._close("refused", event.tick)
        elif isinstance(event, ev.QemuPagesTraced):
            self.traced_changes += 1

    def _close(self, outcome: str, tick: int, waited_ticks: int | None = None) -> None:
        # A stalled target may still be reached later: the last word wins, the stall stays a finding.
        for target in reversed(self.targets):
            if target["outcome"] in ("in_flight", "stalled"):
                target["outcome"] = outcome
                target["end_tick"] = tick
                if waited_ticks is not None:
                    target["waited_ticks"] = waited_ticks
                return

    def to_dict(self, state: VmState) -> dict[str, Any]:
        q = state.qemu
        assert q is not None
        findings = list(self.findings)
        divergence = shadow_divergence(state)
        if divergence:
            findings.append({"finding": "SHADOW_DIVERGENCE", "divergence_pages": divergence})
        return {
            "device": q.device,
            "qemu_version": q.qemu_version,
            "address": q.address,
            "attached": q.attached,
            "actual_bytes": q.actual_pages * PAGE_SIZE,
            "attaches": self.attaches,
            "detaches": self.detaches,
            "targets": self.targets,
            "command_failures": self.command_failures,
            "findings": findings,
            "shadow": None
            if not q.traced
            else {
                "ballooned_bytes": q.traced_ballooned.page_count * PAGE_SIZE,
                "ballooned_ranges": len(q.traced_ballooned),
                "hot_added_bytes": q.traced_hot_added.page_count * PAGE_SIZE,
                "traced_changes": self.traced_changes,
                "divergence_pages": divergence,
            },
        }
