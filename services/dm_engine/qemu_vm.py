"""decide / evolve for QEMU-managed VMs: hvdm decides targets, QEMU runs the balloon.

A real QEMU VM is attached through its QMP monitor by the QEMU agent (``services.qemu_agent``),
which turns what QEMU says into ``Qemu*`` inputs. The engine keeps the VM as event-sourced state
like any other: a target set by an operator or the rebalancer becomes ``TargetSet`` plus a
``QemuBalloonCommanded`` (from which the outbox's QMP ``balloon`` record is derived), QEMU's
reported size is followed until it reaches the target, and a target that makes no progress for
``EngineConfig.qemu_stall_ticks`` ticks is recorded as ``QemuTargetStalled``, once per stretch
without progress (a guest at its
floor, a hibernation-capable Linux guest, a missing driver). Ticks are the only clock, so every
decision replays from the inbox exactly.

Protocol-level inputs (guest messages, channel and backend commands) are refused for a
QEMU-managed VM, and QEMU inputs are refused for a VM the DM gateway already described: one VM id
is one kind of VM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..range_store import coalesce
from ..units import PAGE_SHIFT
from . import events as ev
from . import inputs as inp
from .config import EngineConfig
from .qemu_state import QemuVm
from .state import VmState

#: Sizes above 2^52 bytes (4 PiB) are no machine's memory: a number beyond it is a broken report.
MAX_BYTES = 1 << 52
TRACE_OPS = ("ballooned", "unballooned", "hot_added", "reset")


def _reject(command: str, desc: str, error_class: str = "GenericError") -> list[ev.Event]:
    return [ev.CommandRejected(command=command, error_class=error_class, desc=desc)]


def _bad_size(value: object, *, allow_zero: bool = True) -> bool:
    if type(value) is not int:
        return True
    return value < (0 if allow_zero else 1) or value > MAX_BYTES


# ====================================================================================== decide
def decide_steps(state: VmState, input: inp.Input, config: EngineConfig) -> list[list[ev.Event]]:
    """The events one input causes for a QEMU-managed VM (or a QEMU input for any VM), cut into
    state-machine steps: a re-attach over a lost detach is two (detach, then attach)."""
    handler = _HANDLERS.get(type(input))
    if handler is None:
        if isinstance(input, inp.Tick):
            return [[]]
        return [_reject(input.KIND, "VM is QEMU-managed: the DM protocol runs inside QEMU")]
    if isinstance(input, inp.QemuAttached) and state.qemu is not None and state.qemu.attached:
        return [[ev.QemuDetached(reason="reattached", tick=input.tick)], _on_attached(state, input, config)]
    return [handler(state, input, config)]


def _command(state: VmState, q_actual: int, target: int, tick: int) -> list[ev.Event]:
    """Deliver ``target`` to QEMU, and record it reached at once if QEMU is already there."""
    out: list[ev.Event] = [ev.QemuBalloonCommanded(target_pages=target, value_bytes=target << PAGE_SHIFT, tick=tick)]
    if q_actual == target:
        out.append(ev.QemuTargetReached(target_pages=target, waited_ticks=0, tick=tick))
    return out


def _on_attached(state: VmState, i: inp.QemuAttached, config: EngineConfig) -> list[ev.Event]:
    if state.qemu is None and state.described:
        return _reject("qemu-attach", "VM id is already used by a VM on the DM gateway")
    if i.device not in inp.QEMU_DEVICES:
        return _reject("qemu-attach", f"unknown balloon device {i.device!r}")
    if _bad_size(i.boot_bytes, allow_zero=False) or _bad_size(i.maxmem_bytes) or _bad_size(i.actual_bytes):
        return _reject("qemu-attach", "memory sizes must be integers between 1 and 2^52 bytes")
    boot = i.boot_bytes >> PAGE_SHIFT
    maxmem = max(i.maxmem_bytes >> PAGE_SHIFT, boot)
    actual = i.actual_bytes >> PAGE_SHIFT
    out: list[ev.Event] = [
        ev.QemuAttached(
            device=i.device,
            boot_pages=boot,
            maxmem_pages=maxmem,
            actual_pages=actual,
            qemu_version=i.qemu_version[:64],
            address=i.address[:256],
            tick=i.tick,
        )
    ]
    # A standing target survives detaches and QEMU restarts: deliver it again.
    if state.target_pages is not None and i.device != "none":
        out.extend(_command(state, actual, min(state.target_pages, maxmem), i.tick))
    return out


def _qemu_of(state: VmState, command: str) -> QemuVm | list[ev.Event]:
    q = state.qemu
    if q is None:
        return _reject(command, "VM is not QEMU-managed")
    return q


def _on_actual(state: VmState, i: inp.QemuActualChanged, config: EngineConfig) -> list[ev.Event]:
    q = _qemu_of(state, "qemu-actual")
    if isinstance(q, list):
        return q
    if _bad_size(i.actual_bytes):
        return _reject("qemu-actual", "actual size must be an integer between 0 and 2^52 bytes")
    actual = i.actual_bytes >> PAGE_SHIFT
    if actual == q.actual_pages:
        return []
    out: list[ev.Event] = [ev.QemuActualChanged(actual_pages=actual, tick=i.tick)]
    if q.commanded_pages is not None and actual == q.commanded_pages:
        out.append(ev.QemuTargetReached(target_pages=actual, waited_ticks=i.tick - q.commanded_tick, tick=i.tick))
    return out


def _on_status(state: VmState, i: inp.QemuStatusReport, config: EngineConfig) -> list[ev.Event]:
    q = _qemu_of(state, "qemu-status")
    if isinstance(q, list):
        return q
    if not q.attached:
        return []  # a late report from a monitor already gone: nothing to show it against
    if _bad_size(i.available_bytes) or _bad_size(i.committed_bytes):
        return _reject("qemu-status", "status sizes must be integers between 0 and 2^52 bytes")
    return [
        ev.StatusReported(
            tick=i.tick,
            available_pages=i.available_bytes >> PAGE_SHIFT,
            committed_pages=i.committed_bytes >> PAGE_SHIFT,
            page_file_size_pages=0,
            zero_free_pages=0,
            page_file_writes=0,
            io_diff=0,
        )
    ]


def _on_failed(state: VmState, i: inp.QemuCommandFailed, config: EngineConfig) -> list[ev.Event]:
    q = _qemu_of(state, "qemu-command")
    if isinstance(q, list):
        return q
    return [
        ev.QemuCommandFailed(command=i.command[:64], error_class=i.error_class[:64], desc=i.desc[:512], tick=i.tick)
    ]


def _on_detached(state: VmState, i: inp.QemuDetached, config: EngineConfig) -> list[ev.Event]:
    q = state.qemu
    if q is None or not q.attached:
        return []
    return [ev.QemuDetached(reason=i.reason[:256] or "detached", tick=i.tick)]


def _on_trace(state: VmState, i: inp.QemuTracePages, config: EngineConfig) -> list[ev.Event]:
    q = _qemu_of(state, "qemu-trace")
    if isinstance(q, list):
        return q
    if i.op not in TRACE_OPS:
        return _reject("qemu-trace", f"unknown trace operation {i.op!r}")
    for start, count in i.ranges:
        if type(start) is not int or type(count) is not int or start < 0 or count <= 0 or start + count > 1 << 40:
            return _reject("qemu-trace", "trace ranges must be [start_page >= 0, page_count > 0] below 2^40")
    ranges = tuple(coalesce(i.ranges))
    return [ev.QemuPagesTraced(op=i.op, ranges=ranges, pages=sum(c for _, c in ranges), tick=i.tick)]


def _on_set_target(state: VmState, i: inp.SetTarget, config: EngineConfig) -> list[ev.Event]:
    q = _qemu_of(state, "balloon")
    if isinstance(q, list):
        return q
    if type(i.target_bytes) is not int or i.target_bytes <= 0:
        return _reject("balloon", "Parameter 'value' expects a size greater than zero")
    if q.device == "none":
        return _reject("balloon", "No balloon device has been activated", "DeviceNotActive")
    # QEMU accepts a virtio target above boot memory and ignores it; hvdm asks for what can happen.
    target = min(max(i.target_bytes >> PAGE_SHIFT, 1), state.maxmem_pages)
    out: list[ev.Event] = [ev.TargetSet(target_pages=target)]
    if q.attached:
        out.extend(_command(state, q.actual_pages, target, i.tick))
    return out


def _on_tick(state: VmState, i: inp.Tick, config: EngineConfig) -> list[ev.Event]:
    q = state.qemu
    if q is None or q.commanded_pages is None or q.stalled or not q.attached:
        return []
    waited = i.tick - q.progress_tick
    if waited < config.qemu_stall_ticks:
        return []
    return [
        ev.QemuTargetStalled(
            target_pages=q.commanded_pages,
            actual_pages=q.actual_pages,
            waited_ticks=i.tick - q.commanded_tick,
            tick=i.tick,
        )
    ]


_HANDLERS: dict[type, Callable[[VmState, Any, EngineConfig], list[ev.Event]]] = {
    inp.QemuAttached: _on_attached,
    inp.QemuActualChanged: _on_actual,
    inp.QemuStatusReport: _on_status,
    inp.QemuCommandFailed: _on_failed,
    inp.QemuDetached: _on_detached,
    inp.QemuTracePages: _on_trace,
    inp.SetTarget: _on_set_target,
    inp.Tick: _on_tick,
}


def wants_tick(state: VmState) -> bool:
    """Whether a tick can change anything for this VM (most ticks reach idle VMs)."""
    q = state.qemu
    return q is not None and q.commanded_pages is not None and not q.stalled and q.attached


# ====================================================================================== evolve
# The protocol state (IDLE while attached, CLOSED otherwise) comes from machine.TABLE, as for
# every event; these handlers move only the QEMU part of the state.
def _ev_attached(s: VmState, e: ev.QemuAttached) -> None:
    q = s.qemu
    if q is None:
        q = s.qemu = QemuVm()
    q.device = e.device
    q.address = e.address
    q.qemu_version = e.qemu_version
    q.attached = True
    q.actual_pages = e.actual_pages
    q.commanded_pages = None
    q.stalled = False
    s.described = True
    s.boot_pages = e.boot_pages
    s.maxmem_pages = e.maxmem_pages


def _ev_actual(s: VmState, e: ev.QemuActualChanged) -> None:
    q = s.qemu
    assert q is not None
    q.actual_pages = e.actual_pages
    if q.commanded_pages is not None:
        distance = abs(q.commanded_pages - e.actual_pages)
        if distance < q.best_distance:
            q.best_distance = distance
            q.progress_tick = e.tick
            # Progress after a stall (a slow guest, not a floor): a later stall is a new finding.
            q.stalled = False


def _ev_commanded(s: VmState, e: ev.QemuBalloonCommanded) -> None:
    q = s.qemu
    assert q is not None
    q.commanded_pages = e.target_pages
    q.commanded_tick = e.tick
    q.progress_tick = e.tick
    q.best_distance = abs(e.target_pages - q.actual_pages)
    q.stalled = False
    q.commands_total += 1


def _ev_reached(s: VmState, e: ev.QemuTargetReached) -> None:
    q = s.qemu
    assert q is not None
    q.commanded_pages = None
    q.stalled = False
    q.reached_total += 1
    s.target_pending = False


def _ev_stalled(s: VmState, e: ev.QemuTargetStalled) -> None:
    q = s.qemu
    assert q is not None
    q.stalled = True
    q.stalls_total += 1


def _ev_failed(s: VmState, e: ev.QemuCommandFailed) -> None:
    q = s.qemu
    assert q is not None
    q.command_failures_total += 1
    if e.command == "balloon":
        # QEMU refused the target: nothing is in flight any more (no automatic retry, as in QEMU).
        q.commanded_pages = None
        q.stalled = False
        s.target_pending = False


def _ev_detached(s: VmState, e: ev.QemuDetached) -> None:
    q = s.qemu
    assert q is not None
    q.attached = False
    q.detaches_total += 1


def _ev_traced(s: VmState, e: ev.QemuPagesTraced) -> None:
    q = s.qemu
    assert q is not None
    q.traced = True
    if e.op == "ballooned":
        q.traced_ballooned.add_many(e.ranges)
    elif e.op == "unballooned":
        q.traced_ballooned.remove_many(e.ranges)
    elif e.op == "hot_added":
        q.traced_hot_added.add_many(e.ranges)
    else:  # reset: QEMU's device forgets what the guest gave and unplugs what it hot-added
        q.traced_ballooned.clear()
        q.traced_hot_added.clear()


EVENT_HANDLERS: dict[type, Callable[[VmState, Any], None]] = {
    ev.QemuAttached: _ev_attached,
    ev.QemuActualChanged: _ev_actual,
    ev.QemuBalloonCommanded: _ev_commanded,
    ev.QemuTargetReached: _ev_reached,
    ev.QemuTargetStalled: _ev_stalled,
    ev.QemuCommandFailed: _ev_failed,
    ev.QemuDetached: _ev_detached,
    ev.QemuPagesTraced: _ev_traced,
}


# ====================================================================================== outbox
def qmp_command(event: ev.Event) -> dict[str, Any] | None:
    """The QMP command the QEMU agent must send because of ``event`` (the outbox record)."""
    if isinstance(event, ev.QemuBalloonCommanded):
        return {"execute": "balloon", "arguments": {"value": event.value_bytes}}
    return None


def qemu_outbox_records(events: Sequence[ev.Event]) -> list[tuple[int, bytes]]:
    """(index into events, canonical JSON of the QMP command) for the outbox of a QEMU-managed VM.

    The QEMU agent reads these rows and sends them; no DM gateway connection exists for such a VM.
    """
    out: list[tuple[int, bytes]] = []
    for i, event in enumerate(events):
        command = qmp_command(event)
        if command is not None:
            out.append((i, json.dumps(command, sort_keys=True, separators=(",", ":")).encode()))
    return out


def shadow_divergence(state: VmState) -> int | None:
    """Traced pages vs QEMU's actual: boot + hot-added - ballooned - actual (0 = they agree).

    None when the trace is not followed. QEMU's actual counts pages the guest returned but QEMU
    did not release (``both 0``) as returned too, so the comparison is exact on both device paths.
    """
    q = state.qemu
    if q is None or not q.traced:
        return None
    return state.boot_pages + q.traced_hot_added.page_count - q.traced_ballooned.page_count - q.actual_pages
