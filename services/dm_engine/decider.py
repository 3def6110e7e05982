"""decide / evolve / advance: the host protocol of one VM, with no I/O.

* ``decide(state, input)`` (``decisions``) reacts to one inbox input and returns events; it never
  mutates state.
* ``evolve(state, event)`` (``fold``) folds one event into the state (in place, returning it).
* ``advance(state, now)`` (``idle``) is QEMU's IDLE handler: when the VM is idle and its size
  differs from the target, it starts the next transaction.
* ``process`` chains them the way every runner does: decide, evolve, then advance while it
  yields, checking every step against the state machine in ``machine`` (at most one protocol
  transition per step, QEMU's rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..units import PAGE_SHIFT, PAGE_SIZE
from . import events as ev
from . import inputs as inp
from . import qemu_vm
from .config import EngineConfig
from .decisions import DEFAULT_CONFIG, decide, decide_steps, retention, status_report
from .fold import evolve
from .idle import advance
from .machine import ProtocolState, check_step
from .state import VmState

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "Observer",
    "advance",
    "decide",
    "decide_steps",
    "evolve",
    "fold_step",
    "initial_state",
    "process",
    "tick_is_quiet",
]

#: advance() can follow itself only after a transaction it started ends within the same input,
#: which never chains more than a couple of times; the bound turns a logic error into a stop.
_MAX_ADVANCES = 8


def initial_state(vm_id: str) -> VmState:
    """The state of a VM no event has touched yet."""
    return VmState(vm_id=vm_id)


#: Called after each event is folded (tests check the accounting invariants event by event).
Observer = Callable[[VmState, ev.Event], None]


def fold_step(state: VmState, events: Sequence[ev.Event], observe: Observer | None = None) -> None:
    """Fold one step's events, after checking they are one legal step of the state machine."""
    check_step(state.protocol, events)
    for event in events:
        evolve(state, event)
        if observe is not None:
            observe(state, event)


def tick_is_quiet(state: VmState, config: EngineConfig = DEFAULT_CONFIG) -> bool:
    """Whether a clock tick decides nothing for this VM and leaves its state untouched.

    Most ticks reach VMs with nothing to time out and nothing to start: ``process`` answers them
    with this test instead of running decide and advance (which would both return nothing), and a
    replay delivering a tick to thousands of VMs skips the quiet ones with the same test.
    """
    if state.protocol is ProtocolState.CLOSED and config.retention_ticks:
        return False  # a disconnected VM's retention countdown runs on ticks
    if state.qemu is not None:
        return not qemu_vm.wants_tick(state)  # QEMU runs the protocol: there is no IDLE handler
    return (
        state.txn is None
        and state.protocol is not ProtocolState.POST_INIT_WAIT
        and not (state.protocol is ProtocolState.IDLE and state.target_pending)
    )


def process(
    state: VmState, input: inp.Input, config: EngineConfig = DEFAULT_CONFIG, observe: Observer | None = None
) -> list[ev.Event]:
    """Decide, fold, and let the IDLE handler act: the engine's whole reaction to one input.

    Replaying an inbox through ``process`` from ``initial_state`` reproduces its event log.
    ``observe`` sees the state after every single event (the fuzzer and the tests' Harness check
    invariants there), so nobody needs to re-implement this loop to look inside it.
    """
    if type(input) is inp.GuestMessage and state.qemu is None:
        status = status_report(state, input, config)
        if status is not None:
            # Most of a log: ``decide_steps`` would return [[status]], a legal step (``status_report``);
            # none of the cases below is a guest message to a VM QEMU does not manage.
            evolve(state, status)
            if observe is not None:
                observe(state, status)
            return _advance(state, [status], input.tick, config, observe)
    if type(input) is inp.ForgetVm:
        # The same for both kinds of VM: allowed only while disconnected (``decisions``).
        forget = decide_steps(state, input, config)[0]
        fold_step(state, forget, observe)
        return forget
    if type(input) is inp.Tick and config.retention_ticks and state.protocol is ProtocolState.CLOSED:
        # Nothing else happens to a disconnected VM on a tick: only its retention countdown.
        kept = retention(state, input.tick, config)
        fold_step(state, kept, observe)
        return kept
    if type(input) is inp.Tick and tick_is_quiet(state, config):
        return []
    if state.qemu is not None or type(input) in inp.QEMU_INPUTS:
        # QEMU-managed (``qemu_vm``): QEMU runs the protocol, so there is no IDLE handler to advance.
        qemu_events: list[ev.Event] = []
        for step in decide_steps(state, input, config):  # qemu_vm's steps, with VmIdentified
            fold_step(state, step, observe)
            qemu_events.extend(step)
        return qemu_events
    events: list[ev.Event] = []
    for step in decide_steps(state, input, config):
        fold_step(state, step, observe)
        events.extend(step)
    return _advance(state, events, input.tick, config, observe)


def _advance(
    state: VmState, events: list[ev.Event], now: int, config: EngineConfig, observe: Observer | None
) -> list[ev.Event]:
    """After an input's own steps: the IDLE handler, while it starts something (``process``)."""
    for _ in range(_MAX_ADVANCES):
        more = advance(state, now, config)
        if not more:
            break
        fold_step(state, more, observe)
        events.extend(more)
    return events
