"""The per-VM host side of the Dynamic Memory protocol, as a pure event-sourced decider.

``decide`` turns one inbox input into events without touching state, ``evolve`` folds one event
into the state, ``advance`` is the IDLE handler that starts the next transaction, and ``process``
chains them the way the runners do. Nothing in this package performs I/O.
"""

from .config import EngineConfig
from .decider import advance, decide, evolve, initial_state, process
from .events import Event, ViolationReason
from .inputs import Input
from .invariants import check_invariants
from .outbox import outbox_messages
from .state import ProtocolState, VmState

__all__ = [
    "EngineConfig",
    "Event",
    "Input",
    "ProtocolState",
    "ViolationReason",
    "VmState",
    "advance",
    "check_invariants",
    "decide",
    "evolve",
    "initial_state",
    "outbox_messages",
    "process",
]
