"""Accounting invariants that must hold after every event, whatever the guest does."""

from __future__ import annotations

from .machine import WAITING
from .state import VmState


def check_invariants(state: VmState) -> list[str]:
    """Every broken invariant, described; an empty list means the accounting is sound."""
    problems: list[str] = []
    ballooned = state.ballooned.page_count
    inside = sum(c for _, c in state.owned.intersection(state.ballooned))
    if inside != ballooned:
        problems.append(f"{ballooned - inside} ballooned pages are not guest RAM")
    if state.described and sum(state.owned.overlap_count(a, n) for a, n in state.ram) != state.boot_pages:
        problems.append("boot RAM is not entirely owned")
    if state.described and sum(n for _, n in state.ram) != state.boot_pages:
        problems.append("the RAM ranges do not add up to the boot size")
    layout = state.layout
    added = sum(v.added_pages - v.removed_pages for v in layout.vdimms)
    if state.owned.page_count != state.boot_pages + added:
        problems.append(f"owned pages {state.owned.page_count} != boot {state.boot_pages} + hot-added {added}")
    for vdimm in layout.vdimms:
        lo, hi = vdimm.usable_start, vdimm.usable_start + vdimm.added_pages
        owned_in = state.owned.overlap_count(vdimm.start_page, vdimm.page_count)
        if owned_in != vdimm.added_pages - vdimm.removed_pages:
            problems.append(f"vDIMM {vdimm.backend_id}: {owned_in} owned pages, expected added - removed")
        if state.owned.overlap_count(hi, vdimm.end_page - hi) or state.owned.overlap_count(
            vdimm.start_page, lo - vdimm.start_page
        ):
            problems.append(f"vDIMM {vdimm.backend_id}: owned pages outside its accepted part")
    if state.current_pages != state.boot_pages + state.hot_added_pages - ballooned:
        problems.append("current != boot + hot-added - ballooned")
    if state.current_pages < 0:
        problems.append("negative current size")
    expected_kind = WAITING.get(state.protocol)
    actual_kind = state.txn.kind if state.txn is not None else None
    if expected_kind != actual_kind:
        problems.append(f"state {state.protocol.value} with transaction {actual_kind}")
    return problems
